//! How on-demand images are named: `--image NAME[:TAG]=INPUT[,INPUT...]` on the command
//! line, or `--images FILE`, a TOML file with the same and each image's run settings:
//!
//! ```toml
//! [[image]]
//! name = "py:3.11"                    # NAME[:TAG], tag latest by default
//! inputs = ["/usr/bin/python3"]       # SRC or SRC:/DEST, as for `pack`
//! packages = ["python3-venv"]         # installed packages it holds too
//! entrypoint = ["/python3"]           # default: the first executable input
//! cmd = ["-c", "print('hello')"]
//! env = ["PYTHONDONTWRITEBYTECODE=1"]
//! closure = "packages"                # or "minimal", "elf"; default: the server's --closure
//! recommends = false                  # default: the server's (--no-recommends)
//! ```
//!
//! On the command line, `+NAME` among the inputs names an installed package:
//! `--image py=/usr/bin/python3,+python3-venv,+python3-pip`.
//!
//! A key the file does not know is an error naming it and its line, not ignored.

use std::path::Path;

use serde::Deserialize;

use crate::image::RunSettings;
use crate::pack::{ClosureMode, Input};
use crate::reference::TaggedName;

/// An image to serve on demand: its name, what it is made of, and how it runs. The rest of
/// its run settings are the defaults (`pack::default_run_config`), decided when it is packed:
/// an input that does not exist yet may be an executable by then.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub name: TaggedName,
    pub inputs: Vec<Input>,
    /// Installed packages it holds whatever its files are.
    pub packages: Vec<String>,
    pub run: RunSettings,
    /// `None`: the server's `--closure`.
    pub closure: Option<ClosureMode>,
    /// `Some(false)`: installed `Recommends` are not followed; `None`: the server's setting.
    pub recommends: Option<bool>,
}

impl std::str::FromStr for ImageSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, inputs) = s
            .split_once('=')
            .ok_or_else(|| format!("invalid --image {s:?}: use NAME[:TAG]=INPUT[,INPUT...]"))?;
        let name: TaggedName = name
            .parse()
            .map_err(|e| format!("invalid --image {s:?}: {e}"))?;
        let items: Vec<&str> = inputs.split(',').filter(|i| !i.is_empty()).collect();
        let (packages, files) =
            crate::pack::split_packages(&items).map_err(|e| format!("--image {s:?}: {e}"))?;
        let inputs = files
            .iter()
            .map(|i| i.parse::<Input>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if inputs.is_empty() && packages.is_empty() {
            return Err(format!("invalid --image {s:?}: no input after '='"));
        }
        Ok(ImageSpec {
            name,
            inputs,
            packages,
            run: RunSettings::default(),
            closure: None,
            recommends: None,
        })
    }
}

/// The whole file: images only, for now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesFile {
    #[serde(default)]
    image: Vec<FileImage>,
}

/// One `[[image]]` table (of an `--images` file, or of `serve --config`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileImage {
    name: String,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    packages: Vec<String>,
    recommends: Option<bool>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<String>,
    closure: Option<String>,
}

/// The images of an `--images` file, checked: a malformed file, an unknown key, a bad name,
/// input or setting is an error naming the file and what is wrong (with its line, for TOML).
pub fn load_images(path: &Path) -> Result<Vec<ImageSpec>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --images {}: {e}", path.display()))?;
    parse_images(&text).map_err(|e| format!("--images {}: {e}", path.display()))
}

fn parse_images(text: &str) -> Result<Vec<ImageSpec>, String> {
    let file: ImagesFile = toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())?;
    file.image.into_iter().map(FileImage::into_spec).collect()
}

impl FileImage {
    /// The image it describes, checked; an error names the image.
    pub fn into_spec(self) -> Result<ImageSpec, String> {
        let i = self;
        let what = |e: String| format!("image {:?}: {e}", i.name);
        let name: TaggedName = i.name.parse().map_err(|e| what(format!("{e}")))?;
        if i.inputs.is_empty() && i.packages.is_empty() {
            return Err(what("no inputs and no packages".to_owned()));
        }
        if let Some(bad) = i
            .packages
            .iter()
            .find(|p| !crate::pack::valid_package_name(p))
        {
            return Err(what(format!("{bad:?} is not a package name")));
        }
        let inputs = i
            .inputs
            .iter()
            .map(|s| s.parse::<Input>().map_err(|e| what(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let run = RunSettings {
            entrypoint: i.entrypoint,
            cmd: i.cmd,
            env: i.env,
        };
        run.check().map_err(what)?;
        let closure: Option<ClosureMode> =
            i.closure.map(|c| c.parse()).transpose().map_err(what)?;
        if !i.packages.is_empty() && closure == Some(ClosureMode::Elf) {
            return Err(what(
                crate::pack::PackError::PackagesNeedTheirClosure.to_string(),
            ));
        }
        Ok(ImageSpec {
            name,
            inputs,
            packages: i.packages,
            run,
            closure,
            recommends: i.recommends,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_specs_parse() {
        let s: ImageSpec = "tools/a:v1=/bin/true,/etc/hostname:/etc/name"
            .parse()
            .expect("spec");
        assert_eq!(s.name.to_string(), "tools/a:v1");
        assert_eq!(s.inputs.len(), 2);
        assert_eq!(s.inputs[1].dest, "/etc/name");
        let s: ImageSpec = "a=/bin/true".parse().expect("spec");
        assert_eq!(s.name.to_string(), "a:latest");
        assert_eq!(s.inputs[0].dest, "/true");
        for bad in ["a", "A=/bin/true", "a=", "a=,", "a=x:/../y"] {
            assert!(bad.parse::<ImageSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_images_file_gives_each_image_its_settings() {
        let specs = parse_images(
            r#"
[[image]]
name = "py:3"
inputs = ["/usr/bin/python3"]
entrypoint = ["/python3"]
cmd = ["-c", "print(1)"]
env = ["A=1"]
closure = "elf"

[[image]]
name = "tools/two"
inputs = ["/bin/true", "/etc/hostname:/etc/name"]
"#,
        )
        .expect("parse");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name.to_string(), "py:3");
        assert_eq!(
            specs[0].run.entrypoint.as_deref(),
            Some(&["/python3".to_owned()][..])
        );
        assert_eq!(specs[0].run.cmd.as_ref().map(Vec::len), Some(2));
        assert_eq!(specs[0].closure, Some(ClosureMode::Elf));
        assert_eq!(specs[1].name.to_string(), "tools/two:latest");
        assert_eq!(specs[1].closure, None);
        assert_eq!(specs[1].run, RunSettings::default());
    }

    #[test]
    fn a_bad_images_file_is_refused_naming_the_problem() {
        for (text, why) in [
            (
                "[[image]]\nname = \"a\"\ninputs = [\"/x\"]\nentrypiont = [\"/x\"]\n",
                "entrypiont",
            ),
            (
                "[[image]]\nname = \"a\"\ninputs = [\"/x\"]\nentrypiont = [\"/x\"]\n",
                "line 4",
            ),
            ("[[images]]\nname = \"a\"\n", "images"),
            (
                "[[image]]\nname = \"A\"\ninputs = [\"/x\"]\n",
                "image \"A\"",
            ),
            ("[[image]]\nname = \"a\"\ninputs = []\n", "no inputs"),
            (
                "[[image]]\nname = \"a\"\npackages = [\"Bad Name\"]\n",
                "not a package name",
            ),
            (
                "[[image]]\nname = \"a\"\ninputs = [\"/x\"]\nenv = [\"NOEQUALS\"]\n",
                "KEY=VALUE",
            ),
            (
                "[[image]]\nname = \"a\"\ninputs = [\"/x\"]\nclosure = \"all\"\n",
                "unknown closure",
            ),
            ("[[image]]\nname = \"a\"\n", "no inputs and no packages"),
            ("not toml at all", "line 1"),
        ] {
            let err = parse_images(text).expect_err(text);
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}

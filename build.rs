//! Writes the license notices of every crate linked into the binary to
//! `$OUT_DIR/THIRD-PARTY-NOTICES`, from the dependency tree as cargo resolved it for this
//! target (`cargo metadata`): each crate with its license expression, then each license text
//! the crates ship (`LICENSE*`, `LICENCE*`, `COPYING*`, `NOTICE*`, `COPYRIGHT*`), each distinct
//! text once with the crates that ship it. BSD, Zlib and Apache terms ask for their notices
//! to travel with the binary; generated at every build, the list cannot fall behind the
//! dependencies. Build and dev dependencies and proc macros are left out: none of their code
//! is in the binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=build.rs");
    let notices = match notices() {
        Ok(text) => text,
        Err(why) => panic!("cannot list the license notices of the dependencies: {why}"),
    };
    let out = PathBuf::from(env("OUT_DIR")).join("THIRD-PARTY-NOTICES");
    if let Err(e) = std::fs::write(&out, notices) {
        panic!("cannot write {}: {e}", out.display());
    }
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("cargo sets {key} for build scripts"))
}

/// One crate in the binary.
struct Crate {
    name: String,
    version: String,
    license: String,
    repository: String,
    /// The package's source folder.
    dir: PathBuf,
    /// `license-file` of its manifest, if any.
    license_file: Option<PathBuf>,
}

fn notices() -> Result<String, String> {
    let manifest = Path::new(&env("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let metadata = |offline: bool| {
        let mut cmd = Command::new(env("CARGO"));
        cmd.args(["metadata", "--format-version", "1", "--filter-platform"])
            .arg(env("TARGET"))
            .arg("--manifest-path")
            .arg(&manifest);
        if offline {
            cmd.arg("--offline");
        }
        cmd.output()
            .map_err(|e| format!("cannot run cargo metadata: {e}"))
    };
    // Offline first: the build already has every crate it links. But `cargo metadata`
    // resolves the dev-dependencies too, which `cargo build` (and `cargo run`) on a fresh
    // machine has not downloaded, so then it asks again, online.
    let mut output = metadata(true)?;
    if !output.status.success() {
        output = metadata(false)?;
    }
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();

    let mut packages = BTreeMap::new();
    let mut proc_macros = BTreeSet::new();
    for p in meta["packages"].as_array().ok_or("no packages")? {
        let id = text(&p["id"]);
        let is_proc_macro = p["targets"].as_array().is_some_and(|targets| {
            targets.iter().any(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "proc-macro"))
            })
        });
        if is_proc_macro {
            proc_macros.insert(id.clone());
        }
        let manifest_path = PathBuf::from(text(&p["manifest_path"]));
        let dir = manifest_path.parent().unwrap_or(Path::new("")).to_owned();
        let license_file = p["license_file"].as_str().map(|f| dir.join(f));
        packages.insert(
            id,
            Crate {
                name: text(&p["name"]),
                version: text(&p["version"]),
                license: p["license"]
                    .as_str()
                    .unwrap_or("(no license expression given)")
                    .to_owned(),
                repository: text(&p["repository"]),
                dir,
                license_file,
            },
        );
    }

    // Normal dependencies only, from the root down; a proc macro ends the walk.
    let resolve = &meta["resolve"];
    let root = text(&resolve["root"]);
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in resolve["nodes"].as_array().ok_or("no resolve nodes")? {
        let normal = node["deps"].as_array().into_iter().flatten().filter(|d| {
            d["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()))
        });
        deps.insert(text(&node["id"]), normal.map(|d| text(&d["pkg"])).collect());
    }
    let mut linked = BTreeSet::new();
    let mut pending = vec![root.clone()];
    while let Some(id) = pending.pop() {
        for dep in deps.get(&id).into_iter().flatten() {
            if !proc_macros.contains(dep) && linked.insert(dep.clone()) {
                pending.push(dep.clone());
            }
        }
    }

    let mut crates: Vec<&Crate> = linked.iter().filter_map(|id| packages.get(id)).collect();
    crates.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    let this = packages.get(&root).ok_or("no root package")?;

    let mut out = format!(
        "{} {} is licensed under {} (LICENSE-MIT and LICENSE-APACHE in its source).\n\n\
         It contains code from the {} crates below, each under the license it gives. The\n\
         license texts they ship follow the list, each distinct text once, headed by the\n\
         crates that ship it.\n\n",
        this.name,
        this.version,
        this.license,
        crates.len()
    );
    // Distinct texts in order of first appearance, with who ships each.
    let mut texts: Vec<(String, Vec<String>)> = Vec::new();
    for c in &crates {
        out.push_str(&format!("{} {}: {}", c.name, c.version, c.license));
        if !c.repository.is_empty() {
            out.push_str(&format!(" <{}>", c.repository));
        }
        out.push('\n');
        let mut files = license_files(&c.dir)?;
        if let Some(f) = &c.license_file
            && !files.contains(f)
        {
            files.push(f.clone());
        }
        if files.is_empty() {
            out.push_str("    (the package ships no license file)\n");
        }
        for file in files {
            let body = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let label = format!(
                "{} {} ({})",
                c.name,
                c.version,
                file.file_name().unwrap_or_default().to_string_lossy()
            );
            let body = body.trim().to_owned();
            match texts.iter_mut().find(|(t, _)| *t == body) {
                Some((_, who)) => who.push(label),
                None => texts.push((body, vec![label])),
            }
        }
    }
    for (body, who) in &texts {
        out.push_str(&format!(
            "\n{}\n{}\n\n{body}\n",
            "=".repeat(78),
            who.join(", ")
        ));
    }
    Ok(out)
}

/// The license files at the top of a package's folder, sorted.
fn license_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    const PREFIXES: [&str; 5] = ["LICENSE", "LICENCE", "COPYING", "NOTICE", "COPYRIGHT"];
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().to_uppercase();
        if PREFIXES.iter().any(|p| name.starts_with(p)) && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

//! Repository names and tags, validated against the distribution spec's grammar.
//!
//! A validated name or tag is safe to join onto a store path: the grammar admits no `..`, no
//! leading `/` or `.`, and no component starting with `_` (the store's own folders use that).

use std::fmt;
use std::str::FromStr;

/// The spec's limit on a repository name (distribution caps names at 255 characters).
const MAX_NAME_LEN: usize = 255;
/// The spec's limit on a tag: one leading character plus up to 127 more.
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(
        "repository name {0:?} is invalid: use lowercase components [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'"
    )]
    Name(String),
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("tag {0:?} is invalid: use up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag(String),
    #[error("{0:?} is not NAME:TAG")]
    MissingTag(String),
}

/// A repository name such as `quinistry` or `library/tools/env`.
///
/// ```
/// use quinistry::reference::Name;
///
/// assert!("library/tools/env".parse::<Name>().is_ok());
/// assert!("a/../b".parse::<Name>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong);
        }
        if s.split('/').all(valid_component) {
            Ok(Name(s.to_owned()))
        } else {
            Err(ReferenceError::Name(s.to_owned()))
        }
    }
}

impl Name {
    /// The name a file path maps to: each `/`-separated part lowercased, every character
    /// outside `[a-z0-9._-]` made a `-`, a run of separators the grammar does not allow made
    /// one `-`, and separators at either end dropped. `None` when a part has no letter or
    /// digit, or the name is too long. `Tools/My App.sh` maps to `tools/my-app.sh`.
    pub fn from_path_lossy(path: &str) -> Option<Name> {
        let mut name = String::with_capacity(path.len());
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let mapped = map_component(part)?;
            if !name.is_empty() {
                name.push('/');
            }
            name.push_str(&mapped);
        }
        name.parse().ok()
    }
}

fn map_component(part: &str) -> Option<String> {
    let mut out = String::with_capacity(part.len());
    let mut pending = String::new();
    for c in part.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if !out.is_empty() && !pending.is_empty() {
                let allowed = matches!(pending.as_str(), "." | "_" | "__")
                    || pending.bytes().all(|b| b == b'-');
                out.push_str(if allowed { &pending } else { "-" });
            }
            pending.clear();
            out.push(c);
        } else {
            pending.push(if matches!(c, '.' | '_' | '-') { c } else { '-' });
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: alphanumeric runs joined by one separator each.
fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let mut i = 0;
    loop {
        // An alphanumeric run is required here (at the start and after every separator).
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // A separator: '.', '_', '__', or any number of '-'.
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// A tag such as `latest` or `v1.2.3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// `latest`, the tag a bare name means.
    pub fn latest() -> Tag {
        Tag("latest".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;

    /// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(ReferenceError::Tag(s.to_owned()))
        }
    }
}

/// `NAME:TAG`, as given to `--tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedName {
    pub name: Name,
    pub tag: Tag,
}

impl fmt::Display for TaggedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

impl FromStr for TaggedName {
    type Err = ReferenceError;

    /// The tag is after the last ':' (names have no ':'); a bare name means `:latest`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, tag) = s.rsplit_once(':').unwrap_or((s, "latest"));
        if name.is_empty() {
            return Err(ReferenceError::MissingTag(s.to_owned()));
        }
        Ok(TaggedName {
            name: name.parse()?,
            tag: tag.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for ok in [
            "a",
            "quinistry",
            "library/ubuntu",
            "a/b/c",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "my.app",
            "0x/1.2_3__4-5",
        ] {
            assert!(ok.parse::<Name>().is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "/a", "a/", "a//b", "..", "a/../b", ".a", "a.", "a..b", "a___b", "_a", "a_",
            "-a", "a b", "a:b", "a/_tags", "ä",
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            "a".repeat(256).parse::<Name>(),
            Err(ReferenceError::NameTooLong)
        );
    }

    #[test]
    fn paths_map_onto_the_name_grammar() {
        let map = |p: &str| Name::from_path_lossy(p).map(|n| n.to_string());
        for (path, name) in [
            ("tool", "tool"),
            ("bin/Tool", "bin/tool"),
            ("Tools/My App.sh", "tools/my-app.sh"),
            ("a__b/c---d/e.f_g", "a__b/c---d/e.f_g"),
            ("a._b/c___d/e..f", "a-b/c-d/e-f"),
            (".hidden/-x-/_y_", "hidden/x/y"),
            ("größe", "gr--e"),
            ("x//y/", "x/y"),
        ] {
            assert_eq!(map(path).as_deref(), Some(name), "{path}");
            // Whatever comes out is a valid name.
            assert!(name.parse::<Name>().is_ok(), "{name}");
        }
        for unmappable in ["", "...", "a/-/b", "ü", &"a".repeat(256)] {
            assert_eq!(map(unmappable), None, "{unmappable:?}");
        }
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"t".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn tagged_names_default_to_latest() {
        let t: TaggedName = "a/b".parse().expect("valid");
        assert_eq!(t.to_string(), "a/b:latest");
        let t: TaggedName = "a/b:v1".parse().expect("valid");
        assert_eq!((t.name.as_str(), t.tag.as_str()), ("a/b", "v1"));
        let err = "Bad:v1".parse::<TaggedName>().expect_err("uppercase");
        assert!(err.to_string().contains("\"Bad\""));
        assert!(":v1".parse::<TaggedName>().is_err());
        assert!("a:".parse::<TaggedName>().is_err());
    }
}

//! Access rules per repository: which users may read, or read and write, which repositories
//! (by name patterns), and what anyone may read without logging in.
//!
//! A pattern is a glob over the whole repository name in which `*` also crosses `/`: `team/*`
//! is every repository under `team/`, `*` is every repository, `tools/?` one letter names.
//! A user's rights are the union of their own and the anonymous ones; a user of the htpasswd
//! file that the rules do not name has only the anonymous ones.

use std::collections::{BTreeMap, HashMap};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::reference::Name;

/// What a request needs on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Read,
    /// Push or delete; implies read.
    Write,
}

impl Right {
    pub fn verb(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "push to",
        }
    }
}

/// One user's patterns, as the configuration writes them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Repositories this user may pull from.
    #[serde(default)]
    pub read: Vec<String>,
    /// Repositories this user may pull from and push to.
    #[serde(default)]
    pub read_write: Vec<String>,
}

/// The rules, compiled.
#[derive(Debug)]
pub struct Rules {
    /// What anyone may read.
    anonymous: GlobSet,
    /// Per user: what they may read (read_write included) and what they may write.
    users: HashMap<String, (GlobSet, GlobSet)>,
}

impl Rules {
    /// Compiles the patterns; a bad one is an error naming its owner and itself.
    pub fn new(
        anonymous_read: &[String],
        users: &BTreeMap<String, Grant>,
    ) -> Result<Rules, String> {
        let anonymous = globs(anonymous_read.iter(), "anonymous_read")?;
        let users = users
            .iter()
            .map(|(user, g)| {
                let whose = format!("users.{user}");
                let read = globs(g.read.iter().chain(&g.read_write), &whose)?;
                let write = globs(g.read_write.iter(), &whose)?;
                Ok((user.clone(), (read, write)))
            })
            .collect::<Result<_, String>>()?;
        Ok(Rules { anonymous, users })
    }

    /// The users the rules name.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Whether `user` (`None`: anonymous) may do `right` on repository `name`.
    pub fn allows(&self, user: Option<&str>, name: &Name, right: Right) -> bool {
        let name = name.as_str();
        if right == Right::Read && self.anonymous.is_match(name) {
            return true;
        }
        let Some((read, write)) = user.and_then(|u| self.users.get(u)) else {
            return false;
        };
        match right {
            Right::Read => read.is_match(name),
            Right::Write => write.is_match(name),
        }
    }
}

fn globs<'a>(patterns: impl Iterator<Item = &'a String>, whose: &str) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("{whose}: pattern {p:?}: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| format!("{whose}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        s.parse().expect("name")
    }

    #[test]
    fn users_get_their_patterns_and_the_anonymous_ones_and_nothing_else() {
        let mut users = BTreeMap::new();
        users.insert(
            "a".to_owned(),
            Grant {
                read: vec!["shared".into()],
                read_write: vec!["a/*".into()],
            },
        );
        users.insert(
            "all".to_owned(),
            Grant {
                read: vec![],
                read_write: vec!["*".into()],
            },
        );
        let rules = Rules::new(&["public/*".into()], &users).expect("rules");
        let (a, all) = (Some("a"), Some("all"));
        assert!(rules.allows(a, &name("a/x"), Right::Write));
        assert!(rules.allows(a, &name("a/x/y"), Right::Write), "* crosses /");
        assert!(
            rules.allows(a, &name("a/x"), Right::Read),
            "write implies read"
        );
        assert!(!rules.allows(a, &name("b/x"), Right::Write));
        assert!(!rules.allows(a, &name("b/x"), Right::Read));
        assert!(!rules.allows(a, &name("ab"), Right::Read), "a/* is not a*");
        assert!(rules.allows(a, &name("shared"), Right::Read));
        assert!(!rules.allows(a, &name("shared"), Right::Write));
        assert!(rules.allows(None, &name("public/x"), Right::Read));
        assert!(!rules.allows(None, &name("public/x"), Right::Write));
        assert!(!rules.allows(None, &name("a/x"), Right::Read));
        assert!(
            rules.allows(a, &name("public/x"), Right::Read),
            "anonymous rights too"
        );
        assert!(rules.allows(Some("nobody"), &name("public/x"), Right::Read));
        assert!(!rules.allows(Some("nobody"), &name("a/x"), Right::Read));
        assert!(rules.allows(all, &name("b/x"), Right::Write));
        let err = Rules::new(&["a/[".into()], &BTreeMap::new()).expect_err("bad glob");
        assert!(
            err.contains("anonymous_read") && err.contains("a/["),
            "{err}"
        );
    }
}

//! HTTP basic authentication against an htpasswd file of bcrypt entries (`htpasswd -B`).
//!
//! bcrypt is slow on purpose (cost 5 takes ~2 ms, cost 10 ~60 ms), and clients send their
//! credentials with every request: a `docker push` of one image makes dozens. So a checked
//! `Authorization` value is remembered (by its sha256, never in clear) and the next request
//! with it costs a hash lookup. Wrong credentials are checked in full every time, on the
//! blocking pool, so they cannot stall the request threads.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use hyper::header::HeaderValue;

use crate::digest::Digest;

/// Remembered good credentials, at most; the set starts over when full.
const VERIFIED_MAX: usize = 1024;

/// The users of an htpasswd file.
pub struct Htpasswd {
    /// User name → bcrypt hash.
    users: HashMap<String, String>,
    /// sha256 of `Authorization` values that passed (see the module doc).
    verified: Mutex<HashSet<Digest>>,
}

impl Htpasswd {
    /// Reads `path`. Every line must be `user:bcrypt-hash`; anything else (a line of another
    /// scheme, such as MD5's `$apr1$`, which we cannot check) is refused with its line number,
    /// rather than leaving that user silently locked out.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --htpasswd {}: {e}", path.display()))?;
        Htpasswd::parse(&text).map_err(|e| format!("--htpasswd {}: {e}", path.display()))
    }

    /// How many users the file names.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:hash", i + 1))?;
            let bcrypt = ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p));
            if user.is_empty() || !bcrypt {
                return Err(format!(
                    "line {}: user {user:?} has no bcrypt hash (create entries with htpasswd -B)",
                    i + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        if users.is_empty() {
            return Err("no users".to_owned());
        }
        Ok(Htpasswd {
            users,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// The user an `Authorization: Basic ...` value proves, or `None`.
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Option<String> {
        let value = authorization?.to_str().ok()?;
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let key = Digest::sha256_of(value.as_bytes());
        if self.lock().contains(&key) {
            return Some(user.to_owned());
        }
        // An unknown user is checked against some user's hash all the same, so that the time
        // taken does not tell which names exist.
        let (known, hash) = match self.users.get(user) {
            Some(h) => (true, h.clone()),
            None => (false, self.users.values().next()?.clone()),
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()?
            .unwrap_or(false);
        if !(ok && known) {
            return None;
        }
        let mut verified = self.lock();
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(key);
        Some(user.to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {token}")).expect("header")
    }

    #[tokio::test]
    async fn bcrypt_entries_are_checked_and_other_schemes_refused() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        // htpasswd -B writes $2y$; the bcrypt crate writes $2b$: both must work.
        let y = hash.replacen("$2b$", "$2y$", 1);
        let file = Htpasswd::parse(&format!("# users\nalice:{hash}\nbob:{y}\n")).expect("parse");
        assert_eq!(
            file.check(Some(&basic("alice", "s3cret"))).await.as_deref(),
            Some("alice")
        );
        // Twice: the second answer comes from the remembered set, and must agree.
        assert_eq!(
            file.check(Some(&basic("alice", "s3cret"))).await.as_deref(),
            Some("alice")
        );
        assert_eq!(
            file.check(Some(&basic("bob", "s3cret"))).await.as_deref(),
            Some("bob")
        );
        assert_eq!(file.check(Some(&basic("alice", "wrong"))).await, None);
        assert_eq!(file.check(Some(&basic("carol", "s3cret"))).await, None);
        assert_eq!(file.check(None).await, None);
        let bearer = HeaderValue::from_static("Bearer abc");
        assert_eq!(file.check(Some(&bearer)).await, None);
        let garbage = HeaderValue::from_static("Basic !!!");
        assert_eq!(file.check(Some(&garbage)).await, None);

        let md5 = Htpasswd::parse("alice:$apr1$abc$def\n")
            .err()
            .expect("refused");
        assert!(
            md5.contains("line 1") && md5.contains("htpasswd -B"),
            "{md5}"
        );
        assert!(Htpasswd::parse("\n# nobody\n").is_err());
        assert!(Htpasswd::parse("no-colon\n").is_err());
    }
}

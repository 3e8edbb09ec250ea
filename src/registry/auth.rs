//! HTTP basic authentication against an htpasswd file of bcrypt entries (`htpasswd -B`).
//!
//! bcrypt is slow on purpose (cost 5 takes ~2 ms, cost 12 ~250 ms), and clients send their
//! credentials with every request: a `docker push` of one image makes dozens. So a checked
//! `Authorization` value is remembered (by its sha256, never in clear) and the next request
//! with it costs a hash lookup.
//!
//! Wrong credentials cost a full check each, so they are where an attacker pushes:
//! - the checks run on threads of their own (`CHECK_THREADS`, a bounded queue in front), never
//!   on the threads that serve reads or do the store's file work; a full queue is answered
//!   429 at once;
//! - a client address past `failures_per_minute` wrong attempts is answered 429 without a
//!   check until its minute is over;
//! - an unknown user is checked against a hash of the most common cost in the file, so the
//!   time taken tells no one which names exist.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use hyper::header::HeaderValue;

use crate::digest::Digest;

/// Remembered good credentials, at most; the set starts over when full.
const VERIFIED_MAX: usize = 1024;
/// Threads that run bcrypt checks: the rest of the machine stays the readers'.
const CHECK_THREADS: usize = 2;
/// Checks waiting for a thread, at most; past that, a login is told to retry.
const CHECK_QUEUE: usize = 64;
/// Client addresses whose failures are counted at most; past that, old windows are dropped.
const FAILURES_MAX: usize = 10_000;
/// Wrong attempts per client address per minute before it is answered 429 (`--auth-failures`).
pub const DEFAULT_FAILURES_PER_MINUTE: u32 = 10;

/// What a request's credentials are worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// They prove this user.
    User(String),
    /// Missing or wrong.
    Refused,
    /// This client failed too often: retry after this many seconds, no check was made.
    Throttled(u64),
    /// Too many checks are waiting: retry in a moment.
    Busy,
}

/// A bcrypt check for the checking threads.
struct Job {
    password: String,
    hash: String,
    answer: tokio::sync::oneshot::Sender<bool>,
}

/// The users of an htpasswd file.
pub struct Htpasswd {
    /// User name → bcrypt hash.
    users: HashMap<String, String>,
    /// A hash of the most common cost in the file, for unknown users.
    decoy: String,
    /// sha256 of `Authorization` values that passed (see the module doc).
    verified: Mutex<HashSet<Digest>>,
    /// Wrong attempts per client address: when its minute began, and how many.
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    failures_per_minute: u32,
    /// The checking threads' queue; they end when it is dropped.
    checks: std::sync::mpsc::SyncSender<Job>,
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

    /// Whether the file has an entry for `user`.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// How many users the file names.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// The same file, with wrong attempts per client address per minute limited to `n`.
    pub fn failures_per_minute(mut self, n: u32) -> Htpasswd {
        self.failures_per_minute = n;
        self
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
        // The cost is the two digits after the prefix: `$2y$12$...`.
        let mut costs: HashMap<u32, usize> = HashMap::new();
        for hash in users.values() {
            if let Some(cost) = hash.get(4..6).and_then(|c| c.parse().ok()) {
                *costs.entry(cost).or_default() += 1;
            }
        }
        let cost = costs
            .into_iter()
            .max_by_key(|(cost, n)| (*n, *cost))
            .map_or(bcrypt::DEFAULT_COST, |(cost, _)| cost);
        let decoy = bcrypt::hash("quinistry: no user has this password", cost)
            .map_err(|e| format!("cannot make a bcrypt hash of cost {cost}: {e}"))?;
        let (checks, jobs) = std::sync::mpsc::sync_channel::<Job>(CHECK_QUEUE);
        let jobs = std::sync::Arc::new(Mutex::new(jobs));
        for i in 0..CHECK_THREADS {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || {
                    loop {
                        let job = match jobs.lock() {
                            Ok(rx) => rx.recv(),
                            Err(p) => p.into_inner().recv(),
                        };
                        let Ok(job) = job else { break };
                        let ok = bcrypt::verify(&job.password, &job.hash).unwrap_or(false);
                        let _ = job.answer.send(ok);
                    }
                })
                .map_err(|e| format!("cannot start a password-checking thread: {e}"))?;
        }
        Ok(Htpasswd {
            users,
            decoy,
            verified: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
            failures_per_minute: DEFAULT_FAILURES_PER_MINUTE,
            checks,
        })
    }

    /// What an `Authorization: Basic ...` value from `client` proves.
    pub async fn check(&self, authorization: Option<&HeaderValue>, client: IpAddr) -> Verdict {
        let Some((user, password, key)) = authorization.and_then(basic) else {
            return Verdict::Refused;
        };
        if lock(&self.verified).contains(&key) {
            return Verdict::User(user);
        }
        if let Some(wait) = self.throttled(client) {
            return Verdict::Throttled(wait);
        }
        let (known, hash) = match self.users.get(&user) {
            Some(h) => (true, h.clone()),
            None => (false, self.decoy.clone()),
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job = Job {
            password,
            hash,
            answer,
        };
        if self.checks.try_send(job).is_err() {
            return Verdict::Busy;
        }
        let ok = answered.await.unwrap_or(false);
        if !(ok && known) {
            self.failed(client);
            return Verdict::Refused;
        }
        let mut verified = lock(&self.verified);
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(key);
        Verdict::User(user)
    }

    /// Seconds `client` must wait, if it has failed too often this minute.
    fn throttled(&self, client: IpAddr) -> Option<u64> {
        let failures = lock(&self.failures);
        let (began, count) = failures.get(&client)?;
        let elapsed = began.elapsed();
        (*count >= self.failures_per_minute && elapsed < MINUTE)
            .then(|| (MINUTE - elapsed).as_secs().max(1))
    }

    fn failed(&self, client: IpAddr) {
        let mut failures = lock(&self.failures);
        if failures.len() >= FAILURES_MAX {
            failures.retain(|_, (began, _)| began.elapsed() < MINUTE);
            if failures.len() >= FAILURES_MAX {
                failures.clear();
            }
        }
        let entry = failures.entry(client).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= MINUTE {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// The user, password and remembering key of a `Basic` value.
fn basic(value: &HeaderValue) -> Option<(String, String, Digest)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((
        user.to_owned(),
        password.to_owned(),
        Digest::sha256_of(text.as_bytes()),
    ))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {token}")).expect("header")
    }

    fn ip() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[tokio::test]
    async fn bcrypt_entries_are_checked_and_other_schemes_refused() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        // htpasswd -B writes $2y$; the bcrypt crate writes $2b$: both must work.
        let y = hash.replacen("$2b$", "$2y$", 1);
        let file = Htpasswd::parse(&format!("# users\nalice:{hash}\nbob:{y}\n")).expect("parse");
        let check = |u: &str, p: &str| {
            let h = header(u, p);
            let file = &file;
            async move { file.check(Some(&h), ip()).await }
        };
        assert_eq!(
            check("alice", "s3cret").await,
            Verdict::User("alice".into())
        );
        // Twice: the second answer comes from the remembered set, and must agree.
        assert_eq!(
            check("alice", "s3cret").await,
            Verdict::User("alice".into())
        );
        assert_eq!(check("bob", "s3cret").await, Verdict::User("bob".into()));
        assert_eq!(check("alice", "wrong").await, Verdict::Refused);
        assert_eq!(check("carol", "s3cret").await, Verdict::Refused);
        assert_eq!(file.check(None, ip()).await, Verdict::Refused);
        let bearer = HeaderValue::from_static("Bearer abc");
        assert_eq!(file.check(Some(&bearer), ip()).await, Verdict::Refused);
        let garbage = HeaderValue::from_static("Basic !!!");
        assert_eq!(file.check(Some(&garbage), ip()).await, Verdict::Refused);

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

    #[tokio::test]
    async fn a_client_failing_too_often_is_throttled_and_others_are_not() {
        let hash = bcrypt::hash("right", 4).expect("hash");
        let file = Htpasswd::parse(&format!("alice:{hash}\n"))
            .expect("parse")
            .failures_per_minute(3);
        let attacker = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..3 {
            assert_eq!(
                file.check(Some(&header("alice", "guess")), attacker).await,
                Verdict::Refused
            );
        }
        // Even the right password waits out the minute, unchecked.
        match file.check(Some(&header("alice", "right")), attacker).await {
            Verdict::Throttled(s) => assert!((1..=60).contains(&s), "{s}"),
            other => panic!("not throttled: {other:?}"),
        }
        assert_eq!(
            file.check(Some(&header("alice", "right")), ip()).await,
            Verdict::User("alice".into())
        );
    }

    #[test]
    fn an_unknown_user_is_checked_at_the_most_common_cost() {
        let cheap = bcrypt::hash("x", 4).expect("hash");
        let dear = bcrypt::hash("x", 6).expect("hash");
        let file = Htpasswd::parse(&format!("a:{dear}\nb:{dear}\nc:{cheap}\n")).expect("parse");
        assert_eq!(&file.decoy[4..6], "06", "{}", file.decoy);
    }
}

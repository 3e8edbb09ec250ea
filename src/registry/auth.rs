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
//!   check until its minute is over. An attempt counts as wrong from the moment it is
//!   queued, and is taken back if it proves right: a burst of 64 wrong passwords sent at once
//!   costs `failures_per_minute` checks, not 64;
//! - a user name past `USER_FACTOR` times that many wrong attempts in a minute, from all
//!   addresses together, is answered 429 without a check too, but only at addresses that have
//!   not logged in as that user before: an attacker spreading guesses over many addresses is
//!   held back, and cannot lock the user out of the address they work from;
//! - an unknown user is checked against a hash of the most common cost in the file, so the
//!   time taken tells no one which names exist;
//! - requests bringing a value that is being checked wait for that check, so a client
//!   opening many connections at once with its password costs one check and no failures.

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
/// A user name's budget of wrong attempts per minute, over all addresses, in address budgets.
const USER_FACTOR: u32 = 3;
/// (user, address) pairs that logged in, remembered at most; the set starts over when full.
const TRUSTED_MAX: usize = 10_000;

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
    /// Values being checked now, with where their verdict will be told (see `check`).
    checking: Mutex<HashMap<Digest, tokio::sync::watch::Receiver<Option<Verdict>>>>,
    /// Wrong attempts per client address: when its minute began, and how many.
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Wrong attempts per user name, from addresses it has not logged in from.
    user_failures: Mutex<HashMap<String, (Instant, u32)>>,
    /// Addresses each user logged in from.
    trusted: Mutex<HashSet<(String, IpAddr)>>,
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

    /// The stored hash of `user`'s password, if the file names them.
    pub fn hash_of(&self, user: &str) -> Option<String> {
        self.users.get(user).cloned()
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
            checking: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            user_failures: Mutex::new(HashMap::new()),
            trusted: Mutex::new(HashSet::new()),
            failures_per_minute: DEFAULT_FAILURES_PER_MINUTE,
            checks,
        })
    }

    /// What an `Authorization: Basic ...` value from `client` proves.
    ///
    /// Requests that bring the same value while it is being checked wait for that check:
    /// a client that opens 32 connections at once with its password costs one check, and
    /// is not taken for 32 wrong attempts meanwhile.
    pub async fn check(&self, authorization: Option<&HeaderValue>, client: IpAddr) -> Verdict {
        let Some((user, password, key)) = authorization.and_then(basic) else {
            return Verdict::Refused;
        };
        if lock(&self.verified).contains(&key) {
            return Verdict::User(user);
        }
        let waiting = {
            let mut checking = lock(&self.checking);
            match checking.get(&key) {
                Some(answer) => Err(answer.clone()),
                None => {
                    let (tell, answer) = tokio::sync::watch::channel(None);
                    checking.insert(key.clone(), answer);
                    Ok(tell)
                }
            }
        };
        let tell = match waiting {
            Ok(tell) => tell,
            Err(mut answer) => {
                return match answer.wait_for(Option::is_some).await {
                    Ok(verdict) => verdict.clone().unwrap_or(Verdict::Busy),
                    // The check was dropped (its client went away): try again later.
                    Err(_) => Verdict::Busy,
                };
            }
        };
        // Told and forgotten however the check ends, a dropped request included.
        let _done = Checked {
            checking: &self.checking,
            key: key.clone(),
        };
        let verdict = self.check_once(user, password, key, client).await;
        tell.send_replace(Some(verdict.clone()));
        verdict
    }

    /// `check` of a value no other request is checking.
    async fn check_once(
        &self,
        user: String,
        password: String,
        key: Digest,
        client: IpAddr,
    ) -> Verdict {
        let trusted = lock(&self.trusted).contains(&(user.clone(), client));
        // Counted as wrong before the check (see the module doc).
        let counted = match self.reserve(&user, client, trusted) {
            Ok(counted) => counted,
            Err(wait) => {
                crate::metrics::limit_hit("auth_throttled", 1);
                return Verdict::Throttled(wait);
            }
        };
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
            self.take_back(&user, client, counted);
            return Verdict::Busy;
        }
        let ok = answered.await.unwrap_or(false);
        if !(ok && known) {
            return Verdict::Refused;
        }
        self.take_back(&user, client, counted);
        {
            let mut trusted = lock(&self.trusted);
            if trusted.len() >= TRUSTED_MAX {
                trusted.clear();
            }
            trusted.insert((user.clone(), client));
        }
        let mut verified = lock(&self.verified);
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(key);
        Verdict::User(user)
    }

    /// Counts an attempt as wrong, unless `client` (or `user`, from an address it has not
    /// logged in from) is out of budget: then the seconds to wait. Whether the user's count
    /// was taken too.
    fn reserve(&self, user: &str, client: IpAddr, trusted: bool) -> Result<bool, u64> {
        let budget = self.failures_per_minute;
        let mut failures = lock(&self.failures);
        let by_address = window(&mut failures, client);
        if by_address.1 >= budget {
            return Err(wait(by_address.0));
        }
        if !trusted {
            let mut users = lock(&self.user_failures);
            let by_user = window(&mut users, user.to_owned());
            if by_user.1 >= budget.saturating_mul(USER_FACTOR) {
                return Err(wait(by_user.0));
            }
            by_user.1 += 1;
        }
        by_address.1 += 1;
        Ok(!trusted)
    }

    /// Takes back an attempt `reserve` counted: it proved right, or was never checked.
    fn take_back(&self, user: &str, client: IpAddr, counted_for_user: bool) {
        if let Some(entry) = lock(&self.failures).get_mut(&client) {
            entry.1 = entry.1.saturating_sub(1);
        }
        if counted_for_user && let Some(entry) = lock(&self.user_failures).get_mut(user) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }
}

/// Forgets a value's check when dropped.
struct Checked<'a> {
    checking: &'a Mutex<HashMap<Digest, tokio::sync::watch::Receiver<Option<Verdict>>>>,
    key: Digest,
}

impl Drop for Checked<'_> {
    fn drop(&mut self) {
        lock(self.checking).remove(&self.key);
    }
}

/// The current minute's (start, count) of `key`, made if new or over; the map is bounded.
fn window<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, (Instant, u32)>,
    key: K,
) -> &mut (Instant, u32) {
    if map.len() >= FAILURES_MAX {
        map.retain(|_, (began, _)| began.elapsed() < MINUTE);
        if map.len() >= FAILURES_MAX {
            map.clear();
        }
    }
    let entry = map.entry(key).or_insert((Instant::now(), 0));
    if entry.0.elapsed() >= MINUTE {
        *entry = (Instant::now(), 0);
    }
    entry
}

/// Seconds until the minute that began at `began` is over (at least 1).
fn wait(began: Instant) -> u64 {
    MINUTE.saturating_sub(began.elapsed()).as_secs().max(1)
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

    /// 64 requests with the same good password at once (a client opening its connections)
    /// are one check: none is answered 429 as busy or as throttled. Without the shared check
    /// each reserved a wrong attempt and 54 of them were answered 429 (throttled).
    #[tokio::test]
    async fn the_same_credentials_at_once_are_checked_once() {
        let hash = bcrypt::hash("right", 4).expect("hash");
        let file = Htpasswd::parse(&format!("alice:{hash}\n")).expect("parse");
        let h = header("alice", "right");
        let checks = (0..64).map(|_| file.check(Some(&h), ip()));
        let verdicts = futures_util::future::join_all(checks).await;
        let users = verdicts
            .iter()
            .filter(|v| **v == Verdict::User("alice".into()))
            .count();
        assert_eq!(users, 64, "{verdicts:?}");
        assert!(
            lock(&file.checking).is_empty(),
            "a finished check is forgotten"
        );
        // Wrong ones at once: refused together, and counted as one attempt.
        let wrong = header("alice", "guess");
        let verdicts =
            futures_util::future::join_all((0..64).map(|_| file.check(Some(&wrong), ip()))).await;
        assert!(
            verdicts.iter().all(|v| *v == Verdict::Refused),
            "{verdicts:?}"
        );
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

    #[tokio::test]
    async fn a_burst_of_wrong_passwords_costs_the_budget_in_checks_and_no_more() {
        let hash = bcrypt::hash("right", 4).expect("hash");
        let file = std::sync::Arc::new(Htpasswd::parse(&format!("alice:{hash}\n")).expect("parse"));
        let attacker = IpAddr::from([10, 0, 0, 2]);
        let burst: Vec<_> = (0..64)
            .map(|i| {
                let file = file.clone();
                tokio::spawn(async move {
                    file.check(Some(&header("alice", &format!("guess{i}"))), attacker)
                        .await
                })
            })
            .collect();
        let (mut refused, mut throttled) = (0, 0);
        for task in burst {
            match task.await.expect("task") {
                Verdict::Refused => refused += 1,
                Verdict::Throttled(_) => throttled += 1,
                other => panic!("{other:?}"),
            }
        }
        // Every Refused is one bcrypt check; a Throttled is none.
        assert_eq!(
            (refused, throttled),
            (
                DEFAULT_FAILURES_PER_MINUTE,
                64 - DEFAULT_FAILURES_PER_MINUTE
            )
        );
    }

    #[tokio::test]
    async fn guesses_spread_over_addresses_are_held_back_per_user_but_the_user_still_logs_in() {
        let hash = bcrypt::hash("right", 4).expect("hash");
        let file = Htpasswd::parse(&format!("alice:{hash}\n"))
            .expect("parse")
            .failures_per_minute(2);
        let home = IpAddr::from([192, 168, 1, 7]);
        assert_eq!(
            file.check(Some(&header("alice", "right")), home).await,
            Verdict::User("alice".into())
        );
        // 2 per address, 6 per user: addresses 1..=3 get their 6 checks, the rest none.
        let mut refused = 0;
        for a in 1..=10u8 {
            for _ in 0..2 {
                match file
                    .check(Some(&header("alice", "guess")), IpAddr::from([10, 1, 0, a]))
                    .await
                {
                    Verdict::Refused => refused += 1,
                    Verdict::Throttled(_) => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(refused, 6);
        // Another user is not held back by alice's budget.
        assert_eq!(
            file.check(Some(&header("bob", "x")), IpAddr::from([10, 2, 0, 1]))
                .await,
            Verdict::Refused
        );
        // Alice, from where she logged in before (new credentials, so checked again), is let in.
        let other_header = header("alice", "right");
        lock(&file.verified).clear();
        assert_eq!(
            file.check(Some(&other_header), home).await,
            Verdict::User("alice".into())
        );
        // From a new address she is held back with the attacker until the minute is over
        // (credentials not remembered as good: remembered ones skip every check).
        lock(&file.verified).clear();
        assert!(matches!(
            file.check(
                Some(&header("alice", "right")),
                IpAddr::from([172, 16, 0, 1])
            )
            .await,
            Verdict::Throttled(_)
        ));
    }

    #[test]
    fn an_unknown_user_is_checked_at_the_most_common_cost() {
        let cheap = bcrypt::hash("x", 4).expect("hash");
        let dear = bcrypt::hash("x", 6).expect("hash");
        let file = Htpasswd::parse(&format!("a:{dear}\nb:{dear}\nc:{cheap}\n")).expect("parse");
        assert_eq!(&file.decoy[4..6], "06", "{}", file.decoy);
    }
}

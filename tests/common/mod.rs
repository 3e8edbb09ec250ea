//! Helpers shared by the integration tests: run the real binary, read its report, inspect a
//! store with the system's own tools.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_quinistry");

/// A `quinistry` command with a clean environment for reproducibility-sensitive variables.
pub fn quinistry() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("SOURCE_DATE_EPOCH")
        .env_remove("QUINISTRY_STORE")
        .env("RUST_LOG", "warn");
    c
}

/// `quinistry pack --store STORE`, ready for more arguments.
pub fn pack_in(store: &Path) -> Command {
    let mut c = quinistry();
    c.arg("pack").arg("--store").arg(store);
    c
}

/// Runs and insists on success, showing stderr otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run quinistry");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `key  value …` lines of `quinistry pack`'s report, first word of each value.
pub fn report(out: &Output) -> HashMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// Path of a blob in a store, from a `sha256:<hex>` string.
pub fn blob(store: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    store.join("blobs/sha256").join(hex)
}

/// Every file under `dir` (empty if `dir` does not exist).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs a shell pipeline and returns its stdout, trimmed.
pub fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// sha256 of a file as computed by coreutils' sha256sum, as `sha256:<hex>`.
pub fn sha256sum(path: &Path) -> String {
    let line = sh(&format!("sha256sum '{}'", path.display()));
    format!("sha256:{}", line.split_whitespace().next().expect("hash"))
}

/// Whether an external client is present. Missing is a skip, unless CI asked for every
/// client (QUINISTRY_REQUIRE_CLIENTS=1), in which case it is a failure.
pub fn have_tool(name: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("QUINISTRY_REQUIRE_CLIENTS").is_none(),
            "{name} is required (QUINISTRY_REQUIRE_CLIENTS is set) but missing: apt-get install {package}"
        );
        eprintln!(
            "SKIPPED: {name} not found; install the Debian package {package} to run this test"
        );
    }
    found
}

/// Deterministic pseudo-random bytes (xorshift): incompressible test data without a crate.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

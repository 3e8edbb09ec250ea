//! Bad input and crashes: a one-line error naming the problem, a non-zero exit, and a store
//! that holds nothing half-written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// Runs, expects failure, and returns the single stderr line.
fn fails(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert!(
        !out.status.success(),
        "{cmd:?} should fail; stderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "want one error line, got: {stderr}"
    );
    assert!(stderr.starts_with("quinistry: "), "{stderr}");
    stderr
}

/// Nothing committed and nothing left in the temp folder.
fn assert_store_empty(store: &Path) {
    assert_eq!(
        files(&store.join("blobs/sha256")),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(files(&store.join("tmp")), Vec::<std::path::PathBuf>::new());
}

/// A command that runs quinistry as an unprivileged user when we are root (root ignores file
/// permissions, so permission errors can only be shown without it).
fn unprivileged() -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .env("RUST_LOG", "warn")
            .env_remove("SOURCE_DATE_EPOCH");
        c
    } else {
        quinistry()
    }
}

/// A temp dir everyone may enter (the unprivileged user needs to reach files inside it).
fn open_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    t
}

#[test]
fn missing_input_is_named() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = t.path().join("store");
    let missing = t.path().join("no-such-file");
    let err = fails(pack_in(&store).arg(&missing));
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("No such file"), "{err}");
    assert_store_empty(&store);
}

#[test]
fn unreadable_file_is_named_and_nothing_is_stored() {
    let t = open_tempdir();
    let store = t.path().join("store");
    std::fs::create_dir(&store).expect("mkdir");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let dir = t.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("a-readable"), noise(2 << 20, 5)).expect("write");
    let secret = dir.join("b-secret");
    std::fs::write(&secret, b"secret").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    // The readable file is packed first, so the failure comes mid-stream.
    let err = fails(
        unprivileged()
            .arg("pack")
            .arg("--store")
            .arg(&store)
            .arg(&dir),
    );
    assert!(err.contains(&secret.display().to_string()), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert_store_empty(&store);
}

#[test]
fn unwritable_store_is_named() {
    let t = open_tempdir();
    let input = t.path().join("f");
    std::fs::write(&input, b"data").expect("write");
    // A store below a regular file can never be created.
    let file = t.path().join("plain-file");
    std::fs::write(&file, b"").expect("write");
    let err = fails(pack_in(&file.join("store")).arg(&input));
    assert!(err.contains("cannot create store directory"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    // A read-only store directory (for a user who is not root).
    let ro = t.path().join("ro-store");
    std::fs::create_dir_all(ro.join("tmp")).expect("mkdir");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    std::fs::set_permissions(ro.join("tmp"), std::fs::Permissions::from_mode(0o555))
        .expect("chmod");
    let err = fails(
        unprivileged()
            .arg("pack")
            .arg("--store")
            .arg(&ro)
            .arg(&input),
    );
    assert!(err.contains(&ro.display().to_string()), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn invalid_tag_compression_and_inputs_are_refused_before_touching_the_store() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = t.path().join("store");
    let input = t.path().join("f");
    std::fs::write(&input, b"data").expect("write");
    let pack = || pack_in(&store);
    let err = fails(pack().args(["--tag", "Not/Valid:tag"]).arg(&input));
    assert!(
        err.contains("invalid --tag") && err.contains("\"Not/Valid\""),
        "{err}"
    );
    let err = fails(pack().args(["--tag", "ok:.bad"]).arg(&input));
    assert!(err.contains("\".bad\""), "{err}");
    for (args, why) in [
        (&["--level", "12"][..], "gzip level 12 is out of range 0-9"),
        (&["--compression", "zstd", "--level", "20"], "zstd level 20"),
        (&["--compression", "none", "--level", "1"], "no meaning"),
        (
            &["--compression", "zstd", "--block-size", "1M"],
            "gzip only",
        ),
        (&["--block-size", "1000"], "block size 1000 is out of range"),
        (&["--threads", "0"], "--threads 0 is out of range 1-256"),
        (&["--threads", "100000"], "--threads 100000 is out of range"),
    ] {
        let err = fails(pack().args(args).arg(&input));
        assert!(err.contains(why), "{args:?}: {err}");
    }
    // Refused by the argument parser, which names the flag and the accepted values.
    for (args, why) in [
        (&["--block-size", "1X"][..], "invalid size \"1X\""),
        (
            &["--compression", "brotli"],
            "[possible values: gzip, zstd, none]",
        ),
    ] {
        let out = pack().args(args).arg(&input).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    }
    let err = fails(pack().arg(format!("{}:/a/../b", input.display())));
    assert!(err.contains("'..'"), "{err}");
    let err = fails(pack().args(["--env", "NOEQUALS"]).arg(&input));
    assert!(err.contains("invalid --env \"NOEQUALS\""), "{err}");
    let err = fails(pack().env("SOURCE_DATE_EPOCH", "yesterday").arg(&input));
    assert!(err.contains("SOURCE_DATE_EPOCH"), "{err}");
    assert!(
        !store.exists(),
        "store was created for a command that was refused"
    );
}

#[test]
fn special_files_are_refused_by_kind() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = t.path().join("store");
    let fifo = t.path().join("pipe");
    sh(&format!("mkfifo '{}'", fifo.display()));
    let err = fails(pack_in(&store).arg(&fifo));
    assert!(
        err.contains("named pipe") && err.contains(&fifo.display().to_string()),
        "{err}"
    );
    assert_store_empty(&store);
}

#[test]
fn sigkill_mid_pack_leaves_no_bad_blob_and_next_open_cleans_up() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = t.path().join("store");
    let input = t.path().join("big");
    // One committed image first, to show a kill does not harm what is already stored.
    let small = t.path().join("small");
    std::fs::write(&small, b"small").expect("write");
    run_ok(pack_in(&store).arg(&small));
    let before = files(&store.join("blobs/sha256")).len();

    let mut child = start_slow_pack(&store, &input);
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the pack finished: the kill came too late to test anything"
    );

    // Every name under blobs/ matches its content; the half-written layer is only in tmp/.
    let blobs = files(&store.join("blobs/sha256"));
    assert_eq!(
        blobs.len(),
        before,
        "a blob was committed by the killed pack"
    );
    for b in &blobs {
        let name = format!(
            "sha256:{}",
            b.file_name().and_then(|n| n.to_str()).expect("name")
        );
        assert_eq!(sha256sum(b), name);
    }
    assert!(
        !files(&store.join("tmp")).is_empty(),
        "expected the killed writer's temp file"
    );

    // verify (which only reads) agrees the store is sound; the next open for writing
    // removes the dead writer's temp file.
    let out = run_ok(quinistry().arg("verify").arg("--store").arg(&store));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("verified {before} blobs")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    run_ok(pack_in(&store).arg(&small));
    assert_eq!(files(&store.join("tmp")), Vec::<std::path::PathBuf>::new());
}

/// Starts a slow pack (192 MiB of incompressible data at level 9) and waits until its layer
/// is being written, so the caller acts in the middle of the pack.
fn start_slow_pack(store: &Path, input: &Path) -> std::process::Child {
    std::fs::write(input, noise(192 << 20, 9)).expect("write");
    let mut child = quinistry()
        .args(["pack", "--level", "9", "--store"])
        .arg(store)
        .arg(input)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let writing = files(&store.join("tmp"))
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > (1 << 20)));
        if writing {
            return child;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "pack ended too early"
        );
        assert!(Instant::now() < deadline, "pack never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_file_that_changes_while_packed_is_an_error() {
    let t = tempfile::tempdir().expect("tempdir");
    let (store, input) = (t.path().join("store"), t.path().join("growing"));
    let child = start_slow_pack(&store, &input);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .expect("open");
    std::io::Write::write_all(&mut f, b"appended while packing").expect("append");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pack of a changing file succeeded");
    assert!(
        stderr.contains("changed while it was being packed")
            && stderr.contains(&input.display().to_string()),
        "{stderr}"
    );
    assert_store_empty(&store);
}

#[test]
fn verify_reports_a_corrupted_blob() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = t.path().join("store");
    let input = t.path().join("f");
    std::fs::write(&input, b"data").expect("write");
    let r = report(&run_ok(pack_in(&store).arg(&input)));
    run_ok(quinistry().arg("verify").arg("--store").arg(&store));
    std::fs::write(blob(&store, &r["config"]), b"{}").expect("tamper");
    let out = quinistry()
        .arg("verify")
        .arg("--store")
        .arg(&store)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CORRUPT") && stdout.contains(&r["config"][7..]),
        "{stdout}"
    );
}

#[test]
fn verify_checks_the_graph_and_repair_removes_only_what_dangles() {
    let t = tempfile::tempdir().expect("tempdir");
    let store = t.path().join("store");
    let input = t.path().join("f");
    std::fs::write(&input, b"data").expect("write");
    let r = report(&run_ok(
        pack_in(&store).args(["--tag", "app:v1"]).arg(&input),
    ));
    let verify = |repair: bool| {
        let mut c = quinistry();
        c.arg("verify").arg("--store").arg(&store);
        if repair {
            c.arg("--repair");
        }
        let out = c.output().expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = verify(false);
    assert!(ok && text.contains("0 inconsistencies"), "{text}");
    // The manifest's bytes lost: its tag and its link now name nothing.
    std::fs::remove_file(blob(&store, &r["manifest"])).expect("remove");
    let (ok, text) = verify(false);
    assert!(!ok, "verify passed a dangling tag:\n{text}");
    assert!(
        text.contains("BROKEN   tag app:v1") && text.contains("not stored"),
        "{text}"
    );
    let (ok, text) = verify(true);
    assert!(ok, "{text}");
    assert!(text.contains("REPAIRED tag app:v1"), "{text}");
    let (ok, text) = verify(false);
    assert!(ok && text.contains("0 inconsistencies"), "{text}");
    // The config and layer are untouched: repair removes records, never blobs.
    assert!(blob(&store, &r["config"]).exists() && blob(&store, &r["layer"]).exists());
}

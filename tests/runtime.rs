//! Runtime closures without a container engine: a dynamically linked executable is packed
//! with its interpreter and libraries (checked against `ldd` and by running it in a chroot
//! of the unpacked layer), static and non-ELF files pack alone, a missing library fails
//! clearly and stores nothing, and the self-image has its run settings.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use common::{blob, build_greeter, files, have_tool, layer_entries, pack_in, report, run_ok, sh};

/// Resolves `path` inside `root` as a process chrooted there would: absolute symlink
/// targets start again at `root`. `None` if it leads nowhere.
fn resolve_in(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut todo: Vec<PathBuf> = vec![path.to_owned()];
    let mut at = PathBuf::from("/");
    for _ in 0..40 {
        let Some(next) = todo.pop() else {
            return Some(at);
        };
        let mut parts = next.components().peekable();
        while let Some(c) = parts.next() {
            match c {
                Component::RootDir => at = PathBuf::from("/"),
                Component::ParentDir => {
                    at.pop();
                }
                Component::Normal(n) => {
                    let candidate = at.join(n);
                    let on_disk = root.join(candidate.strip_prefix("/").ok()?);
                    let meta = std::fs::symlink_metadata(&on_disk).ok()?;
                    if meta.file_type().is_symlink() {
                        let rest: PathBuf = parts.collect();
                        if !rest.as_os_str().is_empty() {
                            todo.push(rest);
                        }
                        todo.push(std::fs::read_link(&on_disk).ok()?);
                        break;
                    }
                    at = candidate;
                }
                _ => {}
            }
        }
    }
    None
}

/// The interpreter and every library path `ldd` prints for `exe` on this host.
fn ldd_paths(exe: &Path) -> Vec<PathBuf> {
    sh(&format!("ldd '{}'", exe.display()))
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Unpacks a layer blob into a new directory under `dir`.
fn unpack(blob: &Path, dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(&root).expect("mkdir rootfs");
    sh(&format!(
        "tar xzf '{}' -C '{}'",
        blob.display(),
        root.display()
    ));
    root
}

/// Runs `argv` chrooted in `root` (we are root in CI) with only `env`. `None` when chroot
/// is not allowed here, which is a skip, not a failure.
fn run_in_chroot(root: &Path, argv: &[&str], env: &[(&str, &str)]) -> Option<String> {
    // Found on our PATH; the program inside gets an empty environment.
    let out = Command::new(sh("command -v chroot"))
        .arg(root)
        .args(argv)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run chroot");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("Operation not permitted") {
        common::skip(&format!("chroot needs root: {}", stderr.trim()));
        return None;
    }
    assert!(out.status.success(), "chroot {argv:?} failed: {stderr}");
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn a_dynamic_executable_is_packed_with_what_the_loader_needs() {
    if !have_tool("cc", "gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let app = build_greeter(&dir.path().join("src"));
    // Two executables that share libc: the shared files are packed once.
    let spec = format!("{}:/usr/local/bin/greet", app.display());
    // The ELF closure alone, in one layer (packages add whole packages: see packages.rs).
    let out = run_ok(pack_in(&store).args([
        "--closure",
        "elf",
        "--entrypoint",
        "/usr/local/bin/greet",
        &spec,
        "/usr/bin/env",
    ]));
    let rep = report(&out);
    let layer = blob(&store, &rep["layer"]);
    let entries = layer_entries(&layer);
    let mut paths: Vec<&str> = entries.iter().map(|(_, p, _)| p.as_str()).collect();
    let n = paths.len();
    paths.dedup();
    assert_eq!(paths.len(), n, "an entry is packed twice: {entries:?}");

    // The library found through $ORIGIN/lib followed the program to where it is packed,
    // with its soname symlink kept as a symlink next to its target.
    let find = |p: &str| entries.iter().find(|(_, path, _)| path == p).cloned();
    assert_eq!(
        find("usr/local/bin/lib/libgreet.so.1"),
        Some((
            'l',
            "usr/local/bin/lib/libgreet.so.1".into(),
            "libgreet.so.1.0".into()
        ))
    );
    assert_eq!(
        find("usr/local/bin/lib/libgreet.so.1.0").map(|e| e.0),
        Some('-')
    );

    // Everything ldd says the two programs load exists in the layer (interpreter included).
    let root = unpack(&layer, dir.path());
    let mut needed = ldd_paths(Path::new("/usr/bin/env"));
    needed.extend(
        ldd_paths(&app)
            .into_iter()
            .filter(|p| !p.starts_with(dir.path())),
    );
    assert!(
        needed
            .iter()
            .any(|p| p.to_string_lossy().contains("libc.so")),
        "{needed:?}"
    );
    for p in &needed {
        let found = resolve_in(&root, p);
        assert!(
            found.is_some_and(|f| root.join(f.strip_prefix("/").unwrap_or(&f)).is_file()),
            "{} (from ldd) is not in the layer: {entries:?}",
            p.display()
        );
    }

    // And they run with nothing but the layer under them.
    // A chroot has no /proc, from which glibc takes the program's $ORIGIN; LD_ORIGIN_PATH is
    // its documented fallback. (Containers have /proc: the docker test needs none of this.)
    let origin = [("LD_ORIGIN_PATH", "/usr/local/bin")];
    if let Some(out) = run_in_chroot(&root, &["/usr/local/bin/greet", "chroot"], &origin) {
        assert_eq!(out, "hello, chroot, from libgreet");
        let env = run_in_chroot(&root, &["/env", "A=1"], &[]).unwrap_or_default();
        assert_eq!(env, "A=1");
    }
}

#[test]
fn a_missing_library_fails_naming_it_and_stores_nothing() {
    if !have_tool("cc", "gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let app = build_greeter(&dir.path().join("src"));
    std::fs::remove_file(dir.path().join("src/lib/libgreet.so.1")).expect("rm symlink");
    let out = pack_in(&store).arg(&app).output().expect("run");
    assert!(!out.status.success(), "packing succeeded without libgreet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("cannot find library libgreet.so.1 needed by")
            && stderr.contains(&app.display().to_string()),
        "{stderr}"
    );
    assert_stored_nothing(&store);
}

/// A refused pack leaves no blob, temp file or tag behind.
fn assert_stored_nothing(store: &Path) {
    for (sub, what) in [
        ("blobs/sha256", "a blob was stored"),
        ("tmp", "a temp file was left"),
        ("repositories", "a tag was written"),
    ] {
        assert!(files(&store.join(sub)).is_empty(), "{what}");
    }
}

#[test]
fn static_and_non_elf_inputs_pack_alone() {
    if !have_tool("cc", "gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { puts(\"static\"); return 0; }\n",
    )
    .expect("write");
    let exe = dir.path().join("hello");
    sh(&format!(
        "cc -static -o '{}' '{}'",
        exe.display(),
        src.display()
    ));
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho script\n").expect("write");
    sh(&format!("chmod +x '{}'", script.display()));
    let store = dir.path().join("store");
    let out = run_ok(pack_in(&store).arg(&exe).arg(&script));
    let rep = report(&out);
    assert!(
        !rep.contains_key("runtime"),
        "a runtime closure for static inputs"
    );
    let paths: Vec<String> = layer_entries(&blob(&store, &rep["layer"]))
        .into_iter()
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(paths, ["hello", "run.sh"]);
}

#[test]
fn the_self_image_carries_its_closure_and_run_settings_and_is_reproducible() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Default settings: the image `cargo run --release` serves.
    let a = run_ok(&mut pack_in(&dir.path().join("a")));
    // Another store, working directory and environment: nothing of those may show.
    let b = run_ok(
        pack_in(&dir.path().join("b"))
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env("TZ", "Pacific/Kiritimati")
            .env("LD_LIBRARY_PATH", dir.path()),
    );
    let (ra, rb) = (report(&a), report(&b));
    for key in ["manifest", "docker", "config", "layer", "diff_id"] {
        assert_eq!(ra[key], rb[key], "{key} differs between two packs");
    }
    let store = dir.path().join("a");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&store, &ra["config"])).expect("config"))
            .expect("config json");
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/main"]));
    assert_eq!(c["Cmd"], serde_json::json!(["serve"]));
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(
        c["Env"],
        serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "QUINISTRY_STORE=/var/lib/quinistry",
            "QUINISTRY_LISTEN=0.0.0.0:8080"
        ])
    );
    assert_eq!(c["Labels"]["org.opencontainers.image.title"], "quinistry");
    assert_eq!(
        c["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");

    // The layer holds the executable at /main and what ldd says it loads.
    let layer = blob(&store, &ra["layer"]);
    let entries = layer_entries(&layer);
    assert!(
        entries.iter().any(|(k, p, _)| *k == '-' && p == "main"),
        "{entries:?}"
    );
    let root = unpack(&layer, dir.path());
    // The license notices of the crates in /main travel with it, as `licenses` prints them.
    let printed = run_ok(common::quinistry().arg("licenses")).stdout;
    assert!(
        printed.starts_with(b"quinistry "),
        "licenses printed no notices"
    );
    let notices = root.join("usr/share/doc/quinistry/copyright");
    assert_eq!(
        std::fs::read(&notices).expect("notices in the layer"),
        printed
    );
    assert!(
        entries
            .iter()
            .any(|(k, p, _)| *k == '-' && p == "usr/share/doc/quinistry/copyright"),
        "{entries:?}"
    );
    assert_eq!(
        std::fs::metadata(&notices)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    for p in ldd_paths(Path::new(common::BIN)) {
        assert!(
            resolve_in(&root, &p)
                .is_some_and(|f| root.join(f.strip_prefix("/").unwrap_or(&f)).is_file()),
            "{} (from ldd) is not in the self-image",
            p.display()
        );
    }
    if let Some(v) = run_in_chroot(&root, &["/main", "--version"], &[]) {
        assert_eq!(v, format!("quinistry {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn the_self_image_carries_the_settings_that_made_it() {
    // Each way of changing the layer's bytes, and the variables the image's Env must carry.
    for (given, carried) in [
        (
            &["--level", "1", "--block-size", "256K"][..],
            &["QUINISTRY_LEVEL=1", "QUINISTRY_BLOCK_SIZE=262144"][..],
        ),
        (
            &["--compression", "zstd", "--level", "5"],
            &["QUINISTRY_COMPRESSION=zstd", "QUINISTRY_LEVEL=5"],
        ),
        // Threads do not change the bytes, so they are not carried.
        (
            &["--compression", "none", "--threads", "1"],
            &["QUINISTRY_COMPRESSION=none"],
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let parent = run_ok(
            pack_in(&dir.path().join("a"))
                .args(given)
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        let rep = report(&parent);
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(blob(&dir.path().join("a"), &rep["config"])).expect("config"),
        )
        .expect("config json");
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["serve"]));
        let env: Vec<String> =
            serde_json::from_value(config["config"]["Env"].clone()).expect("Env strings");
        assert!(
            env.contains(&"SOURCE_DATE_EPOCH=1700000000".to_owned()),
            "{env:?}"
        );
        let quinistry_vars: Vec<&str> = env
            .iter()
            .map(String::as_str)
            .filter(|kv| {
                kv.starts_with("QUINISTRY_")
                    && !kv.starts_with("QUINISTRY_STORE=")
                    && !kv.starts_with("QUINISTRY_LISTEN=")
            })
            .collect();
        assert_eq!(quinistry_vars, *carried, "{given:?}");

        // Be the child without a container: the image's own Env and no settings on the
        // command line, nothing of ours, give the same image.
        let mut child = pack_in(&dir.path().join("b"));
        for kv in &env {
            let (k, v) = kv.split_once('=').expect("KEY=VALUE");
            child.env(k, v);
        }
        let rep_child = report(&run_ok(&mut child));
        assert_eq!(rep_child["manifest"], rep["manifest"], "{given:?}");
        assert_eq!(rep_child["docker"], rep["docker"], "{given:?}");
        assert_eq!(rep_child["layer"], rep["layer"], "{given:?}");
    }
}

/// app → libmid → libinner, both libraries in `app`'s `$ORIGIN/lib`, libmid with no search
/// path of its own: libinner is found only through a search path libmid inherits from app.
/// A DT_RPATH is inherited; a DT_RUNPATH is not. The host's loader and our closure must
/// agree on both.
#[test]
fn rpath_is_inherited_by_dependencies_and_runpath_is_not() {
    if !have_tool("cc", "gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    sh(&format!(
        "cd '{d}' && mkdir lib \
         && echo 'const char *inner(void) {{ return \"inner\"; }}' > inner.c \
         && echo 'const char *inner(void); const char *mid(void) {{ return inner(); }}' > mid.c \
         && printf '#include <stdio.h>\\nconst char *mid(void);\\nint main(void) {{ puts(mid()); return 0; }}\\n' > app.c \
         && cc -shared -fPIC -Wl,-soname,libinner.so.1 -o lib/libinner.so.1 inner.c \
         && cc -shared -fPIC -Wl,-soname,libmid.so.1 -o lib/libmid.so.1 mid.c lib/libinner.so.1 \
         && cc -o rpath app.c lib/libmid.so.1 -Wl,-rpath-link,lib,--disable-new-dtags,-rpath,'$ORIGIN/lib' \
         && cc -o runpath app.c lib/libmid.so.1 -Wl,-rpath-link,lib,--enable-new-dtags,-rpath,'$ORIGIN/lib'"
    ));
    let store = dir.path().join("store");

    // DT_RPATH: the host runs it, and the closure holds both libraries.
    let rpath = dir.path().join("rpath");
    assert_eq!(sh(&format!("'{}'", rpath.display())), "inner");
    let out = run_ok(pack_in(&store).arg(format!("{}:/opt/app", rpath.display())));
    let entries = layer_entries(&blob(&store, &report(&out)["layer"]));
    for lib in ["opt/lib/libmid.so.1", "opt/lib/libinner.so.1"] {
        assert!(
            entries.iter().any(|(_, p, _)| p == lib),
            "{lib} missing: {entries:?}"
        );
    }

    // DT_RUNPATH: the host's loader cannot find libinner, and neither do we.
    let runpath = dir.path().join("runpath");
    let host = Command::new(&runpath).output().expect("run");
    let host_err = String::from_utf8_lossy(&host.stderr);
    assert!(
        !host.status.success() && host_err.contains("libinner.so.1"),
        "the host loader ran it: {host_err}"
    );
    let ours = pack_in(&store).arg(&runpath).output().expect("run");
    let err = String::from_utf8_lossy(&ours.stderr);
    assert!(
        !ours.status.success()
            && err.contains("cannot find library libinner.so.1 needed by")
            && err.contains("libmid.so.1"),
        "{err}"
    );
}

#[test]
fn a_closure_colliding_with_an_input_is_refused_naming_both() {
    if !have_tool("cc", "gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let app = build_greeter(&dir.path().join("src"));
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "a file where the library's directory must be\n").expect("write");
    // The library follows the program into /opt/lib, where an input already put a file.
    let out = pack_in(&store)
        .arg(format!("{}:/opt/lib", file.display()))
        .arg(format!("{}:/opt/app", app.display()))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "packed over a conflict");
    assert!(
        err.contains(&format!("input {}", file.display()))
            && err.contains(&format!("(needed to run {})", app.display()))
            && err.contains("both go to /opt/lib in the image"),
        "{err}"
    );
    assert_stored_nothing(&store);
}

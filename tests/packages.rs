//! Programs installed on this machine, served as images with the packages they come from:
//! each runs under docker with `--network none` doing real work, images share the layers of
//! the packages they share, and what the machine added (an edited conffile, a file only root
//! may read, files generated at install time) stays on the machine.

mod common;

use std::path::Path;
use std::process::Command;

use common::{DockerCleanup, Serving, docker_output, have_docker, installed, run_ok, sh};

/// The programs these tests pack, and the Debian package each must come from whole (`perl`,
/// not only perl-base, for its modules; `python3`, not only python3-minimal).
const PROGRAMS: [(&str, &str); 10] = [
    ("/usr/bin/python3", "python3"),
    ("/usr/bin/perl", "perl"),
    ("/usr/bin/git", "git"),
    ("/usr/bin/curl", "curl"),
    ("/usr/bin/openssl", "openssl"),
    ("/usr/bin/ssh", "openssh-client"),
    ("/usr/bin/ssh-keygen", "openssh-client"),
    ("/usr/bin/file", "file"),
    ("/usr/bin/gpg", "gpg"),
    ("/usr/bin/sqlite3", "sqlite3"),
];

/// Tests that change the machine (a conffile, the trusted CAs) take this for writing; the
/// others, which pack those files, for reading: tests of one binary run in parallel.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn machine_read() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|p| p.into_inner())
}

fn machine_write() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|p| p.into_inner())
}

fn all_installed() -> bool {
    PROGRAMS.iter().all(|(p, pkg)| installed(p, pkg))
}

/// `docker run --rm --network none [OPTS] IMAGE ARGS`, which must succeed: what the program
/// printed on stdout, and all it printed (stderr too). The image is pulled first, so that
/// docker's progress lines are not mixed in.
fn run_in(opts: &[&str], image: &str, args: &[&str]) -> (String, String) {
    let pulled = docker_output(&["pull", "-q", image]);
    assert!(
        pulled.status.success(),
        "docker pull {image}: {}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let mut all = vec!["run", "--rm", "--network", "none"];
    all.extend(opts);
    all.push(image);
    all.extend(args);
    let out = docker_output(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let both = stdout.clone() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "docker {all:?} failed:\n{both}");
    (stdout, both)
}

#[test]
fn installed_programs_run_in_docker_doing_real_work_and_share_layers() {
    if !have_docker() || !all_installed() {
        return;
    }
    let _machine = machine_read();
    let dir = tempfile::tempdir().expect("tempdir");
    // ssh and ssh-keygen in one image: the first input is its entrypoint.
    let images = dir.path().join("images.toml");
    std::fs::write(
        &images,
        "[[image]]\nname = \"ssh\"\ninputs = [\"/usr/bin/ssh\", \"/usr/bin/ssh-keygen\"]\n",
    )
    .expect("images file");
    let images = images.display().to_string();
    // Every program of the machine is an image; the scan is timed by the start-up.
    let started = std::time::Instant::now();
    // And each program as an --image of its own too (python3 is served through the root).
    // Not packed ahead: that would be every program of the machine, in the background.
    let mut args = vec![
        "--no-prepack".to_owned(),
        "--root".to_owned(),
        "/usr/bin".to_owned(),
        "--images".to_owned(),
        images,
    ];
    for name in ["perl", "git", "curl", "openssl", "file", "gpg", "sqlite3"] {
        args.push("--image".to_owned());
        args.push(format!("img/{name}=/usr/bin/{name}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Serving::start(&dir.path().join("store"), dir.path(), &args);
    eprintln!(
        "serve --root /usr/bin listening after {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    // python3 by its name under the root, ssh from the file, the rest by their --image.
    let image = |name: &str| match name {
        "python3" | "ssh" => format!("{}/{name}:latest", server.addr),
        _ => format!("{}/img/{name}:latest", server.addr),
    };
    let mut cleanup = DockerCleanup::default();
    for name in [
        "python3", "perl", "git", "curl", "openssl", "ssh", "file", "gpg", "sqlite3",
    ] {
        cleanup.image(&image(name));
    }
    let out = tempfile::tempdir().expect("tempdir");
    let volume = format!("{}:/out", out.path().display());

    let (py, _) = run_in(
        &[],
        &image("python3"),
        &[
            "-c",
            "import json,ssl,sqlite3,ctypes,hashlib,urllib.request; print('imports', ssl.OPENSSL_VERSION_INFO[0])",
        ],
    );
    assert!(py.contains("imports 3"), "{py}");

    // perl after python3: the packages they share are layers docker already has.
    let pulled = docker_output(&["pull", &image("perl")]);
    let pulled = String::from_utf8_lossy(&pulled.stdout).into_owned();
    assert!(
        pulled.contains("Already exists"),
        "perl shares no layer with python3:\n{pulled}"
    );
    let (pl, _) = run_in(
        &[],
        &image("perl"),
        &[
            "-MPOSIX",
            "-MJSON::PP",
            "-MDigest::SHA",
            "-e",
            "print JSON::PP->new->encode([Digest::SHA::sha1_hex('x')])",
        ],
    );
    assert!(
        pl.contains("11f6ad8ec52a2984abaafd7c3b516503785c2072"),
        "{pl}"
    );

    // git: a repository made, committed to and cloned, all in containers.
    let git = |args: &[&str]| run_in(&["-v", &volume], &image("git"), args).0;
    git(&["init", "-q", "/out/repo"]);
    std::fs::write(out.path().join("repo/f"), "hello\n").expect("write");
    git(&["-C", "/out/repo", "add", "f"]);
    git(&[
        "-C",
        "/out/repo",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.org",
        "commit",
        "-q",
        "-m",
        "first",
    ]);
    git(&["clone", "-q", "file:///out/repo", "/out/clone"]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("clone/f")).expect("cloned file"),
        "hello\n"
    );
    assert!(git(&["-C", "/out/clone", "log", "--oneline"]).contains("first"));

    run_in(
        &["-v", &volume],
        &image("openssl"),
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=t", "-keyout", "/out/k",
            "-out", "/out/c",
        ],
    );
    let subject = sh(&format!(
        "openssl x509 -in '{}' -noout -subject",
        out.path().join("c").display()
    ));
    assert!(subject.contains("CN = t"), "{subject}");

    run_in(
        &["-v", &volume, "--entrypoint", "/ssh-keygen"],
        &image("ssh"),
        &["-t", "ed25519", "-N", "", "-f", "/out/id"],
    );
    assert!(
        out.path().join("id.pub").exists(),
        "ssh-keygen wrote no key"
    );
    assert!(run_in(&[], &image("ssh"), &["-V"]).1.contains("OpenSSH"));

    assert!(
        run_in(&[], &image("file"), &["/etc/passwd"])
            .0
            .contains("ASCII text")
    );
    let (_, gpg) = run_in(
        &[],
        &image("gpg"),
        &[
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "t@example.org",
        ],
    );
    assert!(gpg.contains("revocation certificate stored"), "{gpg}");
    assert_eq!(
        run_in(&[], &image("sqlite3"), &[":memory:", "select 1+1"])
            .0
            .trim(),
        "2"
    );
    assert!(
        run_in(&[], &image("curl"), &["--version"])
            .0
            .contains("OpenSSL")
    );
}

/// Every `layer` line of `quinistry pack`'s report: (digest, what it holds).
fn layers(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("layer")?;
            let digest = rest.split_whitespace().next()?.to_owned();
            let label = rest.rsplit(", ").next()?.trim_end_matches(')').to_owned();
            Some((digest, label))
        })
        .collect()
}

/// Every path in every layer of a packed image.
fn paths_in(store: &Path, stdout: &[u8]) -> Vec<String> {
    layers(stdout)
        .iter()
        .flat_map(|(digest, _)| {
            let blob = common::blob(store, digest);
            sh(&format!("tar tzf '{}'", blob.display()))
                .lines()
                .map(|l| l.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Puts a system file back as it was, whatever the test did to it.
struct Restore {
    path: &'static str,
    bytes: Vec<u8>,
    mode: u32,
}

impl Restore {
    fn new(path: &'static str) -> Restore {
        use std::os::unix::fs::PermissionsExt;
        Restore {
            path,
            bytes: std::fs::read(path).expect("read"),
            mode: std::fs::metadata(path).expect("stat").permissions().mode(),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::write(self.path, &self.bytes);
        let _ = std::fs::set_permissions(self.path, std::fs::Permissions::from_mode(self.mode));
    }
}

#[test]
fn an_edited_conffile_a_root_only_file_and_generated_files_stay_on_the_machine() {
    const CONFFILE: &str = "/etc/ssh/ssh_config";
    const PRIVATE: &str = "/usr/lib/openssh/ssh-keysign";
    if !installed("/usr/bin/ssh", "openssh-client") {
        return;
    }
    if !common::is_root() {
        common::skip("editing a conffile and a package file needs root");
        return;
    }
    let _machine = machine_write();
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = |store: &str| {
        let store = dir.path().join(store);
        let out = run_ok(common::pack_in(&store).args(["--tag", "ssh:v1", "/usr/bin/ssh"]));
        (paths_in(&store, &out.stdout), out)
    };
    // As shipped: both are in the image, and the closure went beyond the ELF libraries.
    let (shipped, out) = pack("a");
    for p in [CONFFILE, PRIVATE, "/usr/bin/ssh-keygen"] {
        assert!(
            shipped
                .iter()
                .any(|s| Path::new("/").join(s) == Path::new(p)),
            "{p} (of openssh-client, unchanged) is not in the image"
        );
    }
    // libc6 is in the Essential set's layer, the bottom one of every image with packages.
    let labels: Vec<String> = layers(&out.stdout).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        labels.first().map(String::as_str),
        Some("essential packages")
    );
    assert!(labels.iter().any(|l| l == "openssh-client"), "{labels:?}");
    // Generated at install time, by no package: never packed.
    for generated in ["etc/ld.so.cache", "etc/ssh/ssh_host_ed25519_key"] {
        assert!(
            !shipped.iter().any(|s| s == generated),
            "{generated} was packed"
        );
    }

    // An admin's edit of the conffile, and the file made readable by root only.
    let _conffile = Restore::new(CONFFILE);
    let _private = Restore::new(PRIVATE);
    let mut edited = std::fs::read(CONFFILE).expect("read");
    edited.extend_from_slice(b"\n# quinistry test: a secret the admin wrote\n");
    std::fs::write(CONFFILE, edited).expect("edit");
    sh(&format!("chmod 0700 {PRIVATE}"));
    let (after, _) = pack("b");
    for p in [CONFFILE, PRIVATE] {
        assert!(
            !after.iter().any(|s| Path::new("/").join(s) == Path::new(p)),
            "{p} left the machine"
        );
    }
    assert!(after.iter().any(|s| s == "usr/bin/ssh-keygen"));
}

/// A program laid out as a toolchain is (`bin/app`, its library in `bin/../lib`, found
/// through `$ORIGIN/../lib`) keeps that layout in the image and runs.
#[test]
fn a_program_finding_its_libraries_through_origin_dotdot_keeps_its_layout() {
    if !have_docker() || !common::have_tool("cc", "gcc") {
        return;
    }
    let _machine = machine_read();
    let dir = tempfile::tempdir().expect("tempdir");
    let tool = dir.path().join("toolchain");
    std::fs::create_dir_all(tool.join("bin")).expect("mkdir");
    std::fs::create_dir_all(tool.join("lib")).expect("mkdir");
    library_and_app(dir.path(), "greet", "hello from ../lib");
    sh(&format!(
        "cd '{d}' && cc -shared -fPIC -Wl,-soname,libgreet.so -o toolchain/lib/libgreet.so greet.c \
         && cc -o toolchain/bin/app app.c toolchain/lib/libgreet.so -Wl,--enable-new-dtags,-rpath,'$ORIGIN/../lib'",
        d = dir.path().display()
    ));
    let spec = format!("tc/app={}", tool.join("bin/app").display());
    let server = Serving::start(&dir.path().join("store"), dir.path(), &["--image", &spec]);
    let image = format!("{}/tc/app:latest", server.addr);
    let _cleanup = DockerCleanup::images(&[&image]);
    assert_eq!(run_in(&[], &image, &[]).0.trim(), "hello from ../lib");
}

/// Undoes a CA added to the machine's trust store, whatever the test did.
struct TrustedCa(std::path::PathBuf);

impl Drop for TrustedCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = Command::new("update-ca-certificates").output();
    }
}

/// A TLS server for the test (`openssl s_server -www`), killed at the end.
struct TlsServer(std::process::Child);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl in its image trusts what the machine trusts: its CA bundle is the base's, taken from
/// the host. A test CA the host trusts signs a loopback server's certificate.
#[test]
fn curl_in_its_image_reaches_an_https_server_the_machine_trusts() {
    if !have_docker()
        || !installed("/usr/bin/curl", "curl")
        || !installed("/usr/bin/openssl", "openssl")
        || !installed("/usr/sbin/update-ca-certificates", "ca-certificates")
    {
        return;
    }
    if !common::is_root() {
        common::skip("adding a CA to the machine's trust store needs root");
        return;
    }
    let _machine = machine_write();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    sh(&format!(
        "cd '{d}' && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=quinistry-test-ca \
           -keyout ca.key -out ca.crt 2>/dev/null \
         && openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout srv.key -out srv.csr 2>/dev/null \
         && printf 'subjectAltName=IP:127.0.0.1\\n' > san \
         && openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
           -extfile san -out srv.crt 2>/dev/null"
    ));
    let ca = std::path::PathBuf::from(format!(
        "/usr/local/share/ca-certificates/quinistry-test-{}.crt",
        std::process::id()
    ));
    std::fs::create_dir_all(ca.parent().expect("parent")).expect("mkdir");
    std::fs::copy(dir.path().join("ca.crt"), &ca).expect("install CA");
    let _trusted = TrustedCa(ca);
    run_ok(&mut Command::new("update-ca-certificates"));

    let port = common::free_port();
    let _tls = TlsServer(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(dir.path().join("srv.crt"))
            .arg("-key")
            .arg(dir.path().join("srv.key"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    let url = format!("https://127.0.0.1:{port}/");
    // The host's curl trusts it (the server is up and the CA is in the bundle).
    let mut up = false;
    for _ in 0..100 {
        if Command::new("curl")
            .args(["-s", "-o", "/dev/null", &url])
            .status()
            .is_ok_and(|s| s.success())
        {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "the host's curl cannot reach {url}");

    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &["--image", "curl=/usr/bin/curl"],
    );
    let image = format!("{}/curl:latest", server.addr);
    let _cleanup = DockerCleanup::images(&[&image]);
    docker_output(&["pull", "-q", &image]);
    let out = docker_output(&["run", "--rm", "--network", "host", &image, "-sS", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("s_server"),
        "curl in its image: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes what the test added to the machine's loader configuration.
struct LoaderConf(Vec<std::path::PathBuf>);

impl Drop for LoaderConf {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
        let _ = Command::new("ldconfig").output();
    }
}

/// A library the host's loader finds only through /etc/ld.so.conf reaches the image's loader
/// too: the image has no ld.so.cache, so its config says LD_LIBRARY_PATH.
#[test]
fn a_library_found_through_ld_so_conf_is_found_in_the_image() {
    if !have_docker() || !common::have_tool("cc", "gcc") {
        return;
    }
    if !common::is_root() {
        common::skip("adding a directory to the machine's ld.so.conf needs root");
        return;
    }
    let _machine = machine_write();
    let dir = tempfile::tempdir().expect("tempdir");
    let libdir = std::path::PathBuf::from(format!(
        "/usr/local/lib/quinistry-test-{}",
        std::process::id()
    ));
    let conf = std::path::PathBuf::from(format!(
        "/etc/ld.so.conf.d/quinistry-test-{}.conf",
        std::process::id()
    ));
    let _undo = LoaderConf(vec![libdir.clone(), conf.clone()]);
    std::fs::create_dir_all(&libdir).expect("mkdir");
    std::fs::write(&conf, format!("{}\n", libdir.display())).expect("conf");
    library_and_app(dir.path(), "hi", "found through ld.so.conf");
    sh(&format!(
        "cd '{d}' && cc -shared -fPIC -Wl,-soname,libhi.so -o '{l}/libhi.so' hi.c \
         && cc -o app app.c -L'{l}' -lhi && ldconfig",
        d = dir.path().display(),
        l = libdir.display()
    ));
    let spec = format!("conf/app={}", dir.path().join("app").display());
    let server = Serving::start(&dir.path().join("store"), dir.path(), &["--image", &spec]);
    let image = format!("{}/conf/app:latest", server.addr);
    let _cleanup = DockerCleanup::images(&[&image]);
    assert_eq!(
        run_in(&[], &image, &[]).0.trim(),
        "found through ld.so.conf"
    );
    let env = common::docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        &image,
    ]);
    assert!(
        env.contains(&format!("LD_LIBRARY_PATH={}", libdir.display())),
        "{env}"
    );
}

/// Writes `<function>.c`, a library function that prints `message`, and `app.c`, a program
/// that calls it, into `dir`.
fn library_and_app(dir: &Path, function: &str, message: &str) {
    std::fs::write(
        dir.join(format!("{function}.c")),
        format!("#include <stdio.h>\nvoid {function}(void) {{ puts(\"{message}\"); }}\n"),
    )
    .expect("write");
    std::fs::write(
        dir.join("app.c"),
        format!("void {function}(void);\nint main(void) {{ {function}(); return 0; }}\n"),
    )
    .expect("write");
}

/// Same inputs, same digests: python3 with its packages (the Essential set, what it
/// recommends, the accounts, the CA bundle) packed into two stores is the same image.
#[test]
fn python3_packed_twice_on_two_stores_has_the_same_digests() {
    if !installed("/usr/bin/python3", "python3") {
        return;
    }
    let _machine = machine_read();
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = |store: &str| {
        let out = run_ok(common::pack_in(&dir.path().join(store)).args([
            "--tag",
            "py:1",
            "/usr/bin/python3",
        ]));
        (common::report(&out), layers(&out.stdout))
    };
    let (a, layers_a) = pack("a");
    let (b, layers_b) = pack("b");
    assert_eq!(a.get("manifest"), b.get("manifest"));
    assert!(a.contains_key("manifest"), "{a:?}");
    assert_eq!(layers_a, layers_b);
    assert!(layers_a.len() > 2, "{layers_a:?}");
}

//! The machine's programs, each in its own image from `serve --root /usr/bin` or a
//! `pkgs/...` name, doing its real job under docker: each started with `--entrypoint` set to
//! its path on the host, and each found on the image's PATH by `sh -c 'command -v PROG'`.
//!
//! Needs the Debian packages `.ci/run` installs (make, tar, gzip, nginx, python3-venv,
//! python3-pip, gcc, libc6-dev, openjdk-17-jre-headless, golang-go, postgresql-client) and a
//! Docker engine; without them each case skips (or fails under CI).

mod common;

use std::path::Path;
use std::process::Command;

use common::{DockerCleanup, Serving, docker_output, have_docker, installed, run_ok};

/// One server for the whole binary's cases would share state between tests; each test has
/// its own, over `--root /usr/bin` (which also serves `pkgs/...`), and no prepacking.
struct Registry {
    server: Serving,
    _dir: tempfile::TempDir,
    cleanup: DockerCleanup,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Serving::start(
            &dir.path().join("store"),
            dir.path(),
            &["--no-prepack", "--root", "/usr/bin"],
        );
        Registry {
            server,
            _dir: dir,
            cleanup: DockerCleanup::default(),
        }
    }

    /// The image `name` of this registry, pulled (and removed when the test ends).
    fn image(&mut self, name: &str) -> String {
        let image = format!("{}/{name}:latest", self.server.addr);
        self.cleanup.image(&image);
        let pulled = docker_output(&["pull", "-q", &image]);
        assert!(
            pulled.status.success(),
            "docker pull {image}: {}\n{}",
            String::from_utf8_lossy(&pulled.stderr),
            self.server.log_text()
        );
        image
    }
}

/// `docker run --rm OPTS --entrypoint ENTRYPOINT IMAGE ARGS`, which must succeed: stdout,
/// and stdout with stderr.
fn run(opts: &[&str], entrypoint: &str, image: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["run", "--rm"];
    all.extend(opts);
    all.extend(["--entrypoint", entrypoint, image]);
    all.extend(args);
    let out = docker_output(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let both = stdout.clone() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "docker {all:?} failed:\n{both}");
    (stdout, both)
}

/// The program is on the image's PATH, where the host has it.
fn on_path(image: &str, program: &str, host_path: &str) {
    let (found, _) = run(
        &["--network", "none"],
        "/bin/sh",
        image,
        &["-c", &format!("command -v {program}")],
    );
    assert_eq!(found.trim(), host_path, "{image}");
}

/// A work folder for the containers (as root in them, so anyone may write it).
fn work() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let volume = format!("{}:/w", dir.path().display());
    (dir, volume)
}

#[test]
fn make_runs_a_makefile_whose_recipes_use_the_essential_tools() {
    if !have_docker() || !installed("/usr/bin/make", "make") {
        return;
    }
    let mut registry = Registry::start();
    let image = registry.image("make");
    let (dir, volume) = work();
    std::fs::write(dir.path().join("src.txt"), "made by make\n").expect("write");
    std::fs::write(
        dir.path().join("Makefile"),
        "out/a.tgz: src.txt\n\techo building\n\tmkdir -p out\n\tcp src.txt out/copy.txt\n\
         \ttar czf out/a.tgz out/copy.txt\n",
    )
    .expect("Makefile");
    let (out, _) = run(
        &["--network", "none", "-v", &volume, "-w", "/w"],
        "/usr/bin/make",
        &image,
        &[],
    );
    assert!(out.lines().any(|l| l == "building"), "{out}");
    let listed = run_ok(
        Command::new("tar")
            .arg("tzf")
            .arg(dir.path().join("out/a.tgz")),
    );
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "out/copy.txt"
    );
    on_path(&image, "make", "/usr/bin/make");
}

#[test]
fn tar_makes_a_gzipped_archive_that_gzip_checks() {
    if !have_docker() || !installed("/usr/bin/tar", "tar") || !installed("/usr/bin/gzip", "gzip") {
        return;
    }
    let mut registry = Registry::start();
    let (tar, gzip) = (registry.image("tar"), registry.image("gzip"));
    let (dir, volume) = work();
    std::fs::create_dir_all(dir.path().join("d")).expect("mkdir");
    std::fs::write(dir.path().join("d/f"), "x".repeat(10_000)).expect("write");
    let opts = ["--network", "none", "-v", &volume, "-w", "/w"];
    run(&opts, "/usr/bin/tar", &tar, &["czf", "x.tgz", "d"]);
    run(&opts, "/usr/bin/gzip", &gzip, &["-t", "x.tgz"]);
    // And the archive holds what was put in it.
    let listed = run_ok(Command::new("tar").arg("tzf").arg(dir.path().join("x.tgz")));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("d/f"));
    on_path(&tar, "tar", "/usr/bin/tar");
    on_path(&gzip, "gzip", "/usr/bin/gzip");
}

#[test]
fn nginx_serves_a_file_with_its_workers_running_as_www_data() {
    if !have_docker() || !installed("/usr/sbin/nginx", "nginx") {
        return;
    }
    let mut registry = Registry::start();
    let image = registry.image("pkgs/nginx");
    let (dir, volume) = work();
    std::fs::create_dir_all(dir.path().join("www")).expect("mkdir");
    std::fs::write(dir.path().join("www/index.html"), "served by nginx\n").expect("write");
    let port = common::free_port();
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!(
            "user www-data;\npid /tmp/nginx.pid;\nerror_log stderr;\nevents {{}}\n\
             http {{ access_log off; server {{ listen 127.0.0.1:{port}; root /w/www; }} }}\n"
        ),
    )
    .expect("conf");
    let name = format!("quinistry-nginx-{}", std::process::id());
    registry.cleanup.container(&name);
    run_ok(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-v",
        &volume,
        "--entrypoint",
        "/usr/sbin/nginx",
        &image,
        "-c",
        "/w/nginx.conf",
        "-g",
        "daemon off;",
    ]));
    let url = format!("http://127.0.0.1:{port}/index.html");
    let mut body = String::new();
    for _ in 0..100 {
        let out = docker_output(&["exec", &name, "/bin/cat", "/tmp/nginx.pid"]);
        if out.status.success()
            && let Ok(got) = Command::new("curl").args(["-sf", &url]).output()
            && got.status.success()
        {
            body = String::from_utf8_lossy(&got.stdout).into_owned();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let logs = docker_output(&["logs", &name]);
    assert_eq!(
        body,
        "served by nginx\n",
        "nginx: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
    // Its worker runs as www-data (uid 33), which the image's /etc/passwd has.
    let (uids, _) = run_in_container(&name, "grep -h -A8 '^Name:.*nginx' /proc/[0-9]*/status");
    assert!(
        uids.lines().any(|l| l.starts_with("Uid:\t33\t")),
        "no nginx process runs as uid 33:\n{uids}"
    );
    on_path(&image, "nginx", "/usr/sbin/nginx");
}

/// `sh -c SCRIPT` in a running container.
fn run_in_container(name: &str, script: &str) -> (String, String) {
    let out = docker_output(&["exec", name, "/bin/sh", "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A wheel made here, with no network: one module, `qtest`, whose `hello()` says so.
fn wheel(dir: &Path) -> String {
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "qtest/__init__.py": b"def hello():\n    return 'hello from the wheel'\n",
    "qtest-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: qtest\nVersion: 1.0\n",
    "qtest-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for path, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += f"{path},sha256={digest},{len(data)}\n"
record += "qtest-1.0.dist-info/RECORD,,\n"
files["qtest-1.0.dist-info/RECORD"] = record.encode()
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for path, data in files.items():
        z.writestr(path, data)
"#;
    let name = "qtest-1.0-py3-none-any.whl";
    run_ok(
        Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(dir.join(name)),
    );
    name.to_owned()
}

#[test]
fn python_makes_a_venv_and_pip_installs_a_wheel_into_it() {
    if !have_docker()
        || !installed("/usr/bin/python3", "python3")
        || !installed("/usr/lib/python3/dist-packages/pip", "python3-pip")
        || !installed("/usr/bin/python3", "python3-venv")
    {
        return;
    }
    let mut registry = Registry::start();
    let image = registry.image("pkgs/python3-venv/python3-pip");
    // The order of the names does not change the image.
    let same = registry.image("pkgs/python3-pip/python3-venv");
    let id = |i: &str| common::docker(&["image", "inspect", "--format", "{{.Id}}", i]);
    assert_eq!(id(&image), id(&same));
    let (dir, volume) = work();
    let whl = wheel(dir.path());
    let opts = ["--network", "none", "-v", &volume];
    run(&opts, "/usr/bin/python3", &image, &["-m", "venv", "/w/v"]);
    run(
        &opts,
        "/w/v/bin/pip",
        &image,
        &["install", "--no-index", &format!("/w/{whl}")],
    );
    let (out, _) = run(
        &opts,
        "/w/v/bin/python",
        &image,
        &["-c", "import qtest; print(qtest.hello())"],
    );
    assert_eq!(out.trim(), "hello from the wheel");
    on_path(&image, "python3", "/usr/bin/python3");
}

#[test]
fn gcc_compiles_a_program_that_runs() {
    if !have_docker()
        || !installed("/usr/bin/gcc", "gcc")
        || !installed("/usr/bin/gcc", "libc6-dev")
    {
        return;
    }
    let mut registry = Registry::start();
    let image = registry.image("gcc");
    let (dir, volume) = work();
    std::fs::write(
        dir.path().join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello from gcc\"); return 0; }\n",
    )
    .expect("write");
    let opts = ["--network", "none", "-v", &volume, "-w", "/w"];
    run(&opts, "/usr/bin/gcc", &image, &["-o", "hello", "hello.c"]);
    let (out, _) = run(&opts, "/w/hello", &image, &[]);
    assert_eq!(out.trim(), "hello from gcc");
    on_path(&image, "gcc", "/usr/bin/gcc");
}

#[test]
fn java_reached_through_etc_alternatives_runs() {
    if !have_docker() || !installed("/usr/bin/java", "openjdk-17-jre-headless") {
        return;
    }
    let link = std::fs::read_link("/usr/bin/java").expect("/usr/bin/java is a link");
    assert!(link.starts_with("/etc/alternatives"), "{}", link.display());
    let mut registry = Registry::start();
    let image = registry.image("java");
    let (_, out) = run(
        &["--network", "none"],
        "/usr/bin/java",
        &image,
        &["-version"],
    );
    assert!(out.contains("openjdk version"), "{out}");
    // The chain of links is the host's.
    let (target, _) = run(
        &["--network", "none"],
        "/bin/sh",
        &image,
        &["-c", "readlink /usr/bin/java"],
    );
    assert_eq!(target.trim(), link.display().to_string());
    on_path(&image, "java", "/usr/bin/java");
}

#[test]
fn go_reports_its_version_and_builds_a_module() {
    if !have_docker() || !installed("/usr/bin/go", "golang-go") {
        return;
    }
    let mut registry = Registry::start();
    let image = registry.image("go");
    let (out, _) = run(&["--network", "none"], "/usr/bin/go", &image, &["version"]);
    assert!(out.starts_with("go version go1."), "{out}");
    let (dir, volume) = work();
    std::fs::create_dir_all(dir.path().join("hello")).expect("mkdir");
    std::fs::write(dir.path().join("hello/go.mod"), "module hello\n\ngo 1.19\n").expect("go.mod");
    std::fs::write(
        dir.path().join("hello/main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from go\") }\n",
    )
    .expect("main.go");
    let opts = [
        "--network",
        "none",
        "-v",
        &volume,
        "-w",
        "/w/hello",
        "-e",
        "HOME=/tmp",
        "-e",
        "CGO_ENABLED=0",
    ];
    run(
        &opts,
        "/usr/bin/go",
        &image,
        &["build", "-o", "/w/hello-go", "."],
    );
    let (out, _) = run(&opts, "/w/hello-go", &image, &[]);
    assert_eq!(out.trim(), "hello from go");
    on_path(&image, "go", "/usr/bin/go");
}

#[test]
fn psql_through_its_wrapper_reports_its_version() {
    if !have_docker() || !installed("/usr/bin/psql", "postgresql-client-common") {
        return;
    }
    let mut registry = Registry::start();
    let image = registry.image("psql");
    let (out, _) = run(
        &["--network", "none"],
        "/usr/bin/psql",
        &image,
        &["--version"],
    );
    assert!(out.starts_with("psql (PostgreSQL)"), "{out}");
    on_path(&image, "psql", "/usr/bin/psql");
}

/// An unknown package is NAME_UNKNOWN naming it; a file under the root is not shadowed by
/// anything but `pkgs/`.
#[test]
fn a_package_image_of_what_is_not_installed_is_name_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Serving::start(&dir.path().join("store"), dir.path(), &["--packages"]);
    let r = common::raw_request(
        &server.addr,
        "GET",
        "/v2/pkgs/no-such-package-here/manifests/latest",
        &[],
    );
    assert_eq!((r.status, r.error_code()), (404, "NAME_UNKNOWN".to_owned()));
    assert!(
        String::from_utf8_lossy(&r.body).contains("no-such-package-here"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let tags = common::raw_request(
        &server.addr,
        "GET",
        "/v2/pkgs/no-such-package-here/tags/list",
        &[],
    );
    assert_eq!(tags.status, 404);
}

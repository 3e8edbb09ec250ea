//! The quine, run for real under Docker: the self-image pulled from a server, run as a
//! container, serves the very same image (same manifest digest), generation after
//! generation; and packed dynamic executables other than quinistry run with `docker run`.

mod common;

use std::time::{Duration, Instant};

use common::{
    DockerCleanup, Serving, build_greeter, docker, free_port, have_docker, have_tool, pack_in,
    raw_request, report, run_ok,
};

const OCI: &str = "Accept: application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "Accept: application/vnd.docker.distribution.manifest.v2+json";

/// The digests a registry gives for `quinistry:latest` in the OCI and Docker forms.
fn served_digests(addr: &str) -> (String, String) {
    let digest = |accept| {
        let r = raw_request(addr, "HEAD", "/v2/quinistry/manifests/latest", &[accept]);
        assert_eq!(r.status, 200, "HEAD manifest on {addr}");
        r.header("docker-content-digest")
            .expect("Docker-Content-Digest")
            .to_owned()
    };
    (digest(OCI), digest(DOCKER))
}

/// Waits until the registry in container `name` answers on `addr`; fails with its log if
/// the container stops first or it takes more than a minute.
fn wait_for_registry(name: &str, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(addr).is_ok()
            && raw_request(addr, "GET", "/v2/", &[]).status == 200
        {
            return;
        }
        let running = docker(&["inspect", "--format", "{{.State.Running}}", name]);
        if running != "true" || Instant::now() > deadline {
            panic!(
                "container {name} (running={running}) never served on {addr}:\n{}",
                docker_logs(name)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `docker pull`, returning the digest docker reports.
fn pull(image: &str) -> String {
    let out = docker(&["pull", image]);
    out.lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no digest in docker's output:\n{out}"))
        .to_owned()
}

#[test]
fn the_self_image_is_a_fixed_point_across_generations() {
    if !have_docker() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Settings other than the defaults: the image carries them in its Env, so a child run
    // with any command line packs the same way.
    let parent = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &["--level", "1", "--block-size", "256K"],
    );
    let want = (
        parent.report["manifest"].clone(),
        parent.report["docker"].clone(),
    );
    assert_eq!(served_digests(&parent.addr), want);
    let mut cleanup = DockerCleanup::default();

    let mut source = parent.addr.clone();
    for generation in 2..=3 {
        let image = format!("{source}/quinistry:latest");
        cleanup.image(&image);
        let pulled = pull(&image);
        assert!(
            pulled == want.0 || pulled == want.1,
            "generation {generation}: docker pulled {pulled} from {source}, expected one of {want:?}"
        );
        if generation == 2 {
            // What docker made of our config: the self-image's run settings.
            let config = docker(&["image", "inspect", "--format", "{{json .Config}}", &image]);
            let config: serde_json::Value = serde_json::from_str(&config).expect("config json");
            assert_eq!(config["Entrypoint"], serde_json::json!(["/main"]));
            assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
            assert_eq!(config["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
            let env = config["Env"].to_string();
            for var in [
                "PATH=/usr/local/sbin",
                "QUINISTRY_STORE=/var/lib/quinistry",
                "QUINISTRY_LISTEN=0.0.0.0:8080",
                "QUINISTRY_LEVEL=1",
                "QUINISTRY_BLOCK_SIZE=262144",
            ] {
                assert!(env.contains(var), "{var} not in {env}");
            }
            let labels = &config["Labels"];
            assert_eq!(labels["org.opencontainers.image.title"], "quinistry");
            assert_eq!(
                labels["org.opencontainers.image.version"],
                env!("CARGO_PKG_VERSION")
            );
        }

        // The child: the pulled image with only its listen address changed. Generation 2 the
        // README's way (a command line of its own), generation 3 keeps the image's Cmd and
        // moves the address through the environment.
        let addr = format!("127.0.0.1:{}", free_port());
        let name = format!("quinistry-test-gen{generation}-{}", std::process::id());
        cleanup.container(&name);
        let listen_env = format!("QUINISTRY_LISTEN={addr}");
        let mut run = vec!["run", "-d", "--name", &name, "--network", "host"];
        if generation == 2 {
            run.extend([image.as_str(), "serve", "--listen", &addr]);
        } else {
            run.extend(["-e", &listen_env, &image]);
        }
        docker(&run);
        wait_for_registry(&name, &addr);
        let served = served_digests(&addr);
        assert_eq!(
            served,
            want,
            "generation {generation} serves a different image; its log:\n{}",
            docker_logs(&name)
        );
        source = addr;
    }
    // The last child is pulled from too, so every generation's image went through docker.
    let last = format!("{source}/quinistry:latest");
    cleanup.image(&last);
    let pulled = pull(&last);
    assert!(pulled == want.0 || pulled == want.1, "{pulled}");
}

fn docker_logs(name: &str) -> String {
    std::process::Command::new("docker")
        .args(["logs", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
}

#[test]
fn packed_dynamic_executables_run_under_docker() {
    if !have_docker() || !have_tool("cc", "gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let app = build_greeter(&dir.path().join("src"));
    // A system tool, and a program of ours whose library is found through $ORIGIN: packed
    // somewhere else than on the host, the library must follow it.
    let env_out = run_ok(pack_in(&store).args(["--tag", "env:latest", "/usr/bin/env"]));
    assert!(report(&env_out).contains_key("runtime"));
    let spec = format!("{}:/usr/local/bin/greet", app.display());
    let server = Serving::start(&store, dir.path(), &["--name", "greet", &spec]);

    let greet = format!("{}/greet:latest", server.addr);
    let env = format!("{}/env:latest", server.addr);
    let _cleanup = DockerCleanup::images(&[&greet, &env]);
    pull(&greet);
    pull(&env);
    assert_eq!(
        docker(&["run", "--rm", "--network", "none", &greet, "quine"]),
        "hello, quine, from libgreet"
    );
    let printed = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &env,
        "QUINISTRY_TEST=ran",
    ]);
    assert!(
        printed.lines().any(|l| l == "QUINISTRY_TEST=ran"),
        "env printed:\n{printed}"
    );
}

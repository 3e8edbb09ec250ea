//! A shared store for tests: a 3-node Garage cluster (S3), an Azurite (Azure Blob Storage)
//! and PostgreSQL that `.ci/cluster.sh start DIR` started, read from the variables it writes
//! (`QUINISTRY_TEST_S3_ENDPOINTS`, `QUINISTRY_TEST_BUCKET`, `QUINISTRY_TEST_POSTGRES`,
//! `QUINISTRY_TEST_CLUSTER`, `QUINISTRY_TEST_AZURE_CONTAINER`, and the `AWS_*` and
//! `AZURE*` settings); without them a test skips (fails under CI). Each test gets a store of
//! its own: a fresh key prefix and a fresh database.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::{Serving, run_ok, skip};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The cluster `.ci/cluster.sh` started.
pub struct Cluster {
    pub endpoints: Vec<String>,
    pub bucket: String,
    /// A superuser URL: each test makes its own database with it.
    pub postgres: String,
    /// Where node N's config (`garageN.toml`) and pid (`garageN.pid`) are.
    pub dir: PathBuf,
    /// Azurite's container, if one was started.
    pub azure: Option<String>,
}

pub fn cluster() -> Option<Cluster> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        var("QUINISTRY_TEST_S3_ENDPOINTS"),
        var("QUINISTRY_TEST_BUCKET"),
        var("QUINISTRY_TEST_POSTGRES"),
        var("QUINISTRY_TEST_CLUSTER"),
    ) {
        (Some(e), Some(bucket), Some(postgres), Some(dir)) => Some(Cluster {
            endpoints: e.split(',').map(str::to_owned).collect(),
            bucket,
            postgres,
            dir: PathBuf::from(dir),
            azure: var("QUINISTRY_TEST_AZURE_CONTAINER"),
        }),
        _ => {
            skip(
                "no Garage cluster and PostgreSQL: run `.ci/cluster.sh start DIR` and source DIR/env",
            );
            None
        }
    }
}

/// A store of one test's own in the cluster.
pub struct SharedStore {
    pub url: String,
    pub metadata: String,
    pub endpoints: Vec<String>,
}

pub fn random_name() -> String {
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw).expect("random");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cluster {
    /// A store of the test's own: blobs in the Garage cluster.
    pub fn store(&self) -> SharedStore {
        self.store_at(&format!("s3://{}", self.bucket), self.endpoints.clone())
    }

    /// A store of the test's own with its blobs in Azurite; `None` (skip, or fail under CI)
    /// if none was started.
    pub fn azure_store(&self) -> Option<SharedStore> {
        let Some(container) = &self.azure else {
            skip("no Azurite: install it (npm install azurite) and run `.ci/cluster.sh start DIR`");
            return None;
        };
        Some(self.store_at(&format!("az://{container}"), Vec::new()))
    }

    /// A fresh database, and a fresh prefix below `url`.
    fn store_at(&self, url: &str, endpoints: Vec<String>) -> SharedStore {
        let name = format!("t{}", random_name());
        run_ok(Command::new("psql").args([
            &self.postgres,
            "-q",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ]));
        let (base, _) = self
            .postgres
            .rsplit_once('/')
            .expect("a database in the URL");
        SharedStore {
            url: format!("{url}/{name}"),
            metadata: format!("{base}/{name}"),
            endpoints,
        }
    }
}

impl SharedStore {
    /// A connection to this store's metadata database, for a test to read or break rows.
    pub async fn database(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.metadata, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    /// The object storage location, endpoints included, for `Store::open_shared`.
    pub fn location(&self) -> quinistry::store::object::Location {
        let mut location = quinistry::store::object::Location::parse(&self.url)
            .expect("an object storage URL")
            .expect("location");
        location.endpoints = self.endpoints.clone();
        location
    }

    /// A replica serving this store, pushing allowed, with `extra` arguments.
    pub fn replica(&self, dir: &Path, extra: &[&str]) -> Serving {
        let log_dir = dir.join(random_name());
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let mut args: Vec<&str> = vec!["--push", "--metadata", &self.metadata];
        for e in &self.endpoints {
            args.extend(["--s3-endpoint", e]);
        }
        args.extend(extra);
        Serving::start(Path::new(&self.url), &log_dir, &args)
    }
}

pub fn http() -> reqwest::Client {
    super::http_builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes `bytes` into `repo` at `addr` in one POST; its digest.
pub async fn push_blob(addr: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = http()
        .post(format!(
            "http://{addr}/v2/{repo}/blobs/uploads/?digest={digest}"
        ))
        .body(bytes.to_vec())
        .send()
        .await
        .expect("POST");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    digest
}

/// Pushes a config and one layer into `repo` at `addr`, and a manifest naming them under
/// `tag`; the manifest's digest.
pub async fn push_image(addr: &str, repo: &str, tag: &str, layer: &[u8]) -> String {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let c = push_blob(addr, repo, config).await;
    let l = push_blob(addr, repo, layer).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": c, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": l, "size": layer.len()}],
    }))
    .expect("json");
    let r = http()
        .put(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    sha256(&manifest)
}

/// The digest `repo:tag` names at `addr` (HEAD), or the status if it is not 200.
pub async fn tag_digest(addr: &str, repo: &str, tag: &str) -> Result<String, StatusCode> {
    let r = http()
        .head(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("HEAD");
    if r.status() != StatusCode::OK {
        return Err(r.status());
    }
    Ok(r.headers()["docker-content-digest"]
        .to_str()
        .expect("ascii")
        .to_owned())
}

/// A node of the cluster stopped by [`Cluster::kill_node`]; started again when dropped (so
/// a failing test leaves the cluster whole for the next).
pub struct KilledNode {
    dir: PathBuf,
    n: usize,
    restarted: bool,
}

impl Cluster {
    /// SIGKILLs Garage node `n` (1 to 3).
    pub fn kill_node(&self, n: usize) -> KilledNode {
        let pid_file = self.dir.join(format!("garage{n}.pid"));
        let pid = std::fs::read_to_string(&pid_file).expect("node pid");
        run_ok(Command::new("kill").args(["-9", pid.trim()]));
        // Gone for sure before the test goes on. A node an earlier test restarted is a child
        // of this test binary, never reaped: killed, it stays a zombie, which counts as gone.
        let stat = format!("/proc/{}/stat", pid.trim());
        let gone = || match std::fs::read_to_string(&stat) {
            Err(_) => true,
            Ok(s) => {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    == Some("Z")
            }
        };
        while !gone() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        KilledNode {
            dir: self.dir.clone(),
            n,
            restarted: false,
        }
    }
}

impl KilledNode {
    /// Starts the node again (its data is where it was) and waits until it answers.
    pub fn restart(&mut self) {
        if self.restarted {
            return;
        }
        self.restarted = true;
        let config = self.dir.join(format!("garage{}.toml", self.n));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("garage{}.log", self.n)))
            .expect("log");
        let child = Command::new("garage")
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage");
        std::fs::write(
            self.dir.join(format!("garage{}.pid", self.n)),
            child.id().to_string(),
        )
        .expect("pid file");
        // Not waited for: it lives on after this test, as the cluster's node again (the
        // cluster script stops it by its pid file).
        drop(child);
        for _ in 0..100 {
            let ok = Command::new("garage")
                .arg("-c")
                .arg(&config)
                .arg("status")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("garage node {} did not come back", self.n);
    }
}

impl Drop for KilledNode {
    fn drop(&mut self) {
        self.restart();
    }
}

/// PostgreSQL stopped by [`Cluster::stop_postgres`]; started again when dropped.
pub struct StoppedPostgres {
    dir: PathBuf,
    started: bool,
}

/// Runs the cluster's `pg_ctl` with `args` as the owner of its data (postgres, as root).
fn pg_ctl(dir: &Path, args: &str) {
    let pg_ctl = std::env::var("QUINISTRY_TEST_PG_CTL").expect("QUINISTRY_TEST_PG_CTL");
    let data = dir.join("pg");
    let log = dir.join("pg-socket/log");
    let line = format!(
        "{pg_ctl} -D '{}' -l '{}' -w {args}",
        data.display(),
        log.display()
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut c = if root {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", &line]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &line]);
        c
    };
    run_ok(&mut c);
}

impl Cluster {
    /// Stops PostgreSQL at once (`-m immediate`: as if its machine died).
    pub fn stop_postgres(&self) -> StoppedPostgres {
        pg_ctl(&self.dir, "-m immediate stop");
        StoppedPostgres {
            dir: self.dir.clone(),
            started: false,
        }
    }
}

impl StoppedPostgres {
    pub fn start(&mut self) {
        if !self.started {
            self.started = true;
            pg_ctl(&self.dir, "start");
        }
    }
}

impl Drop for StoppedPostgres {
    fn drop(&mut self) {
        self.start();
    }
}

//! The web page (issue 35) in a real headless browser (Debian's `chromium`, its DOM after
//! scripts ran, `--dump-dom`), every request it made read from its own network log; and,
//! request by request, what a user of the access rules is shown.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Serving, pack_in, raw_request, report, run_ok};

/// Packs `input` into `store` as each of `tags` (real images: docker can pull them), each
/// with an env of its own so that no two are the same image.
fn packed(store: &Path, input: &Path, tags: &[&str]) -> Vec<String> {
    tags.iter()
        .map(|tag| {
            let env = format!("IMAGE={tag}");
            let out = run_ok(
                pack_in(store)
                    .args(["--tag", tag, "--env", &env])
                    .arg(input),
            );
            report(&out)["manifest"].clone()
        })
        .collect()
}

/// A headless Chromium of the test's own profile, which may resolve no name (so it sends
/// nothing beyond loopback, its own background requests included) and logs every request.
struct Browser {
    profile: PathBuf,
    netlog: PathBuf,
    visits: usize,
}

impl Browser {
    fn new(dir: &Path) -> Option<Browser> {
        if !common::have_tool("chromium", "chromium") {
            return None;
        }
        Some(Browser {
            profile: dir.join("profile"),
            netlog: dir.join("netlog"),
            visits: 0,
        })
    }

    /// The document at `url` once loaded and its script run.
    fn dom(&mut self, url: &str) -> String {
        self.visits += 1;
        std::fs::create_dir_all(&self.netlog).expect("netlog dir");
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .arg(format!(
                "--log-net-log={}",
                self.netlog.join(format!("{}.json", self.visits)).display()
            ))
            .args(["--dump-dom", url])
            .output()
            .expect("chromium");
        assert!(
            out.status.success(),
            "chromium {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every URL the pages asked for (requests whose initiator is a page, not the browser's
    /// own), over every visit so far.
    fn page_requests(&self) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        for i in 1..=self.visits {
            let text =
                std::fs::read_to_string(self.netlog.join(format!("{i}.json"))).expect("netlog");
            // A log cut short at exit lacks its closing brackets.
            let log: serde_json::Value = serde_json::from_str(&text)
                .or_else(|_| {
                    serde_json::from_str(&format!("{}]}}", text.trim_end().trim_end_matches(',')))
                })
                .expect("netlog json");
            let mut url_of = std::collections::HashMap::new();
            for e in log["events"].as_array().into_iter().flatten() {
                let id = e["source"]["id"].as_u64().unwrap_or(0);
                if let Some(url) = e["params"]["url"].as_str() {
                    url_of.insert(id, url.to_owned());
                }
            }
            for e in log["events"].as_array().into_iter().flatten() {
                let id = e["source"]["id"].as_u64().unwrap_or(0);
                if let Some(initiator) = e["params"]["initiator"].as_str()
                    && initiator != "not an origin"
                    && let Some(url) = url_of.get(&id)
                {
                    seen.push((initiator.to_owned(), url.clone()));
                }
            }
        }
        seen
    }
}

/// The repository list, its search, a repository's tags with the pull command that docker
/// then runs, an image's page, the programs and storage pages, rendered by Chromium; no page
/// asks anything of another origin; the security headers; read-only; `--no-ui` turns it off.
#[test]
fn the_pages_render_in_a_browser_and_ask_nothing_of_another_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let input = dir.path().join("hello");
    std::fs::write(&input, b"hello from the web page's test\n").expect("input");
    let digests = packed(
        &store,
        &input,
        &["team/app:latest", "team/api:v1", "other/db:v2"],
    );
    let server = Serving::start(
        &store,
        dir.path(),
        &["--no-prepack", "--push", input.to_str().expect("utf-8")],
    );
    let addr = server.addr.clone();
    let origin = format!("http://{addr}");

    let head = raw_request(&addr, "GET", "/ui/", &[]);
    assert_eq!(head.status, 200);
    let csp = head
        .header("content-security-policy")
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(head.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(raw_request(&addr, "POST", "/ui/", &[]).status, 405);
    assert_eq!(raw_request(&addr, "GET", "/", &[]).status, 303);

    // One repository pushed through the API by a client, beside the packed ones.
    let mut names = vec!["team/app", "team/api", "other/db"];
    if common::have_tool("skopeo", "skopeo") {
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .arg(format!("docker://{addr}/team/app:latest"))
                .arg(format!("docker://{addr}/pushed/web:v2")),
        );
        names.push("pushed/web");
    }
    let Some(mut browser) = Browser::new(dir.path()) else {
        return;
    };
    let list = browser.dom(&format!("{origin}/ui/"));
    for name in names {
        assert!(
            list.contains(&format!(">{name}</a>")),
            "{name} not listed:\n{list}"
        );
    }
    let found = browser.dom(&format!("{origin}/ui/?q=api"));
    assert!(found.contains(">team/api</a>"), "{found}");
    assert!(
        !found.contains(">team/app</a>") && !found.contains(">other/db</a>"),
        "{found}"
    );

    let repo = browser.dom(&format!("{origin}/ui/repository?name=team/app"));
    let pull = format!("docker pull {addr}/team/app:latest");
    assert!(repo.contains(&pull), "no pull command:\n{repo}");
    assert!(repo.contains("class=\"copy\""), "no copy button");
    let image = browser.dom(&format!(
        "{origin}/ui/image?name=team/app&digest={}",
        digests[0]
    ));
    assert!(
        image.contains(&digests[0]) && image.contains("Layers"),
        "{image}"
    );
    assert!(
        browser
            .dom(&format!("{origin}/ui/programs"))
            .contains("<h1>Programs</h1>")
    );
    assert!(
        browser
            .dom(&format!("{origin}/ui/storage"))
            .contains("<h1>Storage</h1>")
    );
    // The store's blobs are counted at start without --metrics-listen too.
    let mut counted = String::new();
    for _ in 0..100 {
        counted = browser.dom(&format!("{origin}/ui/storage"));
        if !counted.contains("counting") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!counted.contains("counting"), "{counted}");
    // The estimate of the next collection: a dry run, which removes nothing.
    let blobs = common::files(&store.join("blobs/sha256")).len();
    let estimate = browser.dom(&format!("{origin}/ui/storage?estimate=1"));
    assert!(estimate.contains("would remove"), "{estimate}");
    assert_eq!(common::files(&store.join("blobs/sha256")).len(), blobs);
    let missing = browser.dom(&format!("{origin}/ui/repository?name=no/such"));
    assert!(missing.contains("Not found"), "{missing}");

    // What the pages asked for: their own stylesheet and script, from their own origin.
    let requests = browser.page_requests();
    assert!(
        requests
            .iter()
            .any(|(_, u)| u.ends_with("/ui/static/app.css")),
        "the stylesheet was never asked for: {requests:?}"
    );
    for (initiator, url) in &requests {
        assert_eq!(initiator, &origin, "{url}");
        assert!(
            url.starts_with(&format!("{origin}/")),
            "a page asked another origin: {url}"
        );
    }

    // The pull command, as shown, pulls the image.
    if common::have_docker() {
        let image = format!("{addr}/team/app:latest");
        let _cleanup = common::DockerCleanup::images(&[&image]);
        let args: Vec<&str> = pull.split(' ').skip(1).collect();
        common::docker(&args);
        let id = common::docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
        assert!(id.starts_with("sha256:"), "{id}");
    }
    drop(server);

    let off = Serving::start(
        &store,
        dir.path(),
        &["--no-prepack", "--no-ui", input.to_str().expect("utf-8")],
    );
    assert_eq!(raw_request(&off.addr, "GET", "/ui/", &[]).status, 404);
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}")
}

/// A user who may read `a/*` only never sees `b/...`: not in the list, not in a search, not
/// by its repository or image URL (the same 404 as a name that does not exist), not on the
/// programs or storage pages, not in the assets; the login prompt asks the browser for
/// credentials, and wrong ones are asked again.
#[test]
fn a_user_who_may_read_a_never_sees_b() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let input = dir.path().join("hello");
    std::fs::write(&input, b"hello from the rules' test\n").expect("input");
    let digests = packed(&store, &input, &["a/x:v1", "b/secret:v1"]);
    let users = dir.path().join("htpasswd");
    let hash = bcrypt::hash("secret", 4).expect("hash");
    std::fs::write(&users, format!("alice:{hash}\nbob:{hash}\n")).expect("htpasswd");
    let config = dir.path().join("q.toml");
    std::fs::write(
        &config,
        format!(
            "[access]\nhtpasswd = {users:?}\n\n[access.users.alice]\nread = [\"a/*\"]\n\n\
             [access.users.bob]\nread = [\"*\"]\n"
        ),
    )
    .expect("config");
    let server = Serving::start(
        &store,
        dir.path(),
        &[
            "--no-prepack",
            "--config",
            config.to_str().expect("utf-8"),
            input.to_str().expect("utf-8"),
        ],
    );
    let addr = server.addr.as_str();
    let (alice, bob) = (basic("alice", "secret"), basic("bob", "secret"));

    let login = raw_request(addr, "GET", "/ui/login", &[]);
    assert_eq!(login.status, 401);
    assert!(
        login
            .header("www-authenticate")
            .unwrap_or_default()
            .starts_with("Basic")
    );
    assert_eq!(
        raw_request(addr, "GET", "/ui/", &[&basic("alice", "wrong")]).status,
        401
    );
    assert_eq!(raw_request(addr, "GET", "/ui/login", &[&alice]).status, 303);

    let pages = [
        "/ui/".to_owned(),
        "/ui/?q=secret".to_owned(),
        "/ui/?q=b".to_owned(),
        "/ui/repository?name=b/secret".to_owned(),
        format!("/ui/image?name=b/secret&digest={}", digests[1]),
        format!("/ui/image?name=a/x&digest={}", digests[1]),
        "/ui/programs".to_owned(),
        "/ui/storage".to_owned(),
        "/ui/static/app.css".to_owned(),
        "/ui/static/app.js".to_owned(),
    ];
    for page in &pages {
        let r = raw_request(addr, "GET", page, &[&alice]);
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("b/secret"),
            "{page} shows b/secret to alice:\n{body}"
        );
        assert!(
            !body.contains(&digests[1]),
            "{page} shows b's digest to alice"
        );
    }
    let hidden = raw_request(addr, "GET", "/ui/repository?name=b/secret", &[&alice]);
    let absent = raw_request(addr, "GET", "/ui/repository?name=b/none", &[&alice]);
    assert_eq!((hidden.status, absent.status), (404, 404));
    assert_eq!(
        hidden.body, absent.body,
        "a hidden repository answers as a missing one"
    );

    let mine = raw_request(addr, "GET", "/ui/", &[&alice]);
    let text = String::from_utf8_lossy(&mine.body);
    assert!(
        text.contains(">a/x</a>") && text.contains("Logged in as <strong>alice</strong>"),
        "{text}"
    );
    let theirs = raw_request(addr, "GET", "/ui/", &[&bob]);
    let text = String::from_utf8_lossy(&theirs.body);
    assert!(
        text.contains(">a/x</a>") && text.contains(">b/secret</a>"),
        "{text}"
    );
    let image = raw_request(
        addr,
        "GET",
        &format!("/ui/image?name=b/secret&digest={}", digests[1]),
        &[&bob],
    );
    assert_eq!(image.status, 200);
    // Anonymous: the rules give nothing to read, so nothing is listed.
    let anonymous = raw_request(addr, "GET", "/ui/", &[]);
    let text = String::from_utf8_lossy(&anonymous.body);
    assert!(
        !text.contains(">a/x</a>") && text.contains("/ui/login"),
        "{text}"
    );
}

//! The operator's surface against a real Prosody and the real binary: the metrics endpoint
//! scraped over HTTP while messages flow, a clean stop on SIGTERM, and `readtrack check` with
//! each fault it reports.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::daemon::{binary, Readtrack, ReadtrackOpts};
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

fn has_id(s: &str, id: &str) -> bool {
    attr(s, "id").as_deref() == Some(id)
}

fn is_server_ack(s: &str, id: &str) -> bool {
    has_id(s, id) && attr(s, "type").as_deref() == Some("crs") && s.contains("10013")
}

// ---- metrics ----

struct Scraped {
    status: u16,
    content_type: String,
    body: String,
}

async fn get(addr: &str, method: &str, path: &str) -> Scraped {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Scraped {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
    }
}

/// The samples of an OpenMetrics text, checked against its own metadata as the format requires:
/// `# EOF` once and last, every sample of a declared family with the suffix its type allows,
/// histogram buckets cumulative up to `+Inf` = `_count`. Keys are `name{labels}`.
fn parse_openmetrics(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no final # EOF:\n{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (
                parts.next().unwrap(),
                parts.next().expect("metadata names its family"),
                parts.next().unwrap_or(""),
            );
            match kind {
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram"].contains(&value),
                        "type {value} of {name}"
                    );
                    assert!(
                        types.insert(name.to_string(), value.to_string()).is_none(),
                        "{name} declared twice"
                    );
                }
                "HELP" => assert!(!value.is_empty(), "empty help of {name}"),
                "UNIT" => assert!(
                    name.ends_with(&format!("_{value}")),
                    "{name} does not end in its unit {value}"
                ),
                other => panic!("unknown metadata {other}: {line}"),
            }
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample has a value");
        let name = key.split('{').next().unwrap();
        let family = types
            .iter()
            .find(|(family, kind)| {
                let suffixes: &[&str] = match kind.as_str() {
                    "counter" => &["_total"],
                    "gauge" => &[""],
                    _ => &["_bucket", "_sum", "_count"],
                };
                suffixes
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family.as_str()))
            })
            .map(|(family, _)| family.clone());
        assert!(family.is_some(), "sample {name} of no declared family");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        assert!(
            samples.insert(key.to_string(), value).is_none(),
            "{key} twice"
        );
    }
    for (family, kind) in &types {
        if kind == "histogram" {
            let mut buckets: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|(k, v)| {
                    let le = k.strip_prefix(&format!("{family}_bucket{{le=\""))?;
                    let le = le.strip_suffix("\"}")?;
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    Some((bound, *v))
                })
                .collect();
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(buckets.len() > 1, "{family} has no buckets");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} buckets not cumulative: {buckets:?}"
            );
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{family} lacks +Inf");
            assert_eq!(Some(&last.1), samples.get(&format!("{family}_count")));
        }
    }
    samples
}

fn stats_json(rt: &Readtrack) -> Value {
    let out = rt.cli(&["stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_what_stats_shows_and_histograms_of_the_traffic() {
    let p = server_with(&["alice", "bob"]);
    let rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            extra: "[metrics]\nlisten = \"127.0.0.1:0\"\n".into(),
            ..ReadtrackOpts::default()
        },
    );
    let addr = rt.metrics_addr();
    // bob's phone is known, then offline: alice's three messages are logged and acked to her,
    // then replayed to the phone at its next login, which receipts them.
    let mut phone = online(&p, "bob", "phone").await;
    phone.close().await;
    let mut alice = online(&p, "alice", "Spark").await;
    for i in 1..=3 {
        let id = format!("m{i}");
        alice.send_raw(&chat(&id, "bob@localhost", "hi")).await;
        alice.expect_message(WAIT, |s| is_server_ack(s, &id)).await;
    }
    let mut phone = online(&p, "bob", "phone").await;
    for i in 1..=3 {
        let id = format!("m{i}");
        phone.expect_message(WAIT, |s| has_id(s, &id)).await;
        phone.send_raw(&crs_receipt(&id)).await;
    }
    phone.sync().await;
    rt.wait_acked("bob@localhost", "phone", 3);

    let stats = stats_json(&rt);
    assert_eq!(stats["receipts_accepted"], 3, "{stats}");
    assert_eq!(stats["replays"], 3, "{stats}");
    let scraped = get(&addr, "GET", "/metrics").await;
    assert_eq!(scraped.status, 200, "{}", scraped.body);
    assert_eq!(
        scraped.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    for line in [
        "# TYPE readtrack_messages_logged counter",
        "# TYPE readtrack_store_size_bytes gauge",
        "# TYPE readtrack_ack_latency_seconds histogram",
        "# TYPE readtrack_commit_duration_seconds histogram",
        "# TYPE readtrack_replay_duration_seconds histogram",
    ] {
        assert!(
            scraped.body.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            scraped.body
        );
    }
    let m = parse_openmetrics(&scraped.body);
    let metric = |key: &str| {
        *m.get(key)
            .unwrap_or_else(|| panic!("no {key} in\n{}", scraped.body))
    };
    // Every figure of `stats` under its metric name.
    for (field, key) in [
        ("logged", "readtrack_messages_logged_total"),
        ("replays", "readtrack_messages_replayed_total"),
        ("bounces", "readtrack_bounces_total"),
        (
            "receipts_accepted",
            "readtrack_receipts_total{outcome=\"accepted\"}",
        ),
        (
            "receipts_duplicate",
            "readtrack_receipts_total{outcome=\"duplicate\"}",
        ),
        (
            "receipts_rejected",
            "readtrack_receipts_total{outcome=\"rejected\"}",
        ),
        ("messages_deleted", "readtrack_messages_deleted_total"),
        ("devices_expired", "readtrack_devices_expired_total"),
        ("replays_truncated", "readtrack_replays_truncated_total"),
        ("timers_refused", "readtrack_receipt_timers_refused_total"),
        ("users", "readtrack_users"),
        ("devices", "readtrack_devices"),
        ("messages", "readtrack_messages"),
        ("pending_timers", "readtrack_receipt_timers_pending"),
    ] {
        assert_eq!(
            metric(key),
            stats[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field}: {stats}")) as f64,
            "{key} against stats {field}"
        );
    }
    assert!(metric("readtrack_store_size_bytes") > 0.0);
    assert!(metric("readtrack_messages_logged_total") >= 3.0);
    assert_eq!(metric("readtrack_component_connected"), 1.0);
    assert!(metric("readtrack_events_total") >= 6.0);
    // One ack per message, one replay (the phone's login); every commit is timed.
    assert_eq!(metric("readtrack_ack_latency_seconds_count"), 3.0);
    assert!(metric("readtrack_ack_latency_seconds_sum") > 0.0);
    assert_eq!(metric("readtrack_replay_duration_seconds_count"), 1.0);
    assert!(metric("readtrack_commit_duration_seconds_count") >= 3.0);
    assert_eq!(
        metric("readtrack_commit_duration_seconds_count"),
        metric("readtrack_commits_total")
    );

    let missing = get(&addr, "GET", "/").await;
    assert_eq!(missing.status, 404);
    let post = get(&addr, "POST", "/metrics").await;
    assert_eq!(post.status, 405);
}

#[test]
fn serve_refuses_a_remote_metrics_address_without_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("readtrack.toml");
    std::fs::write(
        &config,
        "[xmpp]\nsecret = \"x\"\n\n[metrics]\nlisten = \"0.0.0.0:9464\"\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[metrics] listen: 0.0.0.0:9464 is not a loopback address"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("readtrack-data").exists(),
        "no store created"
    );
}

// ---- SIGTERM ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_store_and_exits_zero() {
    let mut p = server_with(&["alice", "bob"]);
    let mut rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            timeout: "60s",
            ..ReadtrackOpts::default()
        },
    );
    let mut phone = online(&p, "bob", "phone").await;
    phone.close().await;
    let mut alice = online(&p, "alice", "Spark").await;
    alice
        .send_raw(&chat("t1", "bob@localhost", "before the stop"))
        .await;
    alice.expect_message(WAIT, |s| is_server_ack(s, "t1")).await;

    let status = rt.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let log = rt.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("store flushed"), "{log}");
    assert!(!rt.socket_path().exists(), "the admin socket is removed");
    // The stopped store (the CLI opens it directly) has the message, unread by the phone, and
    // its lock was released.
    let stats = stats_json(&rt);
    assert_eq!(stats["service_running"], false, "{stats}");
    assert!(stats["logged"].as_u64().unwrap() >= 1, "{stats}");
    let cursors = rt.cursors("bob@localhost");
    assert_eq!(cursors["head"], 1, "{cursors}");
    assert_eq!(cursors["devices"][0]["unread"], 1, "{cursors}");

    // Stopped while the server is away (reconnecting with backoff): still a clean, prompt exit.
    rt.start_again();
    p.stop();
    let status = rt.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

// ---- check ----

/// A config for `readtrack check` in a fresh folder.
struct CheckConfig {
    dir: tempfile::TempDir,
}

impl CheckConfig {
    fn new(port: u16, secret: &str) -> CheckConfig {
        let dir = tempfile::tempdir().unwrap();
        let c = CheckConfig { dir };
        c.write(&format!(
            "[xmpp]\ndomain = \"{DOMAIN}\"\ncomponent = \"{COMPONENT}\"\nconnect = \"127.0.0.1:{port}\"\nsecret = \"{secret}\"\n\n\
             [store]\npath = \"data\"\n\n[admin]\nsocket = \"readtrack.sock\"\n"
        ));
        c
    }

    fn write(&self, text: &str) {
        std::fs::write(self.path(), text).unwrap();
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("readtrack.toml")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn run_check(config: &Path, json: bool) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(["check", "--config"]).arg(config);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("run readtrack check")
}

/// The check's lines by name (`config`, `store`, ...): `(ok, detail)`; asserts the exit status
/// agrees with them and the `--json` form says the same.
fn check(config: &Path) -> HashMap<String, (bool, String)> {
    let out = run_check(config, false);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = HashMap::new();
    let mut order = Vec::new();
    for line in text.lines() {
        let (verdict, rest) = line.split_once("  ").expect("verdict, two spaces");
        let (name, detail) = rest.trim_start().split_once(": ").expect("name: detail");
        assert!(verdict == "OK" || verdict == "FAIL", "{line}");
        order.push(name.to_string());
        lines.insert(name.to_string(), (verdict == "OK", detail.to_string()));
    }
    // A PostgreSQL store adds its schema's line after the server's.
    let postgres =
        std::fs::read_to_string(config).is_ok_and(|c| c.contains("backend = \"postgres\""));
    let want: &[&str] = if postgres {
        &["config", "store", "schema", "socket", "component"]
    } else {
        &["config", "store", "socket", "component"]
    };
    assert_eq!(order, want, "{text}");
    let all_ok = lines.values().all(|(ok, _)| *ok);
    assert_eq!(
        out.status.code(),
        Some(if all_ok { 0 } else { 1 }),
        "{text}"
    );
    let json = run_check(config, true);
    assert_eq!(json.status.code(), out.status.code());
    let report: Value = serde_json::from_slice(&json.stdout).expect("check --json is JSON");
    assert_eq!(report["ok"], all_ok, "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), want.len(), "{report}");
    for c in checks {
        let (ok, detail) = &lines[c["check"].as_str().unwrap()];
        assert_eq!(&c["ok"], ok, "{report}");
        assert_eq!(&c["detail"], detail.as_str(), "{report}");
    }
    lines
}

fn assert_ok(lines: &HashMap<String, (bool, String)>, name: &str, detail: &str) {
    let (ok, got) = &lines[name];
    assert!(
        *ok && got.contains(detail),
        "{name}: want OK with {detail:?}, got {lines:?}"
    );
}

fn assert_fail(lines: &HashMap<String, (bool, String)>, name: &str, detail: &str) {
    let (ok, got) = &lines[name];
    assert!(
        !*ok && got.contains(detail),
        "{name}: want FAIL with {detail:?}, got {lines:?}"
    );
}

#[test]
fn check_passes_on_a_fresh_install_beside_prosody() {
    let p = Prosody::start(ProsodyOpts::default());
    let c = CheckConfig::new(p.component_port, SECRET);
    let lines = check(&c.path());
    assert_ok(
        &lines,
        "config",
        "domain localhost, component readtrack.localhost",
    );
    assert_ok(&lines, "store", "none yet; serve creates it");
    assert_ok(&lines, "socket", "serve can create it");
    assert_ok(
        &lines,
        "component",
        "accepted the handshake of readtrack.localhost",
    );
    assert!(!c.file("data").exists(), "check created the store");
    // The probe closed its stream politely: Prosody saw the component come and go, and the
    // component can connect again at once.
    let again = check(&c.path());
    assert_ok(&again, "component", "accepted the handshake");
}

#[test]
fn check_fails_on_a_wrong_secret() {
    let p = Prosody::start(ProsodyOpts::default());
    let c = CheckConfig::new(p.component_port, "not-the-secret");
    let lines = check(&c.path());
    assert_ok(&lines, "config", "");
    assert_fail(
        &lines,
        "component",
        &format!(
            "the server at 127.0.0.1:{} refused the secret for component readtrack.localhost",
            p.component_port
        ),
    );
}

#[test]
fn check_fails_when_nothing_listens_on_the_component_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = CheckConfig::new(port, SECRET);
    let lines = check(&c.path());
    assert_fail(
        &lines,
        "component",
        &format!("could not connect to the server at 127.0.0.1:{port}"),
    );
    assert_ok(&lines, "store", "");
}

#[test]
fn check_fails_on_a_bad_config_and_checks_nothing_else() {
    let c = CheckConfig::new(1, SECRET);
    c.write("[xmpp]\ndomain = \"localhost\"\nsecrett = \"x\"\n");
    let lines = check(&c.path());
    assert_fail(&lines, "config", "line 3: unknown field `secrett`");
    for name in ["store", "socket", "component"] {
        assert_fail(&lines, name, "not checked: the config is invalid");
    }
    c.write("[xmpp]\ndomain = \"localhost\"\n");
    let lines = Command::new(binary())
        .args(["check", "--config"])
        .arg(c.path())
        .env_remove("READTRACK_SECRET")
        .output()
        .unwrap();
    let text = String::from_utf8(lines.stdout).unwrap();
    assert!(text.contains("FAIL  config: no component secret"), "{text}");
    assert!(
        text.contains("FAIL  component: not checked: no component secret"),
        "{text}"
    );
    assert_eq!(lines.status.code(), Some(1));
}

#[test]
fn check_fails_when_a_regular_file_blocks_the_socket_path_and_serve_leaves_it() {
    let p = Prosody::start(ProsodyOpts::default());
    let c = CheckConfig::new(p.component_port, SECRET);
    std::fs::write(c.file("readtrack.sock"), "precious").unwrap();
    let lines = check(&c.path());
    assert_fail(
        &lines,
        "socket",
        "a regular file is in the way, not a socket; move it or set [admin] socket",
    );
    // serve refuses it too, rather than deleting what is there.
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(c.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("exists and is not a socket; refusing to remove it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(c.file("readtrack.sock")).unwrap(),
        "precious"
    );
}

#[test]
fn check_reports_a_store_locked_by_a_process_without_a_socket() {
    let c = CheckConfig::new(1, SECRET);
    // This test process holds the store's lock; no service answers on the socket.
    let store = readtrack::store::Store::open(c.file("data"), &Default::default()).unwrap();
    let lines = check(&c.path());
    assert_fail(
        &lines,
        "store",
        "in use by another process, and no service answers on the admin socket",
    );
    drop(store);
    // Let go (sled releases its lock shortly after the last handle): now a current store.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = check(&c.path());
        if lines["store"].0 {
            let current = format!("schema {}, not in use", readtrack::store::SCHEMA_VERSION);
            assert_ok(&lines, "store", &current);
            break;
        }
        assert!(Instant::now() < deadline, "{lines:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn check_refuses_a_store_of_an_unknown_schema() {
    let c = CheckConfig::new(1, SECRET);
    {
        let db = sled::open(c.file("data")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = check(&c.path());
        if !lines["store"].1.contains("in use") || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let refused = format!(
        "has schema version 99, this readtrack reads version {}",
        readtrack::store::SCHEMA_VERSION
    );
    assert_fail(&lines, "store", &refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_beside_a_running_service_reports_it_in_use_and_does_not_probe() {
    let p = server_with(&["alice", "bob"]);
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    let lines = tokio::task::block_in_place(|| check(&rt.config_path()));
    if matches!(rt.location(), readtrack::store::Location::Postgres(_)) {
        // The database answers; its schema line names the service that holds the store.
        assert_ok(&lines, "store", "answers");
        assert_ok(&lines, "schema", "in use by the running service");
    } else {
        assert_ok(&lines, "store", "in use by the running service (0 messages");
    }
    assert_ok(&lines, "socket", "the running service answers");
    assert_ok(
        &lines,
        "component",
        "not probed: the running service holds the connection",
    );
    // The service's own connection is untouched: a message still gets its ack.
    let mut alice = online(&p, "alice", "Spark").await;
    alice
        .send_raw(&chat("c1", "bob@localhost", "still there"))
        .await;
    alice.expect_message(WAIT, |s| is_server_ack(s, "c1")).await;
}

// ---- packaging ----

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// `Key=value` settings of the unit, in order (a key may repeat).
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=value: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    let values: Vec<_> = settings.iter().filter(|(k, _)| k == key).collect();
    assert_eq!(values.len(), 1, "{key} set {} times", values.len());
    &values[0].1
}

/// Where the package puts `source` (from Cargo.toml's `[package.metadata.deb] assets`), as an
/// absolute path.
fn installed_path(source: &str) -> String {
    let manifest: toml::Value = toml::from_str(&repo_file("Cargo.toml")).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("deb assets");
    let asset = assets
        .iter()
        .find(|a| a[0].as_str() == Some(source))
        .unwrap_or_else(|| panic!("the package does not install {source}"));
    let target = asset[1].as_str().unwrap();
    let file = Path::new(source).file_name().unwrap().to_str().unwrap();
    if target.ends_with('/') {
        format!("/{target}{file}")
    } else {
        format!("/{target}")
    }
}

#[test]
fn the_unit_names_the_paths_the_package_installs() {
    let settings = unit_settings(&repo_file("contrib/systemd/readtrack.service"));
    let binary = installed_path("target/release/readtrack");
    let config = installed_path("contrib/debian/readtrack.toml");
    assert_eq!(binary, "/usr/bin/readtrack");
    assert_eq!(config, "/etc/readtrack/readtrack.toml");
    assert_eq!(
        setting(&settings, "ExecStart"),
        format!("{binary} serve --config {config}")
    );
    assert_eq!(setting(&settings, "User"), "readtrack");
    // The packaged config keeps the store and the socket where the unit gives write access.
    let state = format!("/var/lib/{}/", setting(&settings, "StateDirectory"));
    let runtime = format!("/run/{}/", setting(&settings, "RuntimeDirectory"));
    let packaged = readtrack::config::Config::parse(
        &repo_file("contrib/debian/readtrack.toml"),
        Path::new(&config),
    )
    .expect("the packaged config is valid");
    assert!(
        packaged.store_path().starts_with(&state),
        "{}",
        packaged.store_path().display()
    );
    assert!(
        packaged.socket_path().starts_with(&runtime),
        "{}",
        packaged.socket_path().display()
    );
    // The socket's folder exists from boot (tmpfiles.d), so `check` finds it before a start.
    assert_eq!(
        installed_path("contrib/debian/readtrack.tmpfiles"),
        "/usr/lib/tmpfiles.d/readtrack.conf"
    );
    let folder = format!(
        "d {} 0700 readtrack readtrack",
        runtime.trim_end_matches('/')
    );
    assert!(
        repo_file("contrib/debian/readtrack.tmpfiles")
            .lines()
            .any(|l| l.starts_with(&folder)),
        "no {folder:?} in the tmpfiles.d entry"
    );
    assert_eq!(setting(&settings, "RuntimeDirectoryPreserve"), "yes");
    // The postinst creates the unit's user and the secret file the config names.
    let postinst = repo_file("contrib/debian/postinst");
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    let secret = packaged.xmpp.secret_file.expect("secret_file");
    assert!(
        postinst.contains(&format!("> {}", secret.display())),
        "{postinst}"
    );
    assert!(
        postinst.contains("#DEBHELPER#")
            && repo_file("contrib/debian/postrm").contains("#DEBHELPER#")
    );
    // The module where the docs tell Prosody's plugin_paths to look.
    let module = installed_path("contrib/prosody/mod_readtrack.lua");
    assert_eq!(module, "/usr/share/readtrack/prosody/mod_readtrack.lua");
    for doc in ["README.md", "docs/operations.md"] {
        assert!(
            repo_file(doc).contains("plugin_paths = { \"/usr/share/readtrack/prosody\" }"),
            "{doc} does not say where the module is"
        );
    }
}

fn systemd_analyze() -> PathBuf {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("systemd-analyze"))
        .find(|p| p.is_file());
    found.expect("`systemd-analyze` not found on PATH: apt-get install -y systemd")
}

#[test]
fn systemd_accepts_the_unit_and_rates_its_sandbox_ok() {
    let analyze = systemd_analyze();
    let dir = tempfile::tempdir().unwrap();
    // `verify` wants the ExecStart binary to exist: this build's stands in for /usr/bin's.
    let unit = repo_file("contrib/systemd/readtrack.service")
        .replace("/usr/bin/readtrack", binary().to_str().unwrap());
    let path = dir.path().join("readtrack.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The sandbox, rated offline from the unit file: "OK" is an exposure of 2.0 or less.
    let root = dir.path().join("root");
    let units = root.join("lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/readtrack.service"),
        units.join("readtrack.service"),
    )
    .unwrap();
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg("readtrack.service")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("Overall exposure level for readtrack.service"),
        "{report}"
    );
}

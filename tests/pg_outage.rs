//! PostgreSQL going away under a running `readtrack serve` (issue 16): a restart in the middle
//! of a message flow, and an outage longer than one retry. The same readtrack process must
//! carry on when the database is back (the supervisor is not part of the answer), ack nothing
//! while it cannot commit, and log every acked message exactly once.
//!
//! Real parts: Prosody on loopback, the real binary, and the cluster of `scripts/postgres` named
//! by `READTRACK_TEST_PG_URL` (tests/common/backend.rs), which these tests restart and stop.
//! They need it on either backend pass and fail saying so without it. The tests of this file
//! run one at a time: each takes the whole cluster down.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::daemon::{Readtrack, ReadtrackOpts};
use common::*;
use readtrack::store::Location;

/// The cluster is shared by this file's tests: one outage at a time.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HINT: &str = "these tests need READTRACK_TEST_PG_URL, the admin URL of the cluster of \
    scripts/postgres: eval \"$(scripts/postgres start)\" (Debian's postgresql package: \
    apt-get install -y postgresql)";

fn admin_url() -> String {
    std::env::var("READTRACK_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("{HINT}"))
}

/// The loopback port of the cluster: it tells `scripts/postgres` which cluster to act on.
fn cluster_port() -> u16 {
    let url = admin_url();
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("READTRACK_TEST_PG_URL={url:?} names no port. {HINT}"))
}

/// `scripts/postgres restart|pause|resume` on the test cluster.
fn cluster(action: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres");
    let out = std::process::Command::new(&script)
        .arg(action)
        .env("READTRACK_PG_PORT", cluster_port().to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/postgres {action} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// When the server last started: a restart changes it.
fn started_at() -> String {
    let url = admin_url();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect(HINT);
        c.query_one("SELECT pg_postmaster_start_time()::text", &[])
            .unwrap()
            .get(0)
    })
    .join()
    .unwrap()
}

fn is_server_ack(s: &str) -> Option<String> {
    (attr(s, "type").as_deref() == Some("crs")
        && attr(s, "from").as_deref() == Some("localhost")
        && s.contains("10013"))
    .then(|| attr(s, "id"))
    .flatten()
}

/// readtrack on a fresh database of the test cluster, with a receipt timeout no test reaches.
fn readtrack(p: &Prosody) -> Readtrack {
    let location = Location::Postgres(common::backend::fresh_database());
    Readtrack::start(
        p,
        ReadtrackOpts {
            timeout: "120s",
            store: Some(location),
            ..ReadtrackOpts::default()
        },
    )
}

/// Reads `client` until every id of `want` was seen in a stanza `pick` accepts, or `wait` ends.
async fn collect(
    client: &mut Client,
    want: &BTreeSet<String>,
    wait: Duration,
    pick: impl Fn(&str) -> Option<String>,
) -> BTreeSet<String> {
    let deadline = Instant::now() + wait;
    let mut seen = BTreeSet::new();
    while !want.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match client.next_stanza(left).await {
            Some(s) => seen.extend(pick(&s)),
            None => break,
        }
    }
    seen
}

/// The head of `user`'s log, once readtrack has logged `want` messages (or what it has after
/// the wait).
fn head_once(rt: &Readtrack, user: &str, want: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let head = rt.cursors(user)["head"].as_u64().unwrap_or(0);
        if head >= want || Instant::now() > deadline {
            return head;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pg_ctl restart -m fast` while alice sends to bob: readtrack's connections are cut in the
/// middle of the flow. The same process acks every message, bob gets every one, and the log
/// holds each once (no message lost with the cut connection, none logged twice by a commit
/// that ran again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_process_carries_on_through_a_postgresql_restart_and_logs_every_acked_message_once(
) {
    let _one = CLUSTER.lock().await;
    let p = server_with(&["alice", "bob"]);
    let mut rt = readtrack(&p);
    let pid = rt.pid().expect("running");
    let mut bob = online(&p, "bob", "phone").await;
    let mut alice = online(&p, "alice", "Spark").await;
    let before = started_at();

    const MESSAGES: usize = 60;
    let ids: BTreeSet<String> = (0..MESSAGES).map(|i| format!("r{i:02}")).collect();
    let mut restart = None;
    for (i, id) in ids.iter().enumerate() {
        if i == MESSAGES / 3 {
            restart = Some(std::thread::spawn(|| cluster("restart")));
        }
        alice
            .send_raw(&chat(
                id,
                "bob@localhost",
                &format!("through a restart {id}"),
            ))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restart.expect("restarted").join().unwrap();
    assert_ne!(started_at(), before, "PostgreSQL was restarted");

    let acked = collect(&mut alice, &ids, Duration::from_secs(30), is_server_ack).await;
    assert_eq!(acked, ids, "every message was acked");
    let delivered = collect(&mut bob, &ids, WAIT, |s| attr(s, "id")).await;
    assert!(ids.is_subset(&delivered), "bob got every acked message");
    assert_eq!(rt.exited(), None, "readtrack is still running");
    assert_eq!(rt.pid(), Some(pid), "the same process");
    assert_eq!(
        head_once(&rt, "bob@localhost", MESSAGES as u64),
        MESSAGES as u64,
        "each message logged once"
    );
    common::backend::drop_location(rt.location());
}

/// PostgreSQL stops for longer than one retry (several seconds). While it is away nothing is
/// acked and readtrack logs each failed attempt with its cause; when it is back the same
/// process commits what it kept, acks it, and bob gets every message, each logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_one_retry_acks_nothing_until_the_database_is_back() {
    let _one = CLUSTER.lock().await;
    let p = server_with(&["alice", "bob"]);
    let mut rt = readtrack(&p);
    let pid = rt.pid().expect("running");
    let mut bob = online(&p, "bob", "phone").await;
    let mut alice = online(&p, "alice", "Spark").await;
    alice
        .send_raw(&chat("o-first", "bob@localhost", "before"))
        .await;
    let first = BTreeSet::from(["o-first".to_string()]);
    assert_eq!(
        collect(&mut alice, &first, WAIT, is_server_ack).await,
        first
    );

    cluster("pause");
    let down = Instant::now();
    let ids: BTreeSet<String> = (0..10).map(|i| format!("o{i}")).collect();
    for id in &ids {
        alice
            .send_raw(&chat(
                id,
                "bob@localhost",
                &format!("during the outage {id}"),
            ))
            .await;
    }
    let early = collect(&mut alice, &ids, Duration::from_secs(4), is_server_ack).await;
    assert!(
        early.is_empty(),
        "acked while the database was away: {early:?}"
    );
    cluster("resume");
    let outage = down.elapsed();
    assert!(outage > Duration::from_secs(4), "{outage:?}");

    let acked = collect(&mut alice, &ids, Duration::from_secs(20), is_server_ack).await;
    assert_eq!(
        acked, ids,
        "every message was acked once the database was back"
    );
    let delivered = collect(&mut bob, &ids, WAIT, |s| attr(s, "id")).await;
    assert!(ids.is_subset(&delivered), "bob got every acked message");
    assert_eq!(rt.exited(), None, "readtrack is still running");
    assert_eq!(rt.pid(), Some(pid), "the same process");
    assert_eq!(head_once(&rt, "bob@localhost", 11), 11, "each logged once");

    let log = rt.log();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the database is unreachable; nothing is acked until it answers"))
        .collect();
    assert!(
        failures.len() >= 3,
        "one warning per failed attempt, several over the outage:\n{log}"
    );
    assert!(
        failures
            .iter()
            .any(|l| l.contains("error connecting to server: Connection refused")),
        "each warning says why:\n{log}"
    );
    assert!(log.contains("the database answers again"), "{log}");
    common::backend::drop_location(rt.location());
}

//! readtrack end to end: a real Prosody on loopback with mod_readtrack, the real `readtrack`
//! binary, and XMPP clients over real sockets (SASL PLAIN on loopback). Seed dialect with a
//! 2-second receipt timeout unless a test says otherwise.

mod common;

use std::time::Duration;

use common::daemon::{Readtrack, ReadtrackOpts};
use common::*;

fn server() -> Prosody {
    server_with(&["alice", "bob"])
}

fn has_id(s: &str, id: &str) -> bool {
    attr(s, "id").as_deref() == Some(id)
}

fn is_server_ack(s: &str, id: &str) -> bool {
    has_id(s, id)
        && attr(s, "type").as_deref() == Some("crs")
        && attr(s, "from").as_deref() == Some("localhost")
        && s.contains("10013")
}

fn is_bounce(s: &str, id: &str) -> bool {
    has_id(s, id)
        && attr(s, "type").as_deref() == Some("error")
        && s.contains("urn:xmpp:delay")
        && s.contains(">501</delay>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_chat_ack_and_receipt() {
    let p = server();
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    let mut bob = online(&p, "bob", "phone").await;
    let mut alice = online(&p, "alice", "Spark").await;

    alice
        .send_raw(&chat("V4NkR-38", "bob@localhost", "hello"))
        .await;
    alice
        .expect_message(WAIT, |s| is_server_ack(s, "V4NkR-38"))
        .await;
    let got = bob.expect_message(WAIT, |s| has_id(s, "V4NkR-38")).await;
    assert!(got.contains("<body>hello</body>"), "{got}");
    assert_eq!(attr(&got, "from").as_deref(), Some("alice@localhost/Spark"));

    bob.send_raw(&crs_receipt("V4NkR-38")).await;
    bob.sync().await;
    rt.wait_acked("bob@localhost", "phone", 1);
    // Acked in time: no bounce after the 2 s timeout.
    let later = alice.messages_within(Duration::from_millis(2500)).await;
    assert!(
        !later.iter().any(|s| is_bounce(s, "V4NkR-38")),
        "unexpected bounce: {later:?}"
    );
    let c = rt.cursors("bob@localhost");
    assert_eq!(c["head"], 1);
    assert_eq!(c["devices"][0]["pending"], 0);
    assert_eq!(c["devices"][0]["unread"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_bounce_then_replay_to_each_device() {
    let p = server();
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    // Bob has used both devices before; both are offline now.
    for resource in ["phone", "laptop"] {
        let mut c = online(&p, "bob", resource).await;
        c.close().await;
    }
    let mut alice = online(&p, "alice", "Spark").await;
    alice
        .send_raw(&chat("HncqL-65", "bob@localhost", "while you were out"))
        .await;
    alice
        .expect_message(WAIT, |s| is_server_ack(s, "HncqL-65"))
        .await;
    let bounce = alice
        .expect_message(WAIT, |s| is_bounce(s, "HncqL-65"))
        .await;
    assert!(
        bounce.contains("while you were out"),
        "the bounce keeps the body: {bounce}"
    );

    // The phone logs in: exactly one copy, with the offline marker (mod_offline stored none).
    let mut phone = online(&p, "bob", "phone").await;
    let got = phone.messages_within(Duration::from_millis(1500)).await;
    let copies: Vec<_> = got.iter().filter(|s| has_id(s, "HncqL-65")).collect();
    assert_eq!(copies.len(), 1, "{got:?}");
    assert!(copies[0].contains("urn:xmpp:offline"), "{}", copies[0]);
    assert!(copies[0].contains("urn:xmpp:delay"), "{}", copies[0]);
    assert_eq!(
        attr(copies[0], "from").as_deref(),
        Some("alice@localhost/Spark")
    );
    phone.send_raw(&crs_offline_ack("HncqL-65")).await;
    phone.sync().await;
    rt.wait_acked("bob@localhost", "phone", 1);

    // Option One: the laptop, later, gets it too.
    let mut laptop = online(&p, "bob", "laptop").await;
    let got = laptop.expect_message(WAIT, |s| has_id(s, "HncqL-65")).await;
    assert!(got.contains("urn:xmpp:offline"), "{got}");
    rt.wait_acked("bob@localhost", "laptop", 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_device_gets_recent_history() {
    let p = server();
    let _rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            history: 2,
            ..ReadtrackOpts::default()
        },
    );
    let mut alice = online(&p, "alice", "Spark").await;
    for i in 1..=3 {
        alice
            .send_raw(&chat(
                &format!("h{i}"),
                "bob@localhost",
                &format!("message {i}"),
            ))
            .await;
        alice
            .expect_message(WAIT, |s| is_server_ack(s, &format!("h{i}")))
            .await;
    }
    // Bob's first device gets everything nobody had: no message acked to alice is left to
    // the history window. It acks them.
    let mut phone = online(&p, "bob", "phone").await;
    let got = phone.messages_within(Duration::from_millis(1500)).await;
    let ids: Vec<String> = got.iter().filter_map(|s| attr(s, "id")).collect();
    assert_eq!(ids, vec!["h1", "h2", "h3"], "{got:?}");
    for id in &ids {
        phone.send_raw(&crs_offline_ack(id)).await;
    }
    phone.sync().await;
    // A new device then gets the history window of what the phone read.
    let mut tablet = online(&p, "bob", "tablet").await;
    let got = tablet.messages_within(Duration::from_millis(1500)).await;
    let ids: Vec<String> = got.iter().filter_map(|s| attr(s, "id")).collect();
    assert_eq!(ids, vec!["h2".to_string(), "h3".to_string()], "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_message_survives_sigkill() {
    let p = server();
    let mut rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            timeout: "60s",
            ..ReadtrackOpts::default()
        },
    );
    let mut c = online(&p, "bob", "phone").await;
    c.close().await;
    let mut alice = online(&p, "alice", "Spark").await;
    alice
        .send_raw(&chat("k1", "bob@localhost", "survive"))
        .await;
    alice.expect_message(WAIT, |s| is_server_ack(s, "k1")).await;

    rt.kill();
    rt.start_again();

    let mut phone = online(&p, "bob", "phone").await;
    let got = phone.expect_message(WAIT, |s| has_id(s, "k1")).await;
    assert!(got.contains("survive"), "{got}");
}

/// A device's connection drops with a message in flight while readtrack is down, and the device
/// connects again with the same resource before readtrack is back: readtrack heard neither,
/// and the snapshot lists the resource online as before. It is another connection, so the
/// message written to the old one must be replayed to it (the crash loop lost such messages
/// when readtrack took the snapshot's session for the one it knew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_in_flight_to_a_connection_replaced_while_readtrack_was_down_is_replayed() {
    let p = server();
    let mut rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            timeout: "60s",
            ..ReadtrackOpts::default()
        },
    );
    let mut phone = online(&p, "bob", "phone").await;
    phone.sync().await;
    rt.wait_online("bob@localhost", "phone");
    let mut alice = online(&p, "alice", "Spark").await;
    alice
        .send_raw(&chat("f1", "bob@localhost", "in flight"))
        .await;
    alice.expect_message(WAIT, |s| is_server_ack(s, "f1")).await;

    rt.kill();
    // The phone never reads f1: the connection goes with it unread.
    drop(phone.conn);
    let mut phone = online(&p, "bob", "phone").await;
    phone.sync().await;
    rt.start_again();

    let got = phone.expect_message(WAIT, |s| has_id(s, "f1")).await;
    assert!(got.contains("in flight"), "{got}");
    assert!(got.contains("urn:xmpp:offline"), "a replay: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_prosody_restart() {
    let mut p = server();
    let mut rt = Readtrack::start(&p, ReadtrackOpts::default());
    p.restart();
    rt.wait_connected(2);

    let mut bob = online(&p, "bob", "phone").await;
    let mut alice = online(&p, "alice", "Spark").await;
    alice
        .send_raw(&chat("r1", "bob@localhost", "after restart"))
        .await;
    alice.expect_message(WAIT, |s| is_server_ack(s, "r1")).await;
    bob.expect_message(WAIT, |s| has_id(s, "r1")).await;
    bob.send_raw(&crs_receipt("r1")).await;
    bob.sync().await;
    rt.wait_acked("bob@localhost", "phone", 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xep_dialect_with_standard_receipts() {
    let p = server();
    let rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            dialect: "xep",
            ..ReadtrackOpts::default()
        },
    );
    let mut c = online(&p, "bob", "phone").await;
    c.close().await;
    let mut alice = online(&p, "alice", "Spark").await;
    alice
        .send_raw("<message id='x1' type='chat' to='bob@localhost'><body>standard</body><request xmlns='urn:xmpp:receipts'/></message>")
        .await;
    alice.sync().await;

    let mut phone = online(&p, "bob", "phone").await;
    let got = phone.expect_message(WAIT, |s| has_id(s, "x1")).await;
    assert!(got.contains("urn:xmpp:delay"), "XEP-0203 delay: {got}");
    assert!(got.contains("urn:xmpp:sid:0"), "XEP-0359 stanza-id: {got}");
    assert!(!got.contains("urn:xmpp:offline"), "no seed marker: {got}");
    phone.send_raw("<message to='alice@localhost/Spark'><received xmlns='urn:xmpp:receipts' id='x1'/></message>").await;
    phone.sync().await;
    rt.wait_acked("bob@localhost", "phone", 1);

    // No seed ack, no bounce in this dialect.
    let seen = alice.messages_within(Duration::from_millis(2500)).await;
    assert!(
        !seen
            .iter()
            .any(|s| is_server_ack(s, "x1") || is_bounce(s, "x1")),
        "{seen:?}"
    );
    // The standard receipt still reaches the sender.
    assert!(
        seen.iter()
            .any(|s| s.contains("urn:xmpp:receipts") && s.contains("x1")),
        "{seen:?}"
    );
}

/// An IDNA domain: Prosody serves a VirtualHost whose name has non-ASCII letters; readtrack
/// tracks its users as Prosody prepared their JIDs, and the CLI finds them however the operator
/// writes the name (stringprep's nameprep, as the server applies it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_domain_with_non_ascii_letters_are_tracked_and_found_as_typed() {
    let domain = "bücher.example";
    let p = Prosody::start(ProsodyOpts {
        domain: domain.into(),
        component: format!("readtrack.{domain}"),
        ..ProsodyOpts::default()
    });
    p.register("alice", "pw");
    p.register("bob", "pw");
    let rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            timeout: "60s",
            ..ReadtrackOpts::default()
        },
    );
    let mut alice = online(&p, "alice", "Spark").await;
    alice
        .send_raw(&format!(
            "<message id='i1' type='chat' to='bob@{domain}'><body>hallo</body></message>"
        ))
        .await;
    alice
        .expect_message(WAIT, |s| {
            has_id(s, "i1") && attr(s, "type").as_deref() == Some("crs")
        })
        .await;
    let mut phone = online(&p, "bob", "phone").await;
    let got = phone.expect_message(WAIT, |s| has_id(s, "i1")).await;
    assert!(got.contains("hallo"), "{got}");
    let out = rt.cli(&["log", "Bob@BÜCHER.Example", "--json"]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("\"i1\"") && log.contains("bob@bücher.example"),
        "{log}"
    );
}

/// Sends `signal` to the running readtrack (`STOP`, `CONT`).
fn signal(rt: &Readtrack, signal: &str) {
    let pid = rt.pid().expect("readtrack runs").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Waits until Prosody's log shows it noticed readtrack's connection closed (mod_component's
/// own line; the module's handling of it runs in the same turn of Prosody's loop).
fn wait_component_disconnected(p: &Prosody) {
    let deadline = std::time::Instant::now() + WAIT;
    while !p
        .log()
        .contains("component disconnected: readtrack.localhost")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "Prosody did not notice readtrack's connection closed\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Messages to an offline user that the module took from mod_offline while readtrack was
/// stopped (their events unread) and then killed reach the user's first device from mod_offline,
/// once the module notices the link closed; the one readtrack committed and confirmed before
/// is not also there, and readtrack replays it when it is back. Before claims, the module had
/// taken them from mod_offline and readtrack never read them: lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_readtrack_never_read_reach_the_first_device_after_it_is_killed() {
    let p = server();
    let mut rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            timeout: "60s",
            ..ReadtrackOpts::default()
        },
    );
    let mut c = online(&p, "bob", "phone").await;
    c.close().await;
    let mut alice = online(&p, "alice", "Spark").await;
    // Logged, committed, confirmed: the ack and the confirmation leave in one command message.
    alice
        .send_raw(&chat("d0", "bob@localhost", "durable"))
        .await;
    alice.expect_message(WAIT, |s| is_server_ack(s, "d0")).await;

    signal(&rt, "STOP");
    let ids: Vec<String> = (1..=5).map(|i| format!("s{i}")).collect();
    for id in &ids {
        alice.send_raw(&chat(id, "bob@localhost", "unread")).await;
    }
    alice.sync().await; // routed: claimed, their events queued for the stopped readtrack
    rt.kill();
    wait_component_disconnected(&p);

    let mut phone = online(&p, "bob", "phone").await;
    let got = phone.messages_within(Duration::from_millis(1500)).await;
    let got_ids: Vec<String> = got.iter().filter_map(|s| attr(s, "id")).collect();
    assert_eq!(got_ids, ids, "{got:#?}");
    assert!(
        got.iter()
            .all(|s| s.contains("urn:xmpp:delay") && !s.contains("urn:xmpp:offline")),
        "from mod_offline, not replays: {got:#?}"
    );
    phone.close().await;

    // readtrack comes back with d0 (only): the first device replayed it, nothing twice.
    rt.start_again();
    let mut phone = online(&p, "bob", "phone").await;
    let got = phone.messages_within(Duration::from_millis(1500)).await;
    let got_ids: Vec<String> = got.iter().filter_map(|s| attr(s, "id")).collect();
    assert_eq!(got_ids, vec!["d0"], "{got:#?}");
    assert!(got[0].contains("urn:xmpp:offline"), "a replay: {}", got[0]);
}

/// An operator reloads the module (`prosodyctl shell module reload readtrack <host>`) while
/// readtrack is connected: nothing is lost or doubled, and the same link goes on. A message
/// confirmed before the reload and one claimed by the new module after it are each logged,
/// acked and replayed once to the device that was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_reload_with_readtrack_connected_loses_and_doubles_nothing() {
    let p = server_from(with_admin_shell(), &["alice", "bob"]);
    let _rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            timeout: "60s",
            ..ReadtrackOpts::default()
        },
    );
    let mut c = online(&p, "bob", "phone").await;
    c.close().await;
    let mut alice = online(&p, "alice", "Spark").await;
    alice.send_raw(&chat("d0", "bob@localhost", "before")).await;
    alice.expect_message(WAIT, |s| is_server_ack(s, "d0")).await;

    p.reload_module("readtrack");
    alice.send_raw(&chat("d1", "bob@localhost", "after")).await;
    alice.expect_message(WAIT, |s| is_server_ack(s, "d1")).await;

    let mut phone = online(&p, "bob", "phone").await;
    let got = phone.messages_within(Duration::from_millis(1500)).await;
    let ids: Vec<String> = got.iter().filter_map(|s| attr(s, "id")).collect();
    assert_eq!(ids, vec!["d0", "d1"], "{got:#?}");
    assert!(
        got.iter().all(|s| s.contains("urn:xmpp:offline")),
        "replays by readtrack, nothing from mod_offline: {got:#?}"
    );
}

/// The ports the harness gives its servers are distinct across test threads and lie below the
/// kernel's ephemeral range, where no outgoing connection can take one before the server binds
/// it. CI once saw Prosody's c2s and component ports come out equal from two asks for port 0.
#[test]
fn the_harness_never_gives_two_servers_one_port() {
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (0..50).map(|_| free_port()).collect::<Vec<_>>()))
        .collect();
    let ports: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
    let low = ephemeral_low();
    assert!(
        ports.iter().all(|&p| u32::from(p) < low),
        "a port in the ephemeral range (from {low}): {ports:?}"
    );
}

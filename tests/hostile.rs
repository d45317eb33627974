//! Hostile and heavy traffic through a real Prosody with mod_readtrack and the real `readtrack`
//! binary (issue 14): what any user of the server can send must not take the component link
//! down, lose what the server accepted, or hold up other users' acks.
//!
//! After each input the same check runs: another user's message still gets its 10013 server
//! ack promptly, on the same component connection (readtrack connected once).

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Readtrack, ReadtrackOpts};
use common::*;
use readtrack::hooks::HookEvent;

/// What "promptly" means for an ack on loopback, with room for a loaded CI machine.
const PROMPT: Duration = Duration::from_secs(2);

fn has_id(s: &str, id: &str) -> bool {
    attr(s, "id").as_deref() == Some(id)
}

fn is_server_ack(s: &str, id: &str) -> bool {
    has_id(s, id)
        && attr(s, "type").as_deref() == Some("crs")
        && attr(s, "from").as_deref() == Some("localhost")
        && s.contains("10013")
}

fn server(extra_modules: &[&str]) -> Prosody {
    server_from(
        ProsodyOpts {
            extra_modules: extra_modules.iter().map(|m| m.to_string()).collect(),
            ..ProsodyOpts::default()
        },
        &["alice", "bob", "dave", "erin", "carol"],
    )
}

fn stats(rt: &Readtrack) -> serde_json::Value {
    let out = rt.cli(&["stats", "--json"]);
    assert!(
        out.status.success(),
        "stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats --json is JSON")
}

async fn wait_offline(rt: &Readtrack, user: &str, device: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        // The user is unknown until readtrack has applied their first event, which may still
        // be queued behind the test's own sync with the server.
        let out = rt.cli(&["cursors", user, "--json"]);
        if !out.status.success() {
            assert!(
                Instant::now() < deadline,
                "{user}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let d = c["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == device)
            .cloned();
        if d.is_some_and(|d| d["online"] == false) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user}/{device} still online: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Dave and Erin, online: the pair [`others_still_get_acks`] writes between.
async fn witnesses(p: &Prosody) -> (Client, Client) {
    (online(p, "dave", "d").await, online(p, "erin", "e").await)
}

/// Dave writes to Erin (both online): the ack must come within [`PROMPT`], and readtrack must
/// still be on its first connection to the server.
async fn others_still_get_acks(rt: &Readtrack, dave: &mut Client, erin: &mut Client, id: &str) {
    let sent = Instant::now();
    dave.send_raw(&chat(id, "erin@localhost", "still there?"))
        .await;
    dave.expect_message(WAIT, |s| is_server_ack(s, id)).await;
    let took = sent.elapsed();
    assert!(took < PROMPT, "ack for {id} took {took:?}");
    erin.expect_message(WAIT, |s| has_id(s, id)).await;
    let log = rt.log();
    assert_eq!(
        log.matches("connected to the server; waiting").count(),
        1,
        "the component link was dropped\n{log}"
    );
    assert!(!log.contains("dropping the component connection"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_45000_apostrophes_is_left_to_mod_offline_and_the_link_stays_up() {
    let p = server(&["offline"]);
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    let (mut dave, mut erin) = witnesses(&p).await;
    // Bob has a device readtrack knows, offline now.
    let mut bob = online(&p, "bob", "phone").await;
    bob.close().await;
    wait_offline(&rt, "bob@localhost", "phone").await;

    // Prosody writes each ' as &apos;: 45,000 of them make a 270 KB event, over the module's
    // 256 KiB budget. The module leaves the message to Prosody, which stores it offline.
    let body = "'".repeat(45_000);
    let mut alice = online(&p, "alice", "a").await;
    alice.send_raw(&chat("big-1", "bob@localhost", &body)).await;
    alice.sync().await;
    others_still_get_acks(&rt, &mut dave, &mut erin, "after-big").await;

    // Bob gets it at login, from mod_offline (whole, once); readtrack logged nothing of it.
    let mut bob = p.client("bob", "pw", "phone").await;
    bob.send_presence().await;
    let got = bob.expect_message(WAIT, |s| has_id(s, "big-1")).await;
    let start = got.find("<body>").expect("a body") + "<body>".len();
    let end = got.find("</body>").expect("a whole body");
    let inner = &got[start..end];
    assert_eq!(
        inner.matches("&apos;").count() + inner.matches('\'').count(),
        45_000,
        "body changed on the way"
    );
    let later = bob.messages_within(Duration::from_millis(800)).await;
    assert!(
        !later.iter().any(|s| has_id(s, "big-1")),
        "delivered twice: {later:?}"
    );
    assert_eq!(rt.cursors("bob@localhost")["head"], 0);
    assert!(
        p.log().contains("over readtrack's budget"),
        "the module did not log the message it left to the server"
    );
    others_still_get_acks(&rt, &mut dave, &mut erin, "after-login").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_messages_to_a_user_and_to_the_component_keep_the_link_up() {
    let p = server(&["offline"]);
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    let (mut dave, mut erin) = witnesses(&p).await;
    let mut bob = online(&p, "bob", "phone").await;
    let mut alice = online(&p, "alice", "a").await;

    // To a user: 29 levels inside the message, over the module's depth budget; Prosody
    // delivers it itself.
    let nest = |n: usize| {
        format!(
            "{}{}",
            "<x xmlns='urn:example:nest'>".repeat(n),
            "</x>".repeat(n)
        )
    };
    alice
        .send_raw(&format!(
            "<message id='deep-1' type='chat' to='bob@localhost'><body>deep</body>{}</message>",
            nest(29)
        ))
        .await;
    bob.expect_message(WAIT, |s| has_id(s, "deep-1")).await;
    others_still_get_acks(&rt, &mut dave, &mut erin, "after-deep-user").await;
    assert!(p.log().contains("over readtrack's budget"));

    // To the component itself: mod_component forwards whatever a user addresses to it, 40
    // levels deep, past readtrack's framer depth. Skipped and counted; the stream goes on.
    alice
        .send_raw(&format!(
            "<message id='deep-2' to='readtrack.localhost'><body>x</body>{}</message>",
            nest(40)
        ))
        .await;
    alice.sync().await;
    // One stanza: the message mod_component forwards. The module's <sent> event for what alice
    // sent (it has a body) would wrap the same nesting: over the module's budget, it is not sent.
    let deadline = Instant::now() + WAIT;
    while stats(&rt)["stanzas_skipped"] != 1 {
        assert!(Instant::now() < deadline, "not counted: {}", stats(&rt));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    others_still_get_acks(&rt, &mut dave, &mut erin, "after-deep-component").await;

    // And a flood of them (no body: no <sent> event) is ten log lines per interval, with the
    // rest counted.
    for i in 0..30 {
        alice
            .send_raw(&format!(
                "<message id='deep-f{i}' to='readtrack.localhost'>{}</message>",
                nest(40)
            ))
            .await;
    }
    alice.sync().await;
    let deadline = Instant::now() + WAIT;
    while stats(&rt)["stanzas_skipped"] != 31 {
        assert!(Instant::now() < deadline, "not counted: {}", stats(&rt));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = stats(&rt);
    assert_eq!(s["warnings"]["stanza_skipped"]["seen"], 31, "{s}");
    assert_eq!(s["warnings"]["stanza_skipped"]["suppressed"], 21, "{s}");
    assert_eq!(s["warnings_suppressed"], 21, "{s}");
    assert_eq!(
        rt.log()
            .matches("skipped a stanza from the server over the size or depth limit")
            .count(),
        10
    );
    others_still_get_acks(&rt, &mut dave, &mut erin, "after-flood").await;
}

/// 48 sessions with 1,000-character resources of characters Prosody escapes: one snapshot
/// stanza of them was 288 KB, over the old 256 KiB limit on every reconnect.
const SESSIONS: usize = 48;

/// Prosody writes every attribute in a namespace with a declaration of its own, so a namespace
/// declared once on the wire and used by 250 attributes is written 250 times: under 8 KB from a
/// client are a 1.2 MB message to its recipient. Had the module passed it on, its event would be
/// past readtrack's 1 MiB frame: readtrack skips such a write whole (counted), with any event
/// batched before it in the same turn of Prosody's loop (`benches/prosody/budget_bound.lua`
/// shows one). The module leaves it to the server, and alice's message to erin beside it is
/// logged and acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_repeated_on_many_attributes_is_left_to_the_server_and_loses_nothing_else() {
    let p = server(&["offline"]);
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    let (mut dave, mut erin) = witnesses(&p).await;
    let mut bob = online(&p, "bob", "phone").await;
    let mut alice = online(&p, "alice", "a").await;

    let attributes: String = (0..250).map(|i| format!(" a:b{i}=''")).collect();
    let hostile = format!(
        "<message id='ns-1' type='chat' to='bob@localhost'><body>hi</body>\
         <x xmlns='urn:example:x' xmlns:a='{}'{attributes}/></message>",
        "&apos;".repeat(800)
    );
    // Both in one of Prosody's reads (8 KiB), so in one turn of its loop.
    let both = format!(
        "{}{hostile}",
        chat("beside-1", "erin@localhost", "in the same read")
    );
    assert!(both.len() < 8000, "{} bytes", both.len());
    alice.send_raw(&both).await;
    // Prosody delivers both; readtrack logs and acks alice's message to erin.
    let got = bob.expect_message(WAIT, |s| has_id(s, "ns-1")).await;
    assert!(got.len() > 1_000_000, "{} bytes", got.len());
    erin.expect_message(WAIT, |s| has_id(s, "beside-1")).await;
    alice
        .expect_message(WAIT, |s| is_server_ack(s, "beside-1"))
        .await;
    others_still_get_acks(&rt, &mut dave, &mut erin, "after-namespaces").await;
    assert_eq!(stats(&rt)["stanzas_skipped"], 0, "{}", stats(&rt));
    assert_eq!(rt.cursors("bob@localhost")["head"], 0);
    assert!(p.log().contains("over readtrack's budget"));
}

fn long_resource(i: usize) -> String {
    format!("{i:03}{}", "'".repeat(997))
}

async fn many_long_sessions(p: &Prosody) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..SESSIONS {
        clients.push(online(p, "carol", &long_resource(i)).await);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_of_many_long_sessions_comes_in_bounded_pages() {
    let p = server(&[]);
    let _clients = many_long_sessions(&p).await;
    let mut comp = p.connect_component().await;
    let mut listed = Vec::new();
    let mut pages = 0;
    loop {
        let xml = comp
            .expect("snapshot page", WAIT, |s| s.contains("<snapshot"))
            .await;
        assert!(xml.len() < 64 * 1024, "a page of {} bytes", xml.len());
        let HookEvent::Snapshot { page, sessions } = HookEvent::parse(&xml, DOMAIN).unwrap() else {
            panic!("not a snapshot: {xml}");
        };
        pages += 1;
        assert_eq!(page.number, pages);
        listed.extend(sessions.into_iter().map(|s| s.jid.to_string()));
        if page.last {
            break;
        }
    }
    assert!(pages > 1, "one page for {SESSIONS} long sessions");
    listed.sort();
    let mut want: Vec<String> = (0..SESSIONS)
        .map(|i| format!("carol@localhost/{}", long_resource(i)))
        .collect();
    want.sort();
    assert_eq!(listed, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readtrack_reconnects_to_a_server_with_many_long_sessions() {
    let p = server(&[]);
    let mut rt = Readtrack::start(&p, ReadtrackOpts::default());
    let mut clients = many_long_sessions(&p).await;
    let (mut dave, mut erin) = witnesses(&p).await;
    for i in [0, SESSIONS - 1] {
        rt.wait_online("carol@localhost", &long_resource(i));
    }
    // One session goes while readtrack is away: the snapshot, all pages together, must take
    // it offline and keep every other online.
    rt.kill();
    clients.pop().unwrap().close().await;
    rt.start_again();
    let deadline = Instant::now() + WAIT;
    loop {
        let c = rt.cursors("carol@localhost");
        let devices = c["devices"].as_array().unwrap();
        let online = devices.iter().filter(|d| d["online"] == true).count();
        let gone = devices
            .iter()
            .find(|d| d["device"] == long_resource(SESSIONS - 1).as_str())
            .unwrap();
        if online == SESSIONS - 1 && gone["online"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "snapshot not applied: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats(&rt)["stanzas_skipped"], 0);
    // Two connections (before and after the kill), none dropped.
    let log = rt.log();
    assert_eq!(log.matches("connected to the server; waiting").count(), 2);
    assert!(!log.contains("dropping the component connection"), "{log}");
    let sent = Instant::now();
    dave.send_raw(&chat("after-snapshot", "erin@localhost", "hi"))
        .await;
    dave.expect_message(WAIT, |s| is_server_ack(s, "after-snapshot"))
        .await;
    assert!(sent.elapsed() < PROMPT, "ack took {:?}", sent.elapsed());
    erin.expect_message(WAIT, |s| has_id(s, "after-snapshot"))
        .await;
}

/// Waits until `client` has got messages `{prefix}0` to `{prefix}{count - 1}`, and asserts that
/// it got each exactly once (at least once: none lost; at most once: the module reported what it
/// left to mod_offline to nobody).
async fn expect_each_once(client: &mut Client, prefix: &str, count: usize) {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let deadline = Instant::now() + WAIT * 2;
    while seen.len() < count && Instant::now() < deadline {
        for m in client.messages_within(Duration::from_millis(500)).await {
            if let Some(id) = attr(&m, "id").filter(|id| id.starts_with(prefix)) {
                *seen.entry(id).or_default() += 1;
            }
        }
    }
    let missing: Vec<_> = (0..count)
        .map(|i| format!("{prefix}{i}"))
        .filter(|id| !seen.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
}

/// The module writes the events of one turn of Prosody's loop at the start of the next, so
/// while a turn runs its events wait in the module, not yet in the connection's queue: they are
/// part of the link's backlog all the same. 40 messages in one write (under Prosody's 8 KiB
/// read) are handled in one turn; past `readtrack_max_link_backlog` (4 KiB here) of events
/// queued in it, the rest are left to mod_offline. None is lost or delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_within_one_turn_count_towards_the_link_backlog() {
    let p = server_from(
        ProsodyOpts {
            extra_modules: vec!["offline".into()],
            extra_host: "readtrack_max_link_backlog = 4096\n".into(),
            ..ProsodyOpts::default()
        },
        &["alice", "bob"],
    );
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    let mut bob = online(&p, "bob", "phone").await;
    bob.close().await;
    wait_offline(&rt, "bob@localhost", "phone").await;
    let mut alice = online(&p, "alice", "a").await;

    let count = 40;
    let batch: String = (0..count)
        .map(|i| chat(&format!("turn-{i}"), "bob@localhost", "hello"))
        .collect();
    assert!(batch.len() < 8 * 1024, "one read of Prosody's");
    alice.send_raw(&batch).await;
    alice.sync().await;
    assert!(
        p.log().contains("bytes behind"),
        "40 events queued in one turn were not counted as readtrack's backlog"
    );

    let mut bob = p.client("bob", "pw", "phone").await;
    bob.send_presence().await;
    expect_each_once(&mut bob, "turn-", count).await;
}

/// Prosody 13 destroys a connection whose send buffer passes 32 MiB, with every event queued on
/// it. While readtrack is stopped (SIGSTOP: the link stays open, nothing is read), the module
/// stops reporting messages once `readtrack_max_link_backlog` bytes wait for readtrack, and leaves
/// the next ones to mod_offline. Bob then gets every message once: the ones reported before the
/// mark from readtrack, the later ones from mod_offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_the_link_backlog_mark_are_left_to_mod_offline_and_none_is_lost() {
    let p = server_from(
        ProsodyOpts {
            extra_modules: vec!["offline".into()],
            extra_host: "readtrack_max_link_backlog = 256 * 1024\n".into(),
            ..ProsodyOpts::default()
        },
        &["alice", "bob", "dave", "erin"],
    );
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    let mut bob = online(&p, "bob", "phone").await;
    bob.close().await;
    wait_offline(&rt, "bob@localhost", "phone").await;
    let mut alice = online(&p, "alice", "a").await;

    let pid = rt.pid().expect("running").to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    // 32 KB messages until the module says readtrack is behind: first the kernel's socket
    // buffers fill, then Prosody's queue reaches the mark. Then a few more, all left to the server.
    let body = "x".repeat(32 * 1024);
    let mut sent = 0;
    let mut behind_at = None;
    while sent < 1000 {
        alice
            .send_raw(&chat(&format!("bl-{sent}"), "bob@localhost", &body))
            .await;
        sent += 1;
        if behind_at.is_some() && sent >= behind_at.unwrap() + 5 {
            break;
        }
        if behind_at.is_none() && sent % 10 == 0 {
            alice.sync().await;
            if p.log().contains("bytes behind") {
                behind_at = Some(sent);
            }
        }
    }
    alice.sync().await;
    signal("-CONT");
    assert!(
        behind_at.is_some(),
        "the module never saw readtrack behind after {sent} messages"
    );

    // readtrack catches up with what was reported before the mark.
    let deadline = Instant::now() + WAIT;
    let mut last = 0;
    loop {
        let head = rt.cursors("bob@localhost")["head"].as_u64().unwrap_or(0);
        if head > 0 && head == last {
            break;
        }
        last = head;
        assert!(Instant::now() < deadline, "readtrack did not catch up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        last < sent as u64,
        "readtrack logged all {sent} messages: the mark left nothing to the server"
    );

    let mut bob = p.client("bob", "pw", "phone").await;
    bob.send_presence().await;
    expect_each_once(&mut bob, "bl-", sent).await;
    let (mut dave, mut erin) = witnesses(&p).await;
    others_still_get_acks(&rt, &mut dave, &mut erin, "after-backlog").await;
}

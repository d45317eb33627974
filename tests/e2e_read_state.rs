//! Read state and history end to end: real Prosody, mod_readtrack, the real binary, real clients.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Readtrack, ReadtrackOpts};
use common::*;

fn server() -> Prosody {
    server_with(&["alice", "bob"])
}

/// `readtrack conversations JID --json`: (peer, unread) pairs.
fn unread_by_peer(rt: &Readtrack, user: &str) -> Vec<(String, u64)> {
    let out = rt.cli(&["conversations", user, "--json"]);
    assert!(
        out.status.success(),
        "conversations: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["peer"].as_str().unwrap().to_string(),
                c["unread"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn wait_unread(rt: &Readtrack, user: &str, want: &[(&str, u64)]) {
    let want: Vec<(String, u64)> = want.iter().map(|(p, n)| (p.to_string(), *n)).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = unread_by_peer(rt, user);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "conversations of {user}: {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_read_on_the_phone_drops_the_count_everywhere() {
    let p = server();
    let rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            timeout: "60s",
            ..ReadtrackOpts::default()
        },
    );
    let mut phone = online(&p, "bob", "phone").await;
    let mut laptop = online(&p, "bob", "laptop").await;
    let mut alice = online(&p, "alice", "Spark").await;
    for id in ["m1", "m2"] {
        alice.send_raw(&chat(id, "bob@localhost", "hello")).await;
        phone
            .expect_message(WAIT, |s| attr(s, "id").as_deref() == Some(id))
            .await;
        laptop
            .expect_message(WAIT, |s| attr(s, "id").as_deref() == Some(id))
            .await;
    }
    wait_unread(&rt, "bob@localhost", &[("alice@localhost", 2)]);

    phone.send_raw("<message to='alice@localhost/Spark'><displayed xmlns='urn:xmpp:chat-markers:0' id='m2'/></message>").await;
    phone.sync().await;
    wait_unread(&rt, "bob@localhost", &[("alice@localhost", 0)]);
    // The marker also acked both messages for the phone, not for the laptop.
    rt.wait_acked("bob@localhost", "phone", 2);
    rt.wait_acked("bob@localhost", "laptop", 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_device_receives_both_directions_in_order() {
    let p = server();
    let _rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            timeout: "60s",
            ..ReadtrackOpts::default()
        },
    );
    let mut phone = online(&p, "bob", "phone").await;
    let mut alice = online(&p, "alice", "Spark").await;
    phone
        .send_raw(&chat("s1", "alice@localhost", "hi alice"))
        .await;
    alice
        .expect_message(WAIT, |s| attr(s, "id").as_deref() == Some("s1"))
        .await;
    alice.send_raw(&chat("r1", "bob@localhost", "hi bob")).await;
    phone
        .expect_message(WAIT, |s| attr(s, "id").as_deref() == Some("r1"))
        .await;
    phone
        .send_raw(&chat("s2", "alice@localhost", "how are you"))
        .await;
    alice
        .expect_message(WAIT, |s| attr(s, "id").as_deref() == Some("s2"))
        .await;

    let mut tablet = online(&p, "bob", "tablet").await;
    let got = tablet.messages_within(Duration::from_millis(1500)).await;
    let order: Vec<String> = got
        .iter()
        .map(|s| {
            if s.contains("urn:xmpp:carbons:2") {
                // The carbon's inner message is the one the phone sent, to alice.
                let inner = s.split_once("<forwarded").map(|(_, r)| r).unwrap_or("");
                assert!(
                    inner.contains("jabber:client"),
                    "inner message keeps its namespace: {s}"
                );
                let id = inner
                    .split("id='")
                    .nth(1)
                    .or_else(|| inner.split("id=\"").nth(1))
                    .and_then(|r| r.split(['\'', '"']).next())
                    .unwrap_or("?");
                format!("sent {id}")
            } else {
                format!("received {}", attr(s, "id").unwrap_or_default())
            }
        })
        .collect();
    assert_eq!(order, vec!["sent s1", "received r1", "sent s2"], "{got:#?}");
}

//! Issue 14: nothing in one event grows with the number of a user's sessions. A routed event lists
//! the sessions a message was written to and those that got a carbon; a user with many sessions
//! with long resources must not push one event past readtrack's stanza limit (1 MiB), which would
//! skip the event and lose the message from the log. Real Prosody (either line), real readtrack.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Readtrack, ReadtrackOpts};
use common::*;

/// Sessions of one user, each with a resource of 1,000 `'` (6 bytes each once escaped in a
/// `jid` attribute) and a number.
const SESSIONS: usize = 200;

fn resource(i: usize) -> String {
    format!("{}{i:03}", "'".repeat(1_000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_carbon_copied_to_200_long_named_sessions_is_still_logged_and_acked() {
    let p = Prosody::start(ProsodyOpts {
        carbons: true,
        ..ProsodyOpts::default()
    });
    for user in ["alice", "bob"] {
        p.register(user, "pw");
    }
    let rt = Readtrack::start(&p, ReadtrackOpts::default());

    let started = Instant::now();
    let mut bobs = Vec::new();
    for i in 0..SESSIONS {
        let mut bob = p.client("bob", "pw", &resource(i)).await;
        bob.send_raw("<iq type='set' id='carbons'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await;
        bob.conn
            .expect("carbons enabled", WAIT, |s| {
                attr(s, "id").as_deref() == Some("carbons")
            })
            .await;
        bobs.push(bob);
    }
    eprintln!("{SESSIONS} sessions in {:?}", started.elapsed());
    // Listed in full, the carbons alone would be past readtrack's 1 MiB stanza limit.
    let carbon_tag = format!("<carbon jid='bob@localhost/{}'/>", resource(0))
        .replace("''", "&apos;&apos;")
        .len();
    assert!(carbon_tag * (SESSIONS - 1) > 1024 * 1024, "{carbon_tag}");

    let mut alice = online(&p, "alice", "Spark").await;
    let target = bobs[0].jid.clone();
    alice
        .send_raw(&format!(
            "<message id='many-1' type='chat' to='{}'><body>to one of many</body></message>",
            escape(&target)
        ))
        .await;
    // The server ack goes out only once readtrack logged the message.
    alice
        .expect_message(Duration::from_secs(20), |s| {
            attr(s, "id").as_deref() == Some("many-1") && s.contains("10013")
        })
        .await;
    let got = bobs[0]
        .expect_message(WAIT, |s| attr(s, "id").as_deref() == Some("many-1"))
        .await;
    assert!(got.contains("to one of many"), "{got}");

    let stats = rt.cli(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["stanzas_skipped"], 0, "{stats}");
    assert!(
        p.log().contains("fewer <carbon> than written"),
        "the module cut the carbon list"
    );
}

//! mod_readtrack against a real Prosody on loopback, driven and observed through a raw XEP-0114
//! component (no readtrack process) and real c2s clients.

mod common;

use std::time::Duration;

use common::xmltree::{normalised, tree};
use common::*;
use readtrack::hooks::{CommandBatch, HookCommand, HookEvent, SessionInfo};
use readtrack::jid::Jid;
use readtrack::stanza::original::stored_form;
use readtrack::stanza::{write, Outgoing, Replay};
use readtrack::time::Millis;

const HOOK: &str = "urn:readtrack:hook:0";

/// Connects the raw component and consumes the snapshot it is greeted with (every page, which
/// must come numbered from 1, in order, up to the one marked last), then says `batched`, as
/// every readtrack since issue 17 does: the module's events then share messages wherever one
/// write holds several, and the harness hands them out one per message ([`unbatch`]), so each
/// test here also checks the batched form of what it reads. A test that says other words in
/// `<accepts>` says them all, `batched` among them unless it plays an older readtrack.
async fn component(p: &Prosody) -> (RawComponent, Vec<SessionInfo>) {
    let (mut comp, sessions) = component_unnegotiated(p).await;
    accepts(&mut comp, "batched").await;
    (comp, sessions)
}

/// [`component`] without its `<accepts>`: a readtrack older than every word.
async fn component_unnegotiated(p: &Prosody) -> (RawComponent, Vec<SessionInfo>) {
    let mut comp = p.connect_component().await;
    let mut all = Vec::new();
    for expected in 1.. {
        match next_event(&mut comp, "snapshot", |e| {
            matches!(e, HookEvent::Snapshot { .. })
        })
        .await
        {
            HookEvent::Snapshot { page, sessions } => {
                assert_eq!(page.number, expected, "snapshot pages out of order");
                assert!(
                    page.executes_ack,
                    "snapshot page {expected} does not say executes='ack'"
                );
                all.extend(sessions);
                if page.last {
                    break;
                }
            }
            _ => unreachable!(),
        }
    }
    all.sort_by(|a, b| a.jid.cmp(&b.jid));
    (comp, all)
}

/// What the component receives within `window`, account tokens left out (they come before a
/// user's first event on each connection: `accounts_are_told_once_per_connection` checks them).
async fn drain(comp: &mut RawComponent, window: Duration) -> Vec<String> {
    comp.drain(window)
        .await
        .into_iter()
        .filter(|s| !matches!(HookEvent::parse(s, DOMAIN), Ok(HookEvent::Account { .. })))
        .collect()
}

/// The first hook event matching `pred`; other events stay queued. Anything the component
/// receives that is not a valid event from the host fails the test.
async fn next_event(
    comp: &mut RawComponent,
    what: &str,
    pred: impl Fn(&HookEvent) -> bool,
) -> HookEvent {
    let xml = comp
        .expect(what, WAIT, |s| {
            let event = HookEvent::parse(s, DOMAIN)
                .unwrap_or_else(|e| panic!("component got a non-event ({e}): {s}"));
            // Account tokens come before a user's first event on each connection; the tests
            // that look at them drain them, the others look past them.
            !matches!(event, HookEvent::Account { .. }) && pred(&event)
        })
        .await;
    HookEvent::parse(&xml, DOMAIN).unwrap()
}

/// The text of the `<routed>` event of the message `id`, as the component received it (the
/// form on the wire, which a parsed event does not show); other events stay queued.
async fn raw_routed(comp: &mut RawComponent, id: &str) -> String {
    comp.expect(id, WAIT, |s| {
        HookEvent::parse(s, DOMAIN).is_ok_and(|e| routed_for(id)(&e))
    })
    .await
}

async fn online(p: &Prosody, user: &str, resource: &str) -> Client {
    let mut c = p.client(user, "pw", resource).await;
    c.send_presence().await;
    c
}

/// Online and known to be available: waits for the module's <available> event, so what the
/// test sends next cannot race the session's initial presence.
async fn available(p: &Prosody, comp: &mut RawComponent, user: &str, resource: &str) -> Client {
    let c = online(p, user, resource).await;
    let full = jid(&c.jid);
    next_event(
        comp,
        &format!("available {full}"),
        |e| matches!(e, HookEvent::Available { jid, .. } if *jid == full),
    )
    .await;
    c
}

fn routed_for(id: &str) -> impl Fn(&HookEvent) -> bool + '_ {
    move |e| matches!(e, HookEvent::Routed { message, .. } if attr(message.original.text(), "id").as_deref() == Some(id))
}

fn routed_sessions(event: HookEvent) -> (Jid, Vec<Jid>, String) {
    match event {
        HookEvent::Routed {
            to,
            mut sessions,
            message,
            carbons: _,
            archive_id: _,
            sent: _,
            claim: _,
        } => {
            sessions.sort();
            (to, sessions, message.original.into_text())
        }
        other => panic!("expected routed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_carry_full_jids() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, snapshot) = component(&p).await;
    assert_eq!(snapshot, vec![]);

    let mut alice = p.client("alice", "pw", "phone").await;
    // Bound but silent: a device is not available before its initial presence.
    assert_eq!(drain(&mut comp, QUIET).await, Vec::<String>::new());
    alice.send_presence().await;
    let alice_id = session_id_of(
        next_event(&mut comp, "available", |_| true).await,
        "alice@localhost/phone",
    );
    alice.send_raw("<presence type='unavailable'/>").await;
    assert_eq!(
        next_event(&mut comp, "unavailable", |_| true).await,
        HookEvent::Unavailable {
            jid: jid("alice@localhost/phone"),
            session_id: Some(alice_id.clone()),
        }
    );
    // The unbind that follows does not repeat it.
    alice.close().await;
    assert_eq!(drain(&mut comp, QUIET).await, Vec::<String>::new());

    // A session that never became available still reports that it is gone.
    let mut bob = p.client("bob", "pw", "laptop").await;
    bob.close().await;
    let laptop_id = session_id_of(
        next_event(&mut comp, "unavailable", |_| true).await,
        "bob@localhost/laptop",
    );

    // A dropped connection (no stream close) unbinds too.
    let bob = online(&p, "bob", "phone").await;
    let phone_id = session_id_of(
        next_event(&mut comp, "available", |_| true).await,
        "bob@localhost/phone",
    );
    drop(bob.conn);
    assert_eq!(
        next_event(&mut comp, "unavailable", |_| true).await,
        HookEvent::Unavailable {
            jid: jid("bob@localhost/phone"),
            session_id: Some(phone_id.clone()),
        }
    );
    // Every connection has an id of its own.
    let ids: std::collections::HashSet<_> = [&alice_id, &laptop_id, &phone_id].into();
    assert_eq!(ids.len(), 3, "session ids repeat: {ids:?}");
}

/// The session id an available or unavailable event of `full` carries (it must carry one).
fn session_id_of(event: HookEvent, full: &str) -> String {
    match event {
        HookEvent::Available {
            jid: j,
            device_id: None,
            session_id: Some(id),
        }
        | HookEvent::Unavailable {
            jid: j,
            session_id: Some(id),
        } if j == jid(full) => id,
        other => panic!("expected an event of {full} with a session id, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_lists_exactly_the_sessions_written_to() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob1 = available(&p, &mut comp, "bob", "b1").await;

    alice.send_raw(&chat("m1", "bob@localhost", "one")).await;
    let (to, sessions, xml) =
        routed_sessions(next_event(&mut comp, "routed m1", routed_for("m1")).await);
    assert_eq!(to, jid("bob@localhost"));
    assert_eq!(sessions, vec![jid("bob@localhost/b1")]);
    assert_eq!(attr(&xml, "xmlns").as_deref(), Some("jabber:client"));
    assert_eq!(attr(&xml, "from").as_deref(), Some("alice@localhost/phone"));
    assert_eq!(attr(&xml, "to").as_deref(), Some("bob@localhost"));
    assert!(xml.contains("<body>one</body>"), "{xml}");
    let got = bob1
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("m1"))
        .await;
    assert!(got.contains("<body>one</body>"), "{got}");

    let mut bob2 = available(&p, &mut comp, "bob", "b2").await;
    alice.send_raw(&chat("m2", "bob@localhost", "two")).await;
    let (_, sessions, _) =
        routed_sessions(next_event(&mut comp, "routed m2", routed_for("m2")).await);
    assert_eq!(
        sessions,
        vec![jid("bob@localhost/b1"), jid("bob@localhost/b2")]
    );
    bob1.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("m2"))
        .await;
    bob2.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("m2"))
        .await;

    // Addressed to one resource: written to that one only.
    alice
        .send_raw(&chat("m3", "bob@localhost/b2", "three"))
        .await;
    let (to, sessions, _) =
        routed_sessions(next_event(&mut comp, "routed m3", routed_for("m3")).await);
    assert_eq!(to, jid("bob@localhost"));
    assert_eq!(sessions, vec![jid("bob@localhost/b2")]);
    bob2.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("m3"))
        .await;
    assert_eq!(bob1.messages_within(QUIET).await, Vec::<String>::new());

    // Sent by a local client to a local user: the routed event stands for the sender's <sent>
    // too, and there is no separate <sent>.
    let events = drain(&mut comp, QUIET).await;
    assert!(
        events.iter().all(|e| !e.contains("<sent")),
        "no <sent> for a message to a local user: {events:#?}"
    );
    alice.send_raw(&chat("m4", "bob@localhost", "four")).await;
    match next_event(&mut comp, "routed m4", routed_for("m4")).await {
        HookEvent::Routed { sent, .. } => assert!(sent, "routed m4 is marked sent by a client"),
        _ => unreachable!(),
    }

    // To another host, there is no routed event: the sender's own message is reported as
    // <sent>, stamped with its full JID.
    alice
        .send_raw(&chat("m5", "carol@elsewhere.example", "five"))
        .await;
    match next_event(&mut comp, "sent m5", |e| {
        matches!(e, HookEvent::Sent { message, .. } if attr(message.original.text(), "id").as_deref() == Some("m5"))
    })
    .await
    {
        HookEvent::Sent { message, .. } => {
            let message_xml = message.original.text();
            assert_eq!(attr(message_xml, "from").as_deref(), Some("alice@localhost/phone"));
            assert_eq!(attr(message_xml, "xmlns").as_deref(), Some("jabber:client"));
        }
        _ => unreachable!(),
    }
}

/// A message that asks for a receipt (XEP-0184 `<request/>`, as the load bench's and most
/// clients' do) acknowledges nothing: like any message to a local user it is reported by its
/// `<routed sent='true'>` alone, not by a whole `<sent>` besides (which serialised every such
/// message a second time). A receipt (`<received>`) still also goes as its own event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_asking_for_a_receipt_is_reported_by_its_routed_event_alone() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    drain(&mut comp, QUIET).await;

    for (id, to) in [("q1", "bob@localhost"), ("q2", "bob@localhost/phone")] {
        alice
            .send_raw(&format!(
                "<message id='{id}' type='chat' to='{to}'><request xmlns='urn:xmpp:receipts'/><body>ask</body></message>"
            ))
            .await;
        match next_event(&mut comp, &format!("routed {id}"), routed_for(id)).await {
            HookEvent::Routed {
                sent, message, to, ..
            } => {
                assert!(sent, "routed {id} is marked sent by a client");
                assert_eq!(to, jid("bob@localhost"));
                let parsed = message.parsed.as_ref().expect("a message readtrack reads");
                assert!(parsed.receipt_request, "{id} keeps its request: {parsed:?}");
            }
            _ => unreachable!(),
        }
        bob.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some(id))
            .await;
    }
    // The receipt bob sends back still comes as its own event (a <sent>: no accepts here).
    bob.send_raw("<message id='rq1' to='alice@localhost/phone'><received xmlns='urn:xmpp:receipts' id='q1'/></message>")
        .await;
    next_event(&mut comp, "sent rq1", |e| {
        matches!(e, HookEvent::Sent { message, .. } if attr(message.original.text(), "id").as_deref() == Some("rq1"))
    })
    .await;
    alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("rq1"))
        .await;
    // Whatever else came (before or after the routed events) holds no <sent> of q1 or q2.
    let sent_ids: Vec<String> = drain(&mut comp, QUIET)
        .await
        .iter()
        .filter_map(|e| match HookEvent::parse(e, DOMAIN) {
            Ok(HookEvent::Sent { message, .. }) => attr(message.original.text(), "id"),
            _ => None,
        })
        .collect();
    assert!(
        !sent_ids.iter().any(|id| id == "q1" || id == "q2"),
        "no <sent> for a message asking for a receipt: {sent_ids:?}"
    );
}

/// The module takes a delivered message's bytes from the first bytes/out write after its last
/// stanzas/out filter noted the message. A filter after it (tests/prosody/mod_swallow_probe.lua)
/// that swallows the message and writes another one to the session in its place must not make
/// the event carry the other message: the bytes are checked for the noted message's id, and the
/// message is serialised for the event where they are not its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_written_in_place_of_a_swallowed_message_are_not_taken_for_it() {
    let p = Prosody::start(ProsodyOpts::with_test_module("swallow_probe"));
    for user in ["alice", "bob"] {
        p.register(user, "pw");
    }
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;

    alice
        .send_raw(&chat("sw1", "bob@localhost/phone", "swallow me"))
        .await;
    let (_, sessions, xml) =
        routed_sessions(next_event(&mut comp, "routed sw1", routed_for("sw1")).await);
    assert_eq!(sessions, vec![jid("bob@localhost/phone")]);
    assert!(xml.contains("<body>swallow me</body>"), "{xml}");
    assert!(!xml.contains("decoy"), "{xml}");
    // What bob got instead: the probe's message, not the swallowed one.
    let got = bob
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("decoy"))
        .await;
    assert!(got.contains("in its place"), "{got}");

    // An ordinary message still comes from the bytes written (the same text bob reads).
    alice
        .send_raw(&chat("sw2", "bob@localhost/phone", "plain"))
        .await;
    let (_, _, xml) = routed_sessions(next_event(&mut comp, "routed sw2", routed_for("sw2")).await);
    assert!(xml.contains("<body>plain</body>"), "{xml}");
    bob.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("sw2"))
        .await;
}

/// Without mod_mam the module applies mod_mam's archive rule itself (`archivable`): what it
/// would keep is tracked (a `<routed>` event), what it would not is left alone. Each clause of
/// the rule, and the hints that override it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mod_mam_the_module_tracks_what_mod_mam_would_archive() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let _bob = available(&p, &mut comp, "bob", "phone").await;
    let to = "bob@localhost/phone";
    let cases: &[(&str, &str, bool)] = &[
        ("a-body", "<body>hi</body>", true),
        ("a-subject", "<subject>topic</subject>", true),
        ("a-store", "<store xmlns='urn:xmpp:hints'/>", true),
        (
            "a-eme",
            "<encryption xmlns='urn:xmpp:eme:0' namespace='eu.siacs.conversations.axolotl'/>",
            true,
        ),
        (
            "a-marker",
            "<received xmlns='urn:xmpp:chat-markers:0' id='x'/>",
            true,
        ),
        (
            "a-conference",
            "<x xmlns='jabber:x:conference' jid='room@muc.localhost'/>",
            true,
        ),
        (
            "a-invite",
            "<x xmlns='http://jabber.org/protocol/muc#user'><invite from='carol@localhost'/></x>",
            true,
        ),
        (
            "a-jingle",
            "<propose xmlns='urn:xmpp:jingle-message:0' id='c1'/>",
            true,
        ),
        (
            "a-jingle1",
            "<propose xmlns='urn:xmpp:jingle-message:1' id='c2'/>",
            true,
        ),
        (
            "n-chatstate",
            "<active xmlns='http://jabber.org/protocol/chatstates'/>",
            false,
        ),
        (
            "n-muc-x",
            "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='member'/></x>",
            false,
        ),
        (
            "n-no-store",
            "<body>secret</body><no-store xmlns='urn:xmpp:hints'/>",
            false,
        ),
        (
            "n-no-perm",
            "<store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/>",
            false,
        ),
        (
            "n-foreign-body",
            "<body xmlns='urn:example:other'>not a body</body>",
            false,
        ),
    ];
    for (id, children, archived) in cases {
        alice
            .send_raw(&format!(
                "<message id='{id}' type='chat' to='{to}'>{children}</message>"
            ))
            .await;
        // A plain message after each: the next <routed> is the case's own or this one's.
        let sentinel = format!("s-{id}");
        alice.send_raw(&chat(&sentinel, to, "sentinel")).await;
        let first = next_event(&mut comp, &format!("routed {id} or {sentinel}"), |e| {
            routed_for(id)(e) || routed_for(&sentinel)(e)
        })
        .await;
        assert_eq!(
            routed_for(id)(&first),
            *archived,
            "{id}: {children} is {}archived by mod_mam's rule",
            if *archived { "" } else { "not " }
        );
        if *archived {
            next_event(&mut comp, &sentinel, routed_for(&sentinel)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_user_gets_routed_without_sessions_and_no_offline_storage() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;

    alice
        .send_raw(&chat("off1", "bob@localhost", "while away"))
        .await;
    let (to, sessions, xml) =
        routed_sessions(next_event(&mut comp, "routed off1", routed_for("off1")).await);
    assert_eq!(to, jid("bob@localhost"));
    assert_eq!(sessions, Vec::<Jid>::new());
    assert!(xml.contains("<body>while away</body>"), "{xml}");
    // Claimed, not bounced: the sender hears nothing from Prosody.
    assert_eq!(alice.messages_within(QUIET).await, Vec::<String>::new());

    // mod_offline kept nothing: bob's first device gets nothing from Prosody itself.
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    assert_eq!(bob.messages_within(QUIET).await, Vec::<String>::new());

    // A message to an account that does not exist is bounced by Prosody and not reported.
    alice
        .send_raw(&chat("nobody1", "nobody@localhost", "?"))
        .await;
    let err = alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("nobody1"))
        .await;
    assert_eq!(attr(&err, "type").as_deref(), Some("error"), "{err}");
    let events = drain(&mut comp, QUIET).await;
    assert!(
        events.iter().all(|e| !e.contains("<routed")),
        "routed for a missing account: {events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_component_mod_offline_works_as_usual() {
    let p = server_with(&["alice", "bob"]);
    let mut alice = online(&p, "alice", "phone").await;
    alice
        .send_raw(&chat("plain1", "bob@localhost", "stored by prosody"))
        .await;
    assert_eq!(alice.messages_within(QUIET).await, Vec::<String>::new());

    let mut bob = online(&p, "bob", "phone").await;
    let got = bob
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("plain1"))
        .await;
    assert!(got.contains("stored by prosody"), "{got}");
    assert!(
        got.contains("urn:xmpp:delay"),
        "offline delivery carries a delay: {got}"
    );

    // Nothing was queued for the component meanwhile: it is greeted by the snapshot alone.
    let (mut comp, snapshot) = component(&p).await;
    assert_eq!(
        snapshot
            .iter()
            .map(|s| s.jid.to_string())
            .collect::<Vec<_>>(),
        vec!["alice@localhost/phone", "bob@localhost/phone"]
    );
    assert_eq!(drain(&mut comp, QUIET).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_to_the_host_are_forwarded_and_consumed() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;

    // Seed receipt (crs, status as text) and the system-message form (type chat, status attribute).
    bob.send_raw("<message id='V4NkR-38' type='crs' to='localhost'><received xmlns='urn:xmpp:receipts'>200</received></message>").await;
    bob.send_raw("<message id='gJE6T-2' type='chat' to='localhost'><received xmlns='urn:xmpp:receipts' type='200'/></message>").await;
    bob.send_raw("<message id='HncqL-65' type='crs' to='localhost'><offline xmlns='urn:xmpp:offline'/></message>").await;
    for id in ["V4NkR-38", "gJE6T-2", "HncqL-65"] {
        match next_event(&mut comp, id, |e| {
            matches!(e, HookEvent::Sent { message, .. } if attr(message.original.text(), "id").as_deref() == Some(id))
        })
        .await
        {
            HookEvent::Sent { message, .. } => {
            let message_xml = message.original.text();
                assert_eq!(attr(message_xml, "from").as_deref(), Some("bob@localhost/phone"));
                assert_eq!(attr(message_xml, "to").as_deref(), Some("localhost"));
            }
            _ => unreachable!(),
        }
    }
    // No service-unavailable (or anything else) back to bob.
    assert_eq!(bob.messages_within(QUIET).await, Vec::<String>::new());

    // A XEP-0184 receipt to a contact is reported and still delivered.
    bob.send_raw("<message id='r1' to='alice@localhost/phone'><received xmlns='urn:xmpp:receipts' id='m9'/></message>").await;
    next_event(&mut comp, "sent r1", |e| {
        matches!(e, HookEvent::Sent { message, .. } if attr(message.original.text(), "id").as_deref() == Some("r1"))
    })
    .await;
    alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("r1"))
        .await;
}

/// Once readtrack announced it reads them, a receipt or marker with nothing else in it comes as
/// a compact `<signal>` holding what the whole stanza gives readtrack; one with content still
/// comes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_accepts_receipts_and_markers_come_as_signals() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    comp.send_raw(&format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><accepts xmlns='{HOOK}' events='signal batched' id='a1'/></message>"
    ))
    .await;
    next_event(
        &mut comp,
        "done a1",
        |e| matches!(e, HookEvent::Done { id } if id == "a1"),
    )
    .await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    let stanzas = [
        ("V4NkR-38", "<message id='V4NkR-38' type='crs' to='localhost'><received xmlns='urn:xmpp:receipts'>200</received></message>"),
        ("HncqL-65", "<message id='HncqL-65' type='crs' to='localhost'><offline xmlns='urn:xmpp:offline'/></message>"),
        ("r1", "<message id='r1' to='alice@localhost/phone'><received xmlns='urn:xmpp:receipts' id='m9'/></message>"),
        ("d1", "<message id='d1' type='chat' to='alice@localhost'><displayed xmlns='urn:xmpp:chat-markers:0' id='m9'/></message>"),
    ];
    for (id, stanza) in stanzas {
        bob.send_raw(stanza).await;
        let HookEvent::Signal { message } = next_event(
            &mut comp,
            id,
            |e| matches!(e, HookEvent::Signal { message } if message.id.as_deref() == Some(id)),
        )
        .await
        else {
            unreachable!()
        };
        // What readtrack reads of the whole stanza as Prosody stamped it (from the session).
        let whole = stanza.replacen(
            "<message ",
            "<message xmlns='jabber:client' from='bob@localhost/phone' ",
            1,
        );
        assert_eq!(
            message,
            readtrack::stanza::parse_message(&whole).unwrap(),
            "{stanza}"
        );
    }
    alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("r1"))
        .await;
    // Content beside the receipt: the stanza goes whole.
    bob.send_raw("<message id='b1' type='chat' to='alice@localhost/phone'><body>hi</body><received xmlns='urn:xmpp:receipts' id='m9'/></message>").await;
    next_event(&mut comp, "sent b1", |e| {
        matches!(e, HookEvent::Sent { message, .. } if attr(message.original.text(), "id").as_deref() == Some("b1"))
    })
    .await;
}

/// Tells the module what this readtrack accepts, and waits until it ran that.
async fn accepts(comp: &mut RawComponent, events: &str) {
    command(
        comp,
        &format!("<accepts xmlns='{HOOK}' events='{events}'/>"),
    )
    .await;
}

/// How the module reported the client stanza with `id`, in order: `signal`, `sent`, `routed`, or
/// `routed sent` (a `<routed sent='true'>`). Waits until the client's own stanza after it was
/// processed (`sync`), then for the events of that turn.
async fn reported(comp: &mut RawComponent, client: &mut Client, id: &str) -> Vec<&'static str> {
    client.sync().await;
    let mut kinds = Vec::new();
    for xml in drain(comp, QUIET).await {
        let event = HookEvent::parse(&xml, DOMAIN)
            .unwrap_or_else(|e| panic!("component got a non-event ({e}): {xml}"));
        let id_of = |m: &readtrack::stanza::incoming::Incoming| attr(m.original.text(), "id");
        match event {
            HookEvent::Signal { message } if message.id.as_deref() == Some(id) => {
                kinds.push("signal")
            }
            HookEvent::Sent { message, .. } if id_of(&message).as_deref() == Some(id) => {
                kinds.push("sent")
            }
            HookEvent::Routed { message, sent, .. } if id_of(&message).as_deref() == Some(id) => {
                kinds.push(if sent { "routed sent" } else { "routed" })
            }
            _ => {}
        }
    }
    kinds
}

/// Issue 17: once readtrack accepts `routed-signal`, a receipt or marker the server writes to a
/// session of its addressee reaches readtrack once, as its `<routed sent='true'>`, whose message
/// gives readtrack what the `<signal>` gave; it is still delivered. Where no session of another
/// user is written, the `<signal>` comes as before, and before the `<routed>` where there is one:
/// to the server, to an offline user, to a user whose only session sent no presence (offline
/// handling), to no account (Prosody bounces it), to a user who blocked the sender, to one's own
/// other device. A readtrack that does not say `routed-signal` gets both events, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_accepts_routed_signal_a_receipt_written_to_its_addressee_comes_as_its_routed_alone()
{
    let p = server_from(
        ProsodyOpts {
            blocklist: true,
            ..ProsodyOpts::default()
        },
        &["alice", "bob", "carol", "dave", "erin"],
    );
    let (mut comp, _) = component(&p).await;
    accepts(&mut comp, "signal done-list claims routed-signal batched").await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    let mut laptop = available(&p, &mut comp, "bob", "laptop").await;
    let mut carol = available(&p, &mut comp, "carol", "phone").await;
    carol
        .send_raw("<iq type='set' id='block-1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>")
        .await;
    carol
        .conn
        .expect("block result", WAIT, |s| {
            attr(s, "id").as_deref() == Some("block-1")
        })
        .await;
    // Bound, no presence: the server hands a message to erin's bare JID to offline handling.
    let mut erin = p.client("erin", "pw", "phone").await;
    erin.sync().await;
    drain(&mut comp, QUIET).await;

    // Written to alice's session: one event, the receipt's <routed sent='true'>.
    bob.send_raw("<message id='r1' to='alice@localhost/phone'><received xmlns='urn:xmpp:receipts' id='m9'/></message>").await;
    let got = alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("r1"))
        .await;
    assert!(got.contains("urn:xmpp:receipts"), "{got}");
    bob.send_raw("<message id='r1b' to='alice@localhost/phone'><received xmlns='urn:xmpp:receipts' id='m10'/></message>").await;
    let event = next_event(&mut comp, "routed r1b", routed_for("r1b")).await;
    let HookEvent::Routed {
        ref sessions, sent, ..
    } = event
    else {
        unreachable!()
    };
    assert!(sent, "{event:?}");
    assert_eq!(sessions, &[jid("alice@localhost/phone")]);
    // What readtrack applies: the routed input, whose sender's side is the signal's values.
    let xml = event.to_xml(DOMAIN, COMPONENT);
    let Ok(readtrack::service::FromServer::Input(input, _)) =
        readtrack::service::from_server(&xml, DOMAIN)
    else {
        panic!("{xml}")
    };
    let readtrack::engine::Input::Routed {
        message: read,
        sent: true,
        ..
    } = *input
    else {
        panic!("{xml}")
    };
    assert_eq!(read.from, Some(jid("bob@localhost/phone")));
    assert_eq!(
        read.receipt,
        Some(readtrack::stanza::Receipt::Xep0184 { id: "m10".into() })
    );
    bob.send_raw("<message id='r1c' to='alice@localhost/phone'><received xmlns='urn:xmpp:receipts' id='m11'/></message>").await;
    assert_eq!(reported(&mut comp, &mut bob, "r1c").await, ["routed sent"]);
    // A displayed marker to the bare JID: the same.
    bob.send_raw("<message id='d1' type='chat' to='alice@localhost'><displayed xmlns='urn:xmpp:chat-markers:0' id='m9'/></message>").await;
    assert_eq!(reported(&mut comp, &mut bob, "d1").await, ["routed sent"]);
    alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("d1"))
        .await;

    // Not written to a session of another user: the <signal> as before.
    let cases = [
        ("s1", "<message id='s1' type='crs' to='localhost'><received xmlns='urn:xmpp:receipts'>200</received></message>", vec!["signal"]),
        ("o1", "<message id='o1' to='dave@localhost'><received xmlns='urn:xmpp:receipts' id='m9'/></message>", vec!["signal", "routed"]),
        ("o2", "<message id='o2' to='dave@localhost/phone'><received xmlns='urn:xmpp:receipts' id='m9'/></message>", vec!["signal", "routed"]),
        ("n1", "<message id='n1' to='erin@localhost'><received xmlns='urn:xmpp:receipts' id='m9'/></message>", vec!["signal", "routed"]),
        ("b1", "<message id='b1' to='nobody@localhost'><received xmlns='urn:xmpp:receipts' id='m9'/></message>", vec!["signal"]),
        ("k1", "<message id='k1' to='carol@localhost/phone'><received xmlns='urn:xmpp:receipts' id='m9'/></message>", vec!["signal"]),
        ("y1", "<message id='y1' to='bob@localhost/laptop'><received xmlns='urn:xmpp:receipts' id='m9'/></message>", vec!["signal", "routed"]),
    ];
    for (id, stanza, expected) in cases {
        bob.send_raw(stanza).await;
        assert_eq!(
            reported(&mut comp, &mut bob, id).await,
            expected,
            "{stanza}"
        );
    }
    laptop
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("y1"))
        .await;
    assert!(
        !carol
            .messages_within(QUIET)
            .await
            .iter()
            .any(|m| attr(m, "id").as_deref() == Some("k1")),
        "carol blocked bob"
    );
    drop(erin);

    // A readtrack that does not accept routed-signal (a new connection: accepts are per
    // connection) gets the <signal> and the <routed>, as before.
    comp.close().await;
    bob.sync().await;
    let (mut comp, _) = component(&p).await;
    accepts(&mut comp, "signal done-list claims batched").await;
    bob.send_raw("<message id='r2' to='alice@localhost/phone'><received xmlns='urn:xmpp:receipts' id='m9'/></message>").await;
    assert_eq!(
        reported(&mut comp, &mut bob, "r2").await,
        ["signal", "routed"]
    );
    alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("r2"))
        .await;
}

/// `readtrack_events_total` of a running `readtrack serve` (the stanzas it read from the
/// server), from its metrics endpoint (listening on port 0: the address is in its log).
fn events_read(rt: &common::daemon::Readtrack) -> u64 {
    use std::io::{Read, Write};
    let addr = rt.metrics_addr();
    let mut stream = std::net::TcpStream::connect(&addr).expect("metrics endpoint");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("readtrack_events_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no readtrack_events_total in {text}"))
}

/// `events_read` once it has not moved for a while: everything sent so far was read.
fn events_read_settled(rt: &common::daemon::Readtrack) -> u64 {
    let mut last = events_read(rt);
    loop {
        std::thread::sleep(QUIET);
        let now = events_read(rt);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Issue 17, with the real `readtrack serve` (xep dialect): a XEP-0184 receipt one device sends
/// to the sender of a message reaches readtrack once (one event: its `<routed sent='true'>`,
/// not also a `<signal>`), acks the message for that device (the signal's effect, as `readtrack
/// cursors` shows it), is counted once as an accepted receipt, is delivered to the sender's
/// devices and is logged for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_reaches_readtrack_once_with_its_signal_effect_delivered_and_logged() {
    let p = server_with(&["alice", "bob"]);
    let rt = common::daemon::Readtrack::start(
        &p,
        common::daemon::ReadtrackOpts {
            dialect: "xep",
            extra: "[metrics]\nlisten = \"127.0.0.1:0\"\n".into(),
            ..common::daemon::ReadtrackOpts::default()
        },
    );
    let mut phone = online(&p, "alice", "phone").await;
    phone.sync().await;
    let mut laptop = online(&p, "alice", "laptop").await;
    laptop.sync().await;
    let mut bob = online(&p, "bob", "phone").await;
    bob.sync().await;
    phone
        .send_raw("<message id='m1' type='chat' to='bob@localhost'><body>hi</body><request xmlns='urn:xmpp:receipts'/></message>")
        .await;
    bob.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("m1"))
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while rt.cursors_once_known("bob@localhost").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "readtrack never learnt of bob"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.wait_device("bob@localhost", "phone", "m1 logged", |d| {
        d["acked_upto"].as_u64() == Some(0) && d["unread"].as_u64() == Some(1)
    });
    let before = events_read_settled(&rt);

    bob.send_raw("<message id='r1' to='alice@localhost'><received xmlns='urn:xmpp:receipts' id='m1'/></message>").await;
    bob.sync().await;
    rt.wait_acked("bob@localhost", "phone", 1);
    for device in [&mut phone, &mut laptop] {
        device
            .expect_message(WAIT, |m| {
                attr(m, "id").as_deref() == Some("r1") && m.contains("urn:xmpp:receipts")
            })
            .await;
    }
    assert_eq!(
        events_read_settled(&rt) - before,
        1,
        "events for one receipt"
    );
    let stats = rt.cli(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats --json");
    assert_eq!(
        (
            stats["receipts_accepted"].as_u64(),
            stats["receipts_duplicate"].as_u64()
        ),
        (Some(1), Some(0)),
        "{stats}"
    );
    let log = rt.cli(&["log", "alice@localhost", "--json"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("\"r1\""),
        "the receipt is logged for alice's devices: {log}"
    );
}

fn deliver(to: &str, inner: &str) -> String {
    format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><deliver xmlns='{HOOK}' to='{to}'>\
         <forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded></deliver></message>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_reaches_exactly_the_named_session() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    let mut b1 = available(&p, &mut comp, "bob", "b1").await;
    let mut b2 = available(&p, &mut comp, "bob", "b2").await;

    comp.send_raw(&deliver(
        "bob@localhost/b2",
        "<message xmlns='jabber:client' id='HncqL-65' type='chat' from='alice@localhost/phone' to='bob@localhost'>\
         <body>replayed</body><offline xmlns='urn:xmpp:offline' current='2013-12-25T06:26:45.501Z'/></message>",
    ))
    .await;
    let got = b2
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("HncqL-65"))
        .await;
    assert_eq!(attr(&got, "from").as_deref(), Some("alice@localhost/phone"));
    assert_eq!(attr(&got, "to").as_deref(), Some("bob@localhost"));
    assert!(
        got.contains("<body>replayed</body>") && got.contains("urn:xmpp:offline"),
        "{got}"
    );
    assert_eq!(b1.messages_within(QUIET).await, Vec::<String>::new());

    // Gone session: dropped silently, nothing to anyone (readtrack replays later).
    comp.send_raw(&deliver(
        "bob@localhost/gone",
        "<message xmlns='jabber:client' id='x1' from='alice@localhost/phone' to='bob@localhost'><body>x</body></message>",
    ))
    .await;
    // Inner message without jabber:client: refused.
    comp.send_raw(&deliver(
        "bob@localhost/b1",
        "<message id='x2' from='alice@localhost/phone' to='bob@localhost'><body>x</body></message>",
    ))
    .await;
    // Another host's session: refused.
    comp.send_raw(&deliver(
        "bob@elsewhere/b1",
        "<message xmlns='jabber:client' id='x3' from='alice@localhost/phone' to='bob@localhost'><body>x</body></message>",
    ))
    .await;
    assert_eq!(b1.messages_within(QUIET).await, Vec::<String>::new());
    assert_eq!(b2.messages_within(QUIET).await, Vec::<String>::new());
    assert_eq!(drain(&mut comp, QUIET).await, Vec::<String>::new());
    assert!(p
        .log()
        .contains("without <forwarded><message xmlns='jabber:client'>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_routes_a_server_ack_as_the_host() {
    let p = server_with(&["alice"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;

    comp.send_raw(&send_ack("V4NkR-38", "alice@localhost/phone"))
        .await;
    let ack = alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("V4NkR-38"))
        .await;
    assert_eq!(attr(&ack, "from").as_deref(), Some("localhost"));
    assert_eq!(attr(&ack, "type").as_deref(), Some("crs"));
    assert!(ack.contains("10013"), "{ack}");

    // A <send> may not speak for a user.
    comp.send_raw(&format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><send xmlns='{HOOK}'><forwarded xmlns='urn:xmpp:forward:0'>\
         <message xmlns='jabber:client' id='forged' type='chat' from='bob@localhost/x' to='alice@localhost/phone'>\
         <body>hi</body></message></forwarded></send></message>"
    ))
    .await;
    assert_eq!(alice.messages_within(QUIET).await, Vec::<String>::new());
}

/// A `<send>` command carrying a server ack (crs 10013) to `to`.
fn send_ack(id: &str, to: &str) -> String {
    format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><send xmlns='{HOOK}'><forwarded xmlns='urn:xmpp:forward:0'>\
         <message xmlns='jabber:client' id='{id}' type='crs' from='localhost' to='{to}'>\
         <body>{{\"time\":\"2013-11-20T06:42:23.761Z\",\"msgType\":\"10013\"}}</body></message>\
         </forwarded></send></message>"
    )
}

/// A compact `<ack>` command (the 10013 server ack) to `to`.
fn compact_ack(id: &str, to: &str) -> String {
    format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><ack xmlns='{HOOK}' to='{to}' message-id='{id}' \
         time='2013-11-20T06:42:23.761Z'/></message>"
    )
}

/// The stanza's attributes, sorted, and its body's text unescaped: what a client's XML parser
/// reads of it, whatever the attribute order and quoting of the serialiser.
fn read_ack(xml: &str) -> (Vec<(String, String)>, String) {
    let mut attrs: Vec<_> = ["id", "type", "from", "to", "xmlns"]
        .iter()
        .filter_map(|n| attr(xml, n).map(|v| (n.to_string(), v)))
        .collect();
    attrs.sort();
    let body = xml
        .split_once("<body>")
        .and_then(|(_, rest)| rest.split_once("</body>"))
        .map(|(text, _)| {
            text.replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&")
        })
        .unwrap_or_else(|| panic!("no body in {xml}"));
    (attrs, body)
}

/// The compact ack is filled into a template: the sender reads the same stanza as from the
/// whole `<send>` (the bytes below are what Prosody's serialiser writes, attribute order aside),
/// escaped where the values need it, and nothing goes to a session that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_ack_reaches_the_sender_as_the_whole_send_did() {
    let p = server_with(&["alice"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;

    comp.send_raw(&send_ack("V4NkR-38", "alice@localhost/phone"))
        .await;
    let whole = alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("V4NkR-38"))
        .await;
    comp.send_raw(&compact_ack("V4NkR-38", "alice@localhost/phone"))
        .await;
    let compact = alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("V4NkR-38"))
        .await;
    assert_eq!(read_ack(&compact), read_ack(&whole), "{compact}\n{whole}");
    assert_eq!(
        compact,
        "<message id='V4NkR-38' type='crs' from='localhost' to='alice@localhost/phone'><body>\
         {&quot;time&quot;:&quot;2013-11-20T06:42:23.761Z&quot;,&quot;msgType&quot;:&quot;10013&quot;}\
         </body></message>"
    );

    // Values that need escaping, and a command id: confirmed, executed once.
    comp.send_raw(&format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><ack xmlns='{HOOK}' to='alice@localhost/phone' \
         message-id='a&apos;b&lt;&amp;&quot;' time='2013-11-20T06:42:23.761Z' id='k1'/>\
         <ack xmlns='{HOOK}' to='alice@localhost/phone' message-id='again' time='2013-11-20T06:42:23.761Z' id='k1'/></message>"
    ))
    .await;
    let odd = alice
        .expect_message(WAIT, |m| attr(m, "type").as_deref() == Some("crs"))
        .await;
    assert_eq!(attr(&odd, "id").as_deref(), Some("a'b<&\""), "{odd}");
    next_event(
        &mut comp,
        "done k1",
        |e| matches!(e, HookEvent::Done { id } if id == "k1"),
    )
    .await;

    // Gone, or not a time: nothing is written (and the session is still fine).
    comp.send_raw(&compact_ack("gone1", "alice@localhost/laptop"))
        .await;
    comp.send_raw(&format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><ack xmlns='{HOOK}' to='alice@localhost/phone' \
         message-id='bad1' time='\",\"x\":\"1'/></message>"
    ))
    .await;
    alice.sync().await;
    assert_eq!(alice.messages_within(QUIET).await, Vec::<String>::new());
    let log = p.log();
    assert!(
        log.contains("readtrack ack to absent session alice@localhost/laptop dropped"),
        "{log}"
    );
    assert!(
        log.contains("readtrack <ack> without to, message-id or an RFC 3339 time"),
        "{log}"
    );
}

/// With stream management on, the compact ack is a stanza smacks counts: the client may ack
/// it (`<a h>` counting it is accepted) and acking one more than was sent is refused, which
/// shows the count is exact (a string written past smacks would make the first `<a>` fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_ack_to_a_session_with_stream_management_is_counted_in_its_queue() {
    let p = Prosody::start(ProsodyOpts {
        smacks: true,
        ..ProsodyOpts::default()
    });
    p.register("alice", "pw");
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    alice.sync().await;
    enable_stream_management(&mut alice).await;

    comp.send_raw(&compact_ack("sm-1", "alice@localhost/phone"))
        .await;
    alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("sm-1"))
        .await;
    // One stanza since <enabled>: the ack.
    alice.send_raw("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    alice.sync().await; // a second stanza, the ping's result
    alice.send_raw("<a xmlns='urn:xmpp:sm:3' h='3'/>").await;
    expect_refused_overack(&mut alice.conn).await;
}

/// Enables XEP-0198 stream management on `client`'s stream (mod_smacks loaded).
async fn enable_stream_management(client: &mut Client) {
    client.send_raw("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let enabled = client
        .conn
        .expect("<enabled>", WAIT, |s| name(s) == "enabled")
        .await;
    assert!(enabled.contains("urn:xmpp:sm:3"), "{enabled}");
}

/// mod_smacks closes a stream whose client acknowledged more stanzas than it was sent: how the
/// tests see that the server counted exactly the stanzas they expect.
async fn expect_refused_overack(conn: &mut XmlConn) {
    let error = conn
        .expect("<stream:error>", WAIT, |s| {
            s.contains("acknowledged more stanzas")
        })
        .await;
    assert!(error.contains("undefined-condition"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_session_that_is_gone_is_dropped() {
    // With mod_offline loaded, as on a real server: an ack to a session that has gone must not
    // be handed to another device nor stored for the next login.
    let p = Prosody::start(ProsodyOpts {
        extra_modules: vec!["offline".into()],
        ..ProsodyOpts::default()
    });
    p.register("alice", "pw");
    let (mut comp, _) = component(&p).await;
    let mut phone = available(&p, &mut comp, "alice", "phone").await;

    // Another resource of alice, never connected: Prosody would fall back to her phone.
    comp.send_raw(&send_ack("gone1", "alice@localhost/laptop"))
        .await;
    comp.send_raw(&send_ack("here1", "alice@localhost/phone"))
        .await;
    let ack = phone
        .expect_message(WAIT, |m| attr(m, "type").as_deref() == Some("crs"))
        .await;
    assert_eq!(attr(&ack, "id").as_deref(), Some("here1"), "{ack}");
    phone.close().await;
    next_event(&mut comp, "unavailable phone", |e| {
        matches!(e, HookEvent::Unavailable { .. })
    })
    .await;

    // No session at all: Prosody would store it with mod_offline.
    comp.send_raw(&send_ack("gone2", "alice@localhost/phone"))
        .await;
    let mut tablet = available(&p, &mut comp, "alice", "tablet").await;
    tablet.sync().await;
    assert_eq!(tablet.messages_within(QUIET).await, Vec::<String>::new());
    assert!(
        p.log()
            .contains("readtrack send to absent session alice@localhost/laptop dropped"),
        "{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_clients_are_ignored() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;

    alice
        .send_raw(&format!(
            "<message to='{DOMAIN}'><deliver xmlns='{HOOK}' to='bob@localhost/phone'>\
             <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' id='evil' \
             from='localhost' to='bob@localhost/phone'><body>trust me</body></message>\
             </forwarded></deliver></message>"
        ))
        .await;
    assert_eq!(bob.messages_within(QUIET).await, Vec::<String>::new());
    assert!(
        p.log()
            .contains("Ignoring readtrack <deliver> from alice@localhost/phone (c2s)"),
        "no log line for the refused command"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_component_gets_a_snapshot() {
    let p = server_with(&["alice", "bob"]);
    let mut alice = online(&p, "alice", "phone").await;
    alice.sync().await;
    let mut bob = p.client("bob", "pw", "laptop").await;

    let (mut comp, snapshot) = component(&p).await;
    let [only] = &snapshot[..] else {
        panic!("one session expected: {snapshot:?}")
    };
    assert_eq!(
        (&only.jid, &only.device_id),
        (&jid("alice@localhost/phone"), &None)
    );
    let alice_id = only
        .session_id
        .clone()
        .expect("snapshot sessions carry an id");
    comp.close().await;

    // While disconnected events are dropped; the next snapshot has the news.
    bob.send_presence().await;
    bob.sync().await;
    let (mut comp, snapshot) = component(&p).await;
    assert_eq!(
        snapshot
            .iter()
            .map(|s| s.jid.to_string())
            .collect::<Vec<_>>(),
        vec!["alice@localhost/phone", "bob@localhost/laptop"]
    );
    // The session that went on keeps its id; a new one has another.
    assert_eq!(snapshot[0].session_id.as_ref(), Some(&alice_id));
    assert!(snapshot[1].session_id.is_some());
    assert_ne!(snapshot[1].session_id, snapshot[0].session_id);
    assert_eq!(drain(&mut comp, QUIET).await, Vec::<String>::new());
    // Each connection of the component is set to read large command batches in one go.
    assert_eq!(
        p.log()
            .matches("readtrack component connection reads up to 262144 bytes at once")
            .count(),
        2,
        "{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_carries_the_mam_archive_id() {
    let p = Prosody::start(ProsodyOpts {
        extra_modules: vec!["mam".into()],
        ..ProsodyOpts::default()
    });
    p.register("alice", "pw");
    p.register("bob", "pw");
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;

    alice
        .send_raw(&chat("mam1", "bob@localhost", "archived"))
        .await;
    // mod_mam swaps the stanza for a copy before delivery: the session must still be seen.
    let archive_id = match next_event(&mut comp, "routed mam1", routed_for("mam1")).await {
        HookEvent::Routed {
            archive_id,
            sessions,
            ..
        } => {
            assert_eq!(sessions, vec![jid("bob@localhost/phone")]);
            archive_id.expect("archive-id with mod_mam loaded")
        }
        _ => unreachable!(),
    };
    let archive_id_of_mam1 = archive_id.clone();
    let got = bob
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("mam1"))
        .await;
    assert!(
        got.contains(&format!("id='{archive_id}'")) && got.contains("by='bob@localhost'"),
        "bob's copy should carry stanza-id {archive_id}: {got}"
    );

    // A stanza-id forged by the sender is stripped by mod_mam and never reported.
    alice
        .send_raw("<message id='mam2' type='chat' to='bob@localhost'><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/></message>")
        .await;
    // (0.12.3 lets the forged element through to bob, but appends the real one after it.)
    match next_event(&mut comp, "routed mam2", routed_for("mam2")).await {
        HookEvent::Routed { archive_id, .. } => {
            let id = archive_id.expect("archive-id with mod_mam loaded");
            assert_ne!(id, "forged");
            assert_ne!(id, archive_id_of_mam1);
        }
        _ => unreachable!(),
    }

    // Offline recipient with mod_mam: still claimed from mod_offline, still archived.
    bob.close().await;
    next_event(&mut comp, "unavailable bob", |e| {
        matches!(e, HookEvent::Unavailable { .. })
    })
    .await;
    alice
        .send_raw(&chat("mam3", "bob@localhost", "later"))
        .await;
    match next_event(&mut comp, "routed mam3", routed_for("mam3")).await {
        HookEvent::Routed {
            archive_id,
            sessions,
            ..
        } => {
            assert_eq!(sessions, Vec::<Jid>::new());
            assert!(archive_id.is_some());
        }
        _ => unreachable!(),
    }
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    assert_eq!(bob.messages_within(QUIET).await, Vec::<String>::new());
}

/// The hook element of an event as Prosody wrote it: the outer message's only child.
fn hook_element(stanza: &str) -> &str {
    let start = stanza.find('>').unwrap() + 1;
    let end = stanza.rfind("</message>").unwrap();
    &stanza[start..end]
}

/// Fails unless the hook element of `stanza` is valid by schema/hooks.xsd.
fn validate_hook_element(stanza: &str) {
    let element = hook_element(stanza);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("event.xml");
    std::fs::write(&file, element).unwrap();
    let schema = format!("{}/schema/hooks.xsd", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--schema", &schema])
        .arg(&file)
        .output()
        .expect("xmllint: apt-get install -y libxml2-utils");
    assert!(
        out.status.success(),
        "{element}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_validate_against_the_schema() {
    let p = server_with(&["alice", "bob"]);
    let mut comp = p.connect_component().await;
    let mut alice = online(&p, "alice", "phone").await;
    alice.sync().await;
    alice
        .send_raw(&chat("v1", "bob@localhost", "to an offline user"))
        .await;
    let mut bob = online(&p, "bob", "phone").await;
    bob.sync().await;
    alice
        .send_raw(&chat("v2", "bob@localhost", "to an online user"))
        .await;
    bob.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("v2"))
        .await;
    bob.send_raw("<message id='v2' type='crs' to='localhost'><received xmlns='urn:xmpp:receipts'>200</received></message>").await;
    bob.sync().await;
    bob.close().await;

    let mut seen = std::collections::BTreeSet::new();
    for stanza in comp.drain(QUIET * 2).await {
        seen.insert(name(hook_element(&stanza)).to_string());
        validate_hook_element(&stanza);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![
            "account",
            "available",
            "routed",
            "sent",
            "snapshot",
            "unavailable"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_restart_keeps_accounts_and_ports() {
    let mut p = server_with(&["alice"]);
    let port = p.c2s_port;
    p.restart();
    assert_eq!(p.c2s_port, port);
    let mut alice = p.client("alice", "pw", "phone").await;
    assert_eq!(alice.jid, "alice@localhost/phone");
    alice.sync().await;
    let (_comp, snapshot) = component(&p).await;
    assert_eq!(snapshot, vec![]);
}

/// The suite runs once per Prosody line (scripts/test): a harness that quietly started the
/// system's Prosody instead of the selected one would make the second run a copy of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_prosody_is_the_selected_line() {
    let p = server_with(&[]);
    let line = prosody_line();
    let welcome = format!("Prosody version {}", line.version);
    assert!(
        p.log().contains(&welcome),
        "{line} selected, but its log does not say {welcome:?}:\n{}",
        p.log()
    );
}

/// A line that is not there fails every test that needs it, saying how to get it, rather than
/// falling back to another Prosody.
#[test]
fn a_prosody_line_that_is_not_there_fails_saying_how_to_get_it() {
    let missing = std::env::temp_dir().join("readtrack-no-such-prosody/usr/bin/prosody");
    let err = std::panic::catch_unwind(|| ProsodyLine::resolve(&missing.display().to_string()))
        .expect_err("a missing launcher must not resolve");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("scripts/prosody13"),
        "{msg}"
    );
}

/// A command with an id is executed once and confirmed with `<done id>` every time it arrives:
/// readtrack resends a bounce it got no confirmation for, and the sender must see it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_id_is_executed_once_and_confirmed_each_time() {
    let p = server_with(&["alice"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let bounce = format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><send xmlns='{HOOK}' id='bounce-1-7'>\
         <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' id='m7' type='error' \
         from='localhost' to='alice@localhost/phone'><body>hi</body>\
         <delay xmlns='urn:xmpp:delay' current='2026-11-25T09:00:00.000Z'>501</delay></message>\
         </forwarded></send></message>"
    );
    for round in 0..2 {
        comp.send_raw(&bounce).await;
        let done = next_event(&mut comp, "done", |e| matches!(e, HookEvent::Done { .. })).await;
        assert_eq!(
            done,
            HookEvent::Done {
                id: "bounce-1-7".into()
            },
            "round {round}"
        );
    }
    let got = alice.messages_within(QUIET).await;
    let copies = got
        .iter()
        .filter(|m| attr(m, "id").as_deref() == Some("m7"))
        .count();
    assert_eq!(copies, 1, "executed once: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_commands_runs_in_order_and_confirms_each_id() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    // In jabber:client, as readtrack's writer writes what it forwards.
    let chat = |id: &str, to: &str| {
        format!("<message xmlns='jabber:client' id='{id}' type='chat' from='carol@localhost/x' to='{to}'><body>{id}</body></message>")
    };
    let commands = [
        (
            HookCommand::Deliver {
                to: jid("alice@localhost/phone"),
                stanza_xml: chat("b1", "alice@localhost"),
            },
            None,
        ),
        (
            HookCommand::SendAsHost {
                stanza_xml: "<message xmlns='jabber:client' id='b2' type='crs' from='localhost' to='alice@localhost/phone'><body>ack</body></message>".into(),
            },
            Some("cmd-a"),
        ),
        (
            HookCommand::Deliver {
                to: jid("bob@localhost/phone"),
                stanza_xml: chat("b3", "bob@localhost"),
            },
            None,
        ),
        (
            HookCommand::Deliver {
                to: jid("alice@localhost/phone"),
                stanza_xml: chat("b4", "alice@localhost"),
            },
            Some("cmd-b"),
        ),
    ];
    // Written by readtrack's own batcher: one stanza for all four.
    let mut batch = CommandBatch::new(COMPONENT, DOMAIN);
    for (command, id) in &commands {
        assert_eq!(batch.push(&command.element_xml(*id)), None);
    }
    comp.send_raw(&batch.finish().unwrap()).await;

    for id in ["cmd-a", "cmd-b"] {
        let done = next_event(&mut comp, "done", |e| matches!(e, HookEvent::Done { .. })).await;
        assert_eq!(done, HookEvent::Done { id: id.into() });
    }
    let ids =
        |got: Vec<String>| -> Vec<String> { got.iter().filter_map(|m| attr(m, "id")).collect() };
    assert_eq!(ids(alice.messages_within(QUIET).await), ["b1", "b2", "b4"]);
    assert_eq!(ids(bob.messages_within(QUIET).await), ["b3"]);

    // A replay-sized stream: 2,000 deliveries (about 1 MB in several stanzas, written at once)
    // all arrive, in order.
    let mut stream = String::new();
    for n in 0..2000 {
        let command = HookCommand::Deliver {
            to: jid("bob@localhost/phone"),
            stanza_xml: chat(&format!("r{n}"), "bob@localhost")
                .replace("</body>", &format!("{}</body>", "x".repeat(400))),
        };
        stream.extend(batch.push(&command.element_xml(None)));
    }
    stream.extend(batch.finish());
    comp.send_raw(&stream).await;
    let mut got = Vec::new();
    while got.len() < 2000 {
        let m = bob
            .expect_message(WAIT, |m| {
                attr(m, "id").is_some_and(|id| id.starts_with('r'))
            })
            .await;
        got.push(attr(&m, "id").unwrap());
    }
    let want: Vec<String> = (0..2000).map(|n| format!("r{n}")).collect();
    assert_eq!(got, want);
}

/// The module tells readtrack each account's token before the first event about that user on
/// a connection, once per connection, and again to a new connection before its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_told_once_per_connection() {
    let p = server_with(&["alice"]);
    let (mut comp, _) = component(&p).await;
    let _phone = available(&p, &mut comp, "alice", "phone").await;
    let _laptop = available(&p, &mut comp, "alice", "laptop").await;
    let tokens: Vec<String> = comp
        .drain(QUIET)
        .await
        .iter()
        .filter_map(|s| match HookEvent::parse(s, DOMAIN) {
            Ok(HookEvent::Account { user, token }) if user == jid("alice@localhost") => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    // A new connection of the component: told again, the same token, before the snapshot.
    comp.close().await;
    let mut comp = p.connect_component().await;
    let first = comp.next_stanza(WAIT).await.expect("an event");
    assert_eq!(
        HookEvent::parse(&first, DOMAIN).unwrap(),
        HookEvent::Account {
            user: jid("alice@localhost"),
            token: tokens[0].clone(),
        }
    );
}

/// The `<message>` inside every hook fixture that carries one, as a client would send it to
/// `to` with `id` (its own addressing dropped), with a store hint so every one is archived.
fn fixture_messages_to(to: &str) -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hooks");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        let Some(inner_at) = text.find("<forwarded") else {
            continue;
        };
        let inner = &text[inner_at..];
        let start = inner.find("<message").unwrap();
        let tag_end = start + inner[start..].find('>').unwrap();
        let end = inner[..inner.find("</forwarded>").unwrap()]
            .rfind("</message>")
            .unwrap();
        // An error (the bounce) is not logged: not a message a client sends.
        if inner[start..tag_end].contains("type=\"error\"") {
            continue;
        }
        let content = &inner[tag_end + 1..end];
        let id = format!("agree-{}", path.file_stem().unwrap().to_string_lossy());
        out.push((
            id.clone(),
            format!(
                "<message id='{id}' type='chat' to='{to}'>{content}<store xmlns='urn:xmpp:hints'/></message>"
            ),
        ));
    }
    assert!(
        out.len() >= 5,
        "only {} fixtures carry a message",
        out.len()
    );
    out
}

/// Issue 17 item 1: a message the server wrote to a session is reported from the bytes it
/// wrote (bob's copy, jabber:client put on its start tag), not serialised again; one no session
/// got is serialised once. readtrack reads both alike: for every message in the hook fixtures,
/// sent once to bob online and once to bob offline (mod_mam loaded: the written copy is its
/// clone with its <stanza-id>), the typed message is the same (but for that stanza-id, which
/// the stored form drops) and so is the stored form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_message_is_reported_from_the_bytes_written_and_reads_as_one_serialised_once() {
    let p = Prosody::start(ProsodyOpts {
        extra_modules: vec!["mam".into()],
        ..ProsodyOpts::default()
    });
    p.register("alice", "pw");
    p.register("bob", "pw");
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    let messages = fixture_messages_to("bob@localhost");

    let mut live = Vec::new();
    for (id, xml) in &messages {
        alice.send_raw(xml).await;
        let event = next_event(&mut comp, id, routed_for(id)).await;
        let got = bob
            .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some(id.as_str()))
            .await;
        let HookEvent::Routed {
            sessions, message, ..
        } = event
        else {
            unreachable!()
        };
        assert_eq!(sessions, vec![jid("bob@localhost/phone")], "{id}");
        // The very bytes bob read: nothing was serialised for the event.
        assert_eq!(
            message.original.text(),
            format!("<message xmlns='jabber:client'{}", &got["<message".len()..]),
            "{id}"
        );
        assert!(got.contains("by='bob@localhost'"), "no archive id: {got}");
        live.push(message);
    }

    bob.close().await;
    next_event(&mut comp, "unavailable bob", |e| {
        matches!(e, HookEvent::Unavailable { .. })
    })
    .await;
    for ((id, xml), live) in messages.iter().zip(live) {
        alice.send_raw(xml).await;
        let HookEvent::Routed {
            sessions, message, ..
        } = next_event(&mut comp, id, routed_for(id)).await
        else {
            unreachable!()
        };
        assert_eq!(sessions, Vec::<Jid>::new(), "{id}");
        let offline = message;
        // Serialised from the message as routing got it, before mod_mam's copy.
        assert!(
            !offline.original.text().contains("by='bob@localhost'"),
            "{}",
            offline.original.text()
        );
        let mut typed = live.parsed.clone().unwrap_or_else(|e| panic!("{id}: {e}"));
        typed.stanza_ids.retain(|s| s.by != "bob@localhost");
        assert_eq!(Ok(typed), offline.parsed, "{id}");
        // The same stored form, attribute order aside: mod_mam's copy is a new Lua table,
        // which lists the attributes in an order of its own (XML gives order no meaning).
        let live_stored = live.original.stored_form("bob@localhost", false).unwrap();
        let offline_stored = offline
            .original
            .stored_form("bob@localhost", false)
            .unwrap();
        assert_eq!(live_stored.class, offline_stored.class, "{id}");
        assert_eq!(
            normalised(tree(&live_stored.text)),
            normalised(tree(&offline_stored.text)),
            "{id}:\n{}\n{}",
            live_stored.text,
            offline_stored.text
        );
    }
}

/// Issue 17: once readtrack accepts `inherited-namespace`, a message written to a session goes
/// to readtrack as the very bytes the session got, inside a `<f:forwarded>` that declares
/// `jabber:client` for it, where the module copied them before to name the namespace; readtrack
/// reads it as that usual form would have been read (the text with `xmlns='jabber:client'`
/// after `<message`, its stored form). For every message in the hook fixtures, to a session
/// with and without stream management; a readtrack that does not say the word gets the usual
/// form, and one no session got (offline) is serialised in the usual form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_accepts_inherited_namespace_a_written_message_goes_as_its_bytes() {
    for smacks in [false, true] {
        let p = Prosody::start(ProsodyOpts {
            smacks,
            extra_modules: vec!["mam".into()],
            ..ProsodyOpts::default()
        });
        p.register("alice", "pw");
        p.register("bob", "pw");
        let (mut comp, _) = component(&p).await;
        accepts(
            &mut comp,
            "signal done-list claims routed-signal inherited-namespace",
        )
        .await;
        let mut alice = available(&p, &mut comp, "alice", "phone").await;
        let mut bob = available(&p, &mut comp, "bob", "phone").await;
        if smacks {
            enable_stream_management(&mut bob).await;
        }
        let messages = fixture_messages_to("bob@localhost");
        for (id, xml) in &messages {
            alice.send_raw(xml).await;
            let raw = raw_routed(&mut comp, id).await;
            let got = bob
                .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some(id.as_str()))
                .await;
            // Unchanged: the bytes bob read, in a forwarded element of the other form.
            let forwarded = format!(
                "<f:forwarded xmlns:f='urn:xmpp:forward:0' xmlns='jabber:client'>{got}</f:forwarded>"
            );
            assert!(raw.contains(&forwarded), "{id}: {raw}\nbob got {got}");
            validate_hook_element(&raw);
            let Ok(HookEvent::Routed {
                sessions, message, ..
            }) = HookEvent::parse(&raw, DOMAIN)
            else {
                unreachable!()
            };
            assert_eq!(sessions, vec![jid("bob@localhost/phone")], "{id}");
            let usual = format!("<message xmlns='jabber:client'{}", &got["<message".len()..]);
            assert_eq!(message.original.text(), usual, "{id}");
            assert_eq!(message, readtrack::stanza::Incoming::read(&usual), "{id}");
            let stored = message.original.stored_form("bob@localhost", false);
            assert!(stored.is_ok(), "{id}: {stored:?}");
        }
        // No session: serialised, in the usual form.
        bob.close().await;
        next_event(&mut comp, "unavailable bob", |e| {
            matches!(e, HookEvent::Unavailable { .. })
        })
        .await;
        let (id, xml) = &messages[0];
        alice.send_raw(xml).await;
        let raw = raw_routed(&mut comp, id).await;
        assert!(
            raw.contains("<forwarded xmlns='urn:xmpp:forward:0'><message ")
                && !raw.contains("f:forwarded"),
            "{raw}"
        );
        // A readtrack that does not say the word (accepts are per connection): the usual form.
        comp.close().await;
        alice.sync().await;
        let (mut comp, _) = component(&p).await;
        accepts(&mut comp, "signal done-list claims routed-signal batched").await;
        let mut bob = available(&p, &mut comp, "bob", "laptop").await;
        alice.send_raw(xml).await;
        let raw = raw_routed(&mut comp, id).await;
        bob.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some(id.as_str()))
            .await;
        assert!(
            raw.contains("<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'")
                && !raw.contains("f:forwarded"),
            "{raw}"
        );
    }
}

/// Issue 17: once readtrack accepts `batched`, the events of one write of the module share one
/// `<message>`, closed once it holds `readtrack_batch_bytes`; readtrack reads from them, in
/// order, the very events one message around each gave (what a readtrack that does not say the
/// word gets, on its own connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_accepts_batched_the_events_of_one_write_share_a_message() {
    let limit = 2000;
    let p = Prosody::start(ProsodyOpts {
        extra_host: format!("readtrack_batch_bytes = {limit}\n"),
        ..ProsodyOpts::default()
    });
    p.register("alice", "pw");
    p.register("bob", "pw");
    let words = "signal done-list claims routed-signal inherited-namespace";
    let ids: Vec<String> = (0..20).map(|i| format!("batch{i}")).collect();
    let body = "x".repeat(300);
    // Twenty messages in one write: Prosody reads them at once and routes them in one turn.
    let burst: String = ids
        .iter()
        .map(|id| {
            format!(
                "<message to='bob@localhost' id='{id}' type='chat'><body>{body}</body></message>"
            )
        })
        .collect();
    let mut routed_by = Vec::new();
    for batched in [true, false] {
        let (mut comp, _) = component(&p).await;
        comp.keep_batches();
        let events = if batched {
            format!("{words} batched")
        } else {
            words.to_string()
        };
        accepts(&mut comp, &events).await;
        let mut alice = online(&p, "alice", "phone").await;
        let mut bob = online(&p, "bob", "phone").await;
        // Both available (`available` reads one event per message; both may share one).
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let stanza = comp.expect("an available", WAIT, |_| true).await;
            for event in HookEvent::parse_batch(&stanza, DOMAIN).unwrap() {
                if let Ok(HookEvent::Available { jid, .. }) = event {
                    seen.push(jid);
                }
            }
        }
        alice.send_raw(&burst).await;
        for id in &ids {
            bob.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some(id.as_str()))
                .await;
        }
        alice.sync().await;
        let stanzas = comp.drain(QUIET).await;
        let mut routed = Vec::new();
        let mut most = 0;
        for stanza in &stanzas {
            let events =
                HookEvent::parse_batch(stanza, DOMAIN).unwrap_or_else(|e| panic!("{e}: {stanza}"));
            most = most.max(events.len());
            let mut largest = 0;
            for event in events {
                let event = event.unwrap_or_else(|e| panic!("{e}: {stanza}"));
                largest = largest.max(event.to_xml(DOMAIN, COMPONENT).len());
                if let HookEvent::Routed { .. } = event {
                    routed.push(event);
                }
            }
            // Closed once it held the limit: never more than that and one event.
            assert!(
                stanza.len() <= limit + largest + 200,
                "{} bytes: {stanza}",
                stanza.len()
            );
        }
        let got: Vec<_> = routed
            .iter()
            .map(|e| match e {
                HookEvent::Routed { message, .. } => message.parsed.as_ref().unwrap().id.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            got,
            ids.iter().map(|id| Some(id.clone())).collect::<Vec<_>>()
        );
        if batched {
            assert!(most > 1, "one event per message: {stanzas:?}");
            // 20 events of about 600 bytes: the limit closed some messages.
            assert!(stanzas.len() >= 4, "{stanzas:?}");
        } else {
            assert_eq!(most, 1, "{stanzas:?}");
        }
        routed_by.push(routed);
        alice.close().await;
        bob.close().await;
        comp.close().await;
    }
    assert_eq!(routed_by[0], routed_by[1]);
}

/// The delay bounce (501) to `to` as readtrack writes it: the whole `<send>` and the compact
/// `<bounce>`, both with `command_id`.
fn bounce_commands(
    to: &str,
    message_id: &str,
    body: Option<&str>,
    command_id: &str,
) -> [String; 2] {
    let time = readtrack::time::Millis::parse_rfc3339("2013-11-20T07:05:44.445Z").unwrap();
    let whole = HookCommand::SendAsHost {
        stanza_xml: readtrack::stanza::write::client_outgoing(
            &readtrack::stanza::Outgoing::Bounce {
                from: DOMAIN.into(),
                to: jid(to),
                id: message_id.into(),
                body: body.map(String::from),
                time,
            },
        ),
    };
    let compact = HookCommand::Bounce {
        to: jid(to),
        message_id: message_id.into(),
        body: body.map(String::from),
        time: time.rfc3339(),
    };
    [whole, compact].map(|c| c.to_xml_with_id(COMPONENT, DOMAIN, Some(command_id)))
}

/// Issue 17 item 2: the compact bounce is filled into a template, and the sender reads the
/// same stanza as from the whole `<send>` (as XML: attribute order aside), with a body that
/// needs escaping or none at all; its id is confirmed and executed once; nothing goes to a
/// session that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_bounce_reaches_the_sender_as_the_whole_send_did() {
    let p = server_with(&["alice"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    for (n, body) in [Some("{\"cnt\":\"a < b & 'c'\"}\n\tline"), None, Some("")]
        .into_iter()
        .enumerate()
    {
        let message_id = format!("b{n}'<&");
        let [whole, compact] =
            bounce_commands("alice@localhost/phone", &message_id, body, &format!("k{n}"));
        let mut got = Vec::new();
        for command in [
            whole,
            compact.replace(&format!("id=\"k{n}\""), &format!("id=\"c{n}\"")),
        ] {
            comp.send_raw(&command).await;
            got.push(
                alice
                    .expect_message(WAIT, |m| attr(m, "type").as_deref() == Some("error"))
                    .await,
            );
        }
        assert_eq!(
            normalised(tree(&got[1])),
            normalised(tree(&got[0])),
            "{}\n{}",
            got[1],
            got[0]
        );
        assert_eq!(attr(&got[1], "id").as_deref(), Some(message_id.as_str()));
        assert_eq!(got[1].contains("<body"), body.is_some(), "{}", got[1]);
        for id in [format!("k{n}"), format!("c{n}")] {
            next_event(
                &mut comp,
                "done",
                |e| matches!(e, HookEvent::Done { id: d } if *d == id),
            )
            .await;
        }
    }
    let [_, compact] = bounce_commands("alice@localhost/phone", "V4NkR-38", Some("hello"), "c9");
    assert_eq!(
        {
            comp.send_raw(&compact).await;
            alice
                .expect_message(WAIT, |m| attr(m, "type").as_deref() == Some("error"))
                .await
        },
        "<message id='V4NkR-38' type='error' from='localhost' to='alice@localhost/phone'><body>hello</body>\
         <delay xmlns='urn:xmpp:delay' current='2013-11-20T07:05:44.445Z'>501</delay></message>"
    );
    // Executed once per id: sent again, it is confirmed again and not written again.
    comp.send_raw(&compact).await;
    next_event(
        &mut comp,
        "done c9",
        |e| matches!(e, HookEvent::Done { id } if id == "c9"),
    )
    .await;
    next_event(
        &mut comp,
        "done c9 again",
        |e| matches!(e, HookEvent::Done { id } if id == "c9"),
    )
    .await;
    let [_, gone] = bounce_commands("alice@localhost/laptop", "gone", Some("x"), "g1");
    comp.send_raw(&gone).await;
    alice.sync().await;
    assert_eq!(alice.messages_within(QUIET).await, Vec::<String>::new());
    assert!(
        p.log()
            .contains("readtrack bounce to absent session alice@localhost/laptop dropped"),
        "{}",
        p.log()
    );
}

/// With stream management on, the compact bounce is a stanza smacks counts, as the ack is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_bounce_to_a_session_with_stream_management_is_counted_in_its_queue() {
    let p = Prosody::start(ProsodyOpts {
        smacks: true,
        ..ProsodyOpts::default()
    });
    p.register("alice", "pw");
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    alice.sync().await;
    enable_stream_management(&mut alice).await;

    let [_, compact] = bounce_commands("alice@localhost/phone", "sm-1", Some("hi"), "s1");
    comp.send_raw(&compact).await;
    let got = alice
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("sm-1"))
        .await;
    assert!(got.contains(">501</delay>"), "{got}");
    alice.send_raw("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    alice.sync().await;
    alice.send_raw("<a xmlns='urn:xmpp:sm:3' h='3'/>").await;
    expect_refused_overack(&mut alice.conn).await;
}

/// Issue 17 item 2: once readtrack accepts `done-list`, the ids of one command message are
/// confirmed by one event, in the order executed (a repeated id too: it is confirmed each time,
/// executed once); one id alone, or an id the list cannot carry (whitespace), keeps `<done id>`.
/// Before that (an older readtrack) every id has its own `<done id>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_accepts_the_ids_of_one_command_message_are_confirmed_by_one_event() {
    let p = server_with(&["alice"]);
    let (mut comp, _) = component(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    let batch = |ids: &[&str]| {
        let mut batch = CommandBatch::new(COMPONENT, DOMAIN);
        for (n, id) in ids.iter().enumerate() {
            let [_, compact] =
                bounce_commands("alice@localhost/phone", &format!("m{n}"), Some("x"), id);
            assert!(batch.push(hook_element(&compact)).is_none());
        }
        batch.finish().unwrap()
    };
    let dones = |events: Vec<String>| -> Vec<HookEvent> {
        events
            .iter()
            .filter_map(|e| HookEvent::parse(e, DOMAIN).ok())
            .filter(|e| matches!(e, HookEvent::Done { .. } | HookEvent::DoneList { .. }))
            .collect()
    };
    // Not yet accepted: one event per id.
    comp.send_raw(&batch(&["d1", "d2"])).await;
    assert_eq!(
        dones(drain(&mut comp, QUIET).await),
        vec![
            HookEvent::Done { id: "d1".into() },
            HookEvent::Done { id: "d2".into() }
        ]
    );
    comp.send_raw(&format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><accepts xmlns='{HOOK}' events='signal done-list batched'/></message>"
    ))
    .await;
    comp.send_raw(&batch(&["d3", "d1", "d4"])).await;
    assert_eq!(
        dones(drain(&mut comp, QUIET).await),
        vec![HookEvent::DoneList {
            ids: vec!["d3".into(), "d1".into(), "d4".into()]
        }]
    );
    comp.send_raw(&batch(&["d5"])).await;
    comp.send_raw(&batch(&["d 6", "d7"])).await;
    assert_eq!(
        dones(drain(&mut comp, QUIET).await),
        vec![
            HookEvent::Done { id: "d5".into() },
            HookEvent::Done { id: "d 6".into() },
            HookEvent::Done { id: "d7".into() }
        ]
    );
    // d1 ran once: five bounces written (d1..d5), then d 6 and d7.
    let got = alice.messages_within(QUIET).await;
    assert_eq!(got.len(), 7, "{got:#?}");
}

/// Sends one command message holding `elements` (hook command elements) to the host, and
/// waits until the module has run it: a last command with an id (an ack to a session that does
/// not exist, dropped) is confirmed with <done> once the message's commands ran. Commands and
/// a client's stanzas reach Prosody on separate connections: without the wait, what a test
/// sends next could overtake them.
async fn command(comp: &mut RawComponent, elements: &str) {
    static SYNC: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "sync-{}",
        SYNC.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    comp.send_raw(&format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'>{elements}<ack xmlns='{HOOK}' to='nobody@{DOMAIN}/gone' message-id='x' time='2020-01-01T00:00:00Z' id='{id}'/></message>"
    ))
    .await;
    next_event(comp, &format!("done {id}"), |e| {
        matches!(e, HookEvent::Done { id: done } if *done == id)
            || matches!(e, HookEvent::DoneList { ids } if ids.contains(&id))
    })
    .await;
}

/// The claim number of the routed event of message `id` (an offline recipient's).
async fn claim_of(comp: &mut RawComponent, id: &str) -> Option<u64> {
    match next_event(comp, &format!("routed {id}"), routed_for(id)).await {
        HookEvent::Routed {
            claim, sessions, ..
        } => {
            assert!(sessions.is_empty(), "{id} was written to {sessions:?}");
            claim
        }
        _ => unreachable!(),
    }
}

/// The ids of the messages `c` receives within the quiet window.
async fn ids_received(c: &mut Client) -> Vec<String> {
    c.messages_within(QUIET)
        .await
        .iter()
        .filter_map(|m| attr(m, "id"))
        .collect()
}

/// Issue: a message the module took from mod_offline existed only in its event until readtrack
/// logged it. Now it is held, numbered, until readtrack confirms it (<durable>, after its
/// commit); what this connection of readtrack had not confirmed when it ended goes to
/// mod_offline, and what it confirmed does not. On the module without claims the unconfirmed
/// message was lost: bob's first device got nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_readtrack_did_not_confirm_go_to_offline_storage_when_its_connection_ends() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    command(
        &mut comp,
        &format!("<accepts xmlns='{HOOK}' events='signal done-list claims batched'/>"),
    )
    .await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    for id in ["c1", "c2", "c3"] {
        alice.send_raw(&chat(id, "bob@localhost", id)).await;
    }
    let c1 = claim_of(&mut comp, "c1").await.expect("c1 claimed");
    let c2 = claim_of(&mut comp, "c2").await.expect("c2 claimed");
    let c3 = claim_of(&mut comp, "c3").await.expect("c3 claimed");
    assert_eq!((c2, c3), (c1 + 1, c1 + 2), "numbered in order");
    // readtrack has c1 and c2 durable; c3 is still in its batch when the connection breaks.
    command(
        &mut comp,
        &format!("<durable xmlns='{HOOK}' from='{c1}' upto='{c2}'/>"),
    )
    .await;
    // While it is connected nothing goes to mod_offline.
    let mut bob = online(&p, "bob", "phone").await;
    assert_eq!(ids_received(&mut bob).await, Vec::<String>::new());
    bob.close().await;
    comp.close().await;

    // The first device after the break gets exactly the unconfirmed one, from mod_offline.
    let mut bob = online(&p, "bob", "phone").await;
    let got = bob.messages_within(QUIET).await;
    let ids: Vec<String> = got.iter().filter_map(|m| attr(m, "id")).collect();
    assert_eq!(ids, vec!["c3"], "{got:#?}");
    assert!(
        got[0].contains("urn:xmpp:delay"),
        "from mod_offline: {}",
        got[0]
    );
    assert!(
        p.log()
            .contains("message(s) it had not confirmed went to offline storage"),
        "the hand-back is logged"
    );
}

/// Claims readtrack lists in <durable return> (it did not log them) go to mod_offline at once,
/// from the module's own copy; the rest of the range is forgotten; a <durable> arriving on a
/// later connection names none of that connection's claims (numbers are never reused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_durable_returns_go_to_offline_storage_at_once_and_numbers_are_never_reused() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    command(
        &mut comp,
        &format!("<accepts xmlns='{HOOK}' events='claims batched'/>"),
    )
    .await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    for id in ["r1", "r2", "r3", "r4"] {
        alice.send_raw(&chat(id, "bob@localhost", id)).await;
    }
    let mut numbers = Vec::new();
    for id in ["r1", "r2", "r3", "r4"] {
        numbers.push(claim_of(&mut comp, id).await.expect("claimed"));
    }
    let (first, last) = (numbers[0], numbers[3]);
    command(
        &mut comp,
        &format!(
            "<durable xmlns='{HOOK}' from='{first}' upto='{last}' return='{}-{}'/>",
            numbers[1], numbers[2]
        ),
    )
    .await;
    let mut bob = online(&p, "bob", "phone").await;
    assert_eq!(ids_received(&mut bob).await, vec!["r2", "r3"]);
    bob.close().await;
    comp.close().await;

    // A new connection: its claims are numbered past every earlier one, so a confirmation
    // meant for the old connection (the same numbers, late) confirms none of them.
    let (mut comp, _) = component(&p).await;
    command(
        &mut comp,
        &format!("<accepts xmlns='{HOOK}' events='claims batched'/>"),
    )
    .await;
    alice.send_raw(&chat("r5", "bob@localhost", "r5")).await;
    let r5 = claim_of(&mut comp, "r5").await.expect("claimed");
    assert!(r5 > last, "claim {r5} reuses a number up to {last}");
    command(
        &mut comp,
        &format!("<durable xmlns='{HOOK}' from='{first}' upto='{last}'/>"),
    )
    .await;
    comp.close().await;
    let mut bob = online(&p, "bob", "phone").await;
    // r1 and r4 were confirmed (not handed back when the first connection ended), r2 and r3
    // were delivered already; r5 was not confirmed on its connection.
    assert_eq!(ids_received(&mut bob).await, vec!["r5"]);
}

/// A readtrack that does not say `claims` in <accepts> (older than them) gets today's
/// behaviour: no claim numbers, the module holds nothing and hands nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_readtrack_gets_no_claims_and_nothing_is_handed_back() {
    let p = server_with(&["alice", "bob"]);
    let (mut comp, _) = component_unnegotiated(&p).await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    // Before readtrack has said what it accepts, the module holds what it claims.
    alice.send_raw(&chat("o1", "bob@localhost", "o1")).await;
    assert!(claim_of(&mut comp, "o1").await.is_some());
    command(
        &mut comp,
        &format!("<accepts xmlns='{HOOK}' events='signal done-list'/>"),
    )
    .await;
    alice.send_raw(&chat("o2", "bob@localhost", "o2")).await;
    assert_eq!(claim_of(&mut comp, "o2").await, None);
    comp.close().await;
    // The older readtrack has both: mod_offline has neither (o1 was let go at <accepts>).
    let mut bob = online(&p, "bob", "phone").await;
    assert_eq!(ids_received(&mut bob).await, Vec::<String>::new());
}

/// Past readtrack_max_claimed_bytes of unconfirmed claims, a message for an offline user is
/// left to mod_offline (no event), as while readtrack is away; confirming frees the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_claim_budget_offline_messages_are_left_to_mod_offline() {
    let p = server_from(
        ProsodyOpts {
            extra_host: "readtrack_max_claimed_bytes = 1\n".into(),
            ..ProsodyOpts::default()
        },
        &["alice", "bob"],
    );
    let (mut comp, _) = component(&p).await;
    command(
        &mut comp,
        &format!("<accepts xmlns='{HOOK}' events='claims batched'/>"),
    )
    .await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    alice.send_raw(&chat("b1", "bob@localhost", "b1")).await;
    let b1 = claim_of(&mut comp, "b1").await.expect("claimed");
    alice.send_raw(&chat("b2", "bob@localhost", "b2")).await;
    let events = drain(&mut comp, QUIET).await;
    assert!(
        events.iter().all(|e| !e.contains("<routed")),
        "b2 was claimed past the budget: {events:#?}"
    );
    command(
        &mut comp,
        &format!("<durable xmlns='{HOOK}' from='{b1}' upto='{b1}'/>"),
    )
    .await;
    alice.send_raw(&chat("b3", "bob@localhost", "b3")).await;
    assert!(
        claim_of(&mut comp, "b3").await.is_some(),
        "room again after <durable>"
    );
    let mut bob = online(&p, "bob", "phone").await;
    assert_eq!(ids_received(&mut bob).await, vec!["b2"]);
}

/// What readtrack replays to bob/phone of `message` (a client's message in jabber:client,
/// logged for bob): the replay with every marker, and the `<sent>` carbon of it that a
/// message bob sent himself becomes.
fn replays_of(message: &str, n: usize) -> [Outgoing; 2] {
    let stored = stored_form(message, "bob@localhost", false)
        .unwrap_or_else(|e| panic!("not logged ({e}): {message}"))
        .text;
    let replay = Replay {
        to: jid("bob@localhost/phone"),
        stored,
        logged_at: Millis(1_700_000_000_000),
        stanza_id: format!("sid-{n}"),
        stanza_id_by: "bob@localhost".into(),
        offline_marker: true,
        delay_from: Some(DOMAIN.into()),
        now: Millis(1_700_000_001_000),
        request_receipt: true,
    };
    [
        Outgoing::Replay(replay.clone()),
        Outgoing::SentCarbon {
            from: jid("bob@localhost/laptop"),
            to: jid("bob@localhost/phone"),
            inner: replay,
        },
    ]
}

/// The messages the faithfulness tests replay: every hook fixture's, from alice, and some
/// with what serialisers write differently (escapes, quotes, line ends and tabs, `xml:lang`,
/// non-ASCII, nested elements of other namespaces).
fn replayed_messages() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fixture_messages_to("bob@localhost")
        .into_iter()
        .map(|(id, xml)| {
            let xml = xml.replacen(
                "<message ",
                "<message xmlns='jabber:client' from='alice@localhost/phone' ",
                1,
            );
            (id, xml)
        })
        .collect();
    for (n, content) in [
        "<body xml:lang='de'>a &amp; b &lt;c&gt; &quot;q&quot; &apos;a&apos; ]]&gt;\n\ttab\r\n é 😀</body>\
         <x xmlns='jabber:x:oob'><url>http://x/?a=1&amp;b=2</url><desc/></x>",
        "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2' prekey='true'>AAA=</key>\
         <iv>BBB</iv></header><payload>CCC</payload></encrypted><store xmlns='urn:xmpp:hints'/>\
         <subject>s &amp; t</subject><thread parent='p&apos;1'>t</thread>",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("odd-{n}");
        out.push((
            id.clone(),
            format!(
                "<message xmlns='jabber:client' id='{id}' type='chat' from='alice@localhost/x&apos;y' \
                 to='bob@localhost' xml:lang='en'>{content}</message>"
            ),
        ));
    }
    out
}

/// Issue 17 (replay): the compact `<deliver-bytes>` writes the device the stanza the whole
/// `<deliver>` wrote it. For every hook fixture's message and some odd ones, as a replay and as
/// a `<sent>` carbon, bob/phone reads the same stanza from both (compared as XML trees,
/// namespaces resolved: attribute order, quotes and escapes are the serialisers'), and on a
/// plain session exactly the bytes readtrack wrote (nothing parsed or serialised in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_deliver_writes_the_device_the_stanza_the_whole_deliver_wrote() {
    compare_deliveries(false).await;
}

/// The same with stream management on, where the module parses the bytes (`util.xml`) into
/// the stanza object smacks counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_deliver_parsed_for_stream_management_is_the_stanza_the_whole_deliver_wrote() {
    compare_deliveries(true).await;
}

async fn compare_deliveries(smacks: bool) {
    let p = server_from(
        ProsodyOpts {
            smacks,
            ..ProsodyOpts::default()
        },
        &["alice", "bob"],
    );
    let (mut comp, _) = component(&p).await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    if smacks {
        enable_stream_management(&mut bob).await;
    }
    let to = jid("bob@localhost/phone");
    let mut checked = 0;
    for (n, (id, message)) in replayed_messages().into_iter().enumerate() {
        for out in replays_of(&message, n) {
            let whole = HookCommand::Deliver {
                to: to.clone(),
                stanza_xml: write::client_outgoing(&out),
            };
            let bytes = write::client_stream(&out);
            let compact = HookCommand::deliver_bytes(to.clone(), bytes.clone()).unwrap();
            let mut got = Vec::new();
            for command in [whole, compact] {
                comp.send_raw(&command.to_xml(COMPONENT, DOMAIN)).await;
                got.push(
                    bob.expect_message(WAIT, |m| m.contains(&id) && m.contains("sid-"))
                        .await,
                );
            }
            assert_eq!(
                normalised(tree(&got[1])),
                normalised(tree(&got[0])),
                "{id}:\ncompact {}\nwhole   {}",
                got[1],
                got[0]
            );
            if !smacks {
                assert_eq!(got[1], bytes, "{id}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} replays compared");
    assert_eq!(bob.messages_within(QUIET).await, Vec::<String>::new());
}

/// A compact deliver goes through the same checks as the whole one: to a session that is gone,
/// another host's, or without a message in it, nothing is written (and the session is fine);
/// from a sender the user blocked (XEP-0191), nothing either, while another sender's replay
/// arrives; the id of a command is confirmed and executed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_deliver_is_dropped_where_the_whole_one_was() {
    let p = server_from(
        ProsodyOpts {
            blocklist: true,
            ..ProsodyOpts::default()
        },
        &["alice", "bob", "mallory"],
    );
    let (mut comp, _) = component(&p).await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    bob.send_raw(
        "<iq type='set' id='block-1'><block xmlns='urn:xmpp:blocking'><item jid='mallory@localhost'/></block></iq>",
    )
    .await;
    bob.conn
        .expect("block result", WAIT, |s| {
            attr(s, "id").as_deref() == Some("block-1")
        })
        .await;
    let command = |to: &str, from: &str, id: &str| {
        HookCommand::deliver_bytes(
            jid(to),
            format!("<message to=\"{to}\" id=\"{id}\" type=\"chat\" from=\"{from}\"><body>replayed</body></message>"),
        )
        .unwrap()
    };
    let mut batch = CommandBatch::new(COMPONENT, DOMAIN);
    for (to, from, id) in [
        ("bob@localhost/phone", "mallory@localhost/m", "blocked-1"),
        ("bob@localhost/gone", "alice@localhost/a", "gone-1"),
        ("bob@elsewhere/phone", "alice@localhost/a", "elsewhere-1"),
        ("bob@localhost/phone", "alice@localhost/a", "fine-1"),
    ] {
        assert!(batch
            .push(&command(to, from, id).element_xml(Some(&format!("c-{id}"))))
            .is_none());
    }
    // Again, same command id: confirmed, not executed twice.
    assert!(batch
        .push(
            &command("bob@localhost/phone", "alice@localhost/a", "fine-1")
                .element_xml(Some("c-fine-1"))
        )
        .is_none());
    comp.send_raw(&batch.finish().unwrap()).await;
    comp.send_raw(&format!(
        "<message from='{COMPONENT}' to='{DOMAIN}'><deliver-bytes xmlns='{HOOK}' to='bob@localhost/phone' \
         stanza='&lt;iq type=\"get\"/&gt;'/></message>"
    ))
    .await;
    let got = bob.expect_message(WAIT, |m| m.contains("replayed")).await;
    assert_eq!(attr(&got, "id").as_deref(), Some("fine-1"), "{got}");
    bob.sync().await;
    assert_eq!(bob.messages_within(QUIET).await, Vec::<String>::new());
    let log = p.log();
    assert!(
        log.contains(
            "readtrack replay from mallory@localhost/m to bob@localhost/phone dropped: blocked"
        ),
        "{log}"
    );
    assert!(
        log.contains("readtrack deliver to absent session bob@localhost/gone dropped"),
        "{log}"
    );
    assert!(
        log.contains("readtrack <deliver-bytes> without to or a <message> in stanza"),
        "{log}"
    );
}

/// With stream management on, a compact deliver is a stanza smacks counts and queues: the
/// replay written to the connection, and one written while the session hibernates, both come
/// again when the client resumes saying it handled none of them; and the count is exact (`<a
/// h>` one more than was sent is refused, as for the compact ack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_deliver_to_a_session_with_stream_management_is_counted_and_resent_on_resumption()
{
    let p = Prosody::start(ProsodyOpts {
        smacks: true,
        smacks_hibernation_time: 30,
        ..ProsodyOpts::default()
    });
    p.register("bob", "pw");
    let (mut comp, _) = component(&p).await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    bob.sync().await;
    bob.send_raw("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = bob
        .conn
        .expect("<enabled>", WAIT, |s| name(s) == "enabled")
        .await;
    let previd = attr(&enabled, "id").unwrap_or_else(|| panic!("no resumption id: {enabled}"));
    let replay = |id: &str| {
        HookCommand::deliver_bytes(
            jid("bob@localhost/phone"),
            format!(
                "<message to=\"bob@localhost/phone\" id=\"{id}\" type=\"chat\" from=\"alice@localhost/a\">\
                 <body>replayed {id}</body><delay xmlns=\"urn:xmpp:delay\" from=\"localhost\" stamp=\"2026-12-02T10:00:00.000Z\"/></message>"
            ),
        )
        .unwrap()
        .to_xml(COMPONENT, DOMAIN)
    };
    comp.send_raw(&replay("sm-r1")).await;
    bob.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("sm-r1"))
        .await;
    // The connection goes without acking it; the session hibernates.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(500)).await;
    comp.send_raw(&replay("sm-r2")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut conn, features) = Client::authenticate(p.c2s_port, DOMAIN, "bob", "pw").await;
    assert!(features.contains("urn:xmpp:sm:3"), "{features}");
    conn.send_raw(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{}' h='0'/>",
        escape(&previd)
    ))
    .await;
    let resumed = conn
        .expect("<resumed>", WAIT, |s| {
            name(s) == "resumed" || name(s) == "failed"
        })
        .await;
    assert_eq!(name(&resumed), "resumed", "{resumed}");
    for id in ["sm-r1", "sm-r2"] {
        let again = conn
            .expect(id, WAIT, |s| {
                name(s) == "message" && attr(s, "id").as_deref() == Some(id)
            })
            .await;
        assert!(again.contains(&format!("replayed {id}")), "{again}");
    }
    // Two stanzas since <enabled>, both replays: acking two is fine, three is not.
    conn.send_raw("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    conn.send_raw("<a xmlns='urn:xmpp:sm:3' h='3'/>").await;
    expect_refused_overack(&mut conn).await;
}

/// Client state indication (mod_csi_simple) holds an inactive session's writes until an
/// important stanza comes, which its filter recognises: a compact deliver to such a session is
/// a stanza object that filter sees, so a replayed chat message arrives at once (bytes written
/// past it would wait for the next important stanza).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_deliver_to_an_inactive_session_goes_through_client_state_indication() {
    let p = Prosody::start(ProsodyOpts {
        extra_modules: vec!["csi_simple".into()],
        ..ProsodyOpts::default()
    });
    p.register("bob", "pw");
    let (mut comp, _) = component(&p).await;
    let mut bob = available(&p, &mut comp, "bob", "phone").await;
    bob.sync().await;
    bob.send_raw("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    // Nothing more from the client: anything it sends flushes and lifts the hold for a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let command = HookCommand::deliver_bytes(
        jid("bob@localhost/phone"),
        "<message to=\"bob@localhost/phone\" id=\"csi-1\" type=\"chat\" from=\"alice@localhost/a\"><body>important</body></message>".into(),
    )
    .unwrap();
    comp.send_raw(&command.to_xml(COMPONENT, DOMAIN)).await;
    let got = bob
        .expect_message(WAIT, |m| attr(m, "id").as_deref() == Some("csi-1"))
        .await;
    assert!(got.contains("<body>important</body>"), "{got}");
}

/// Issue: after a module reload (`prosodyctl shell module reload readtrack <host>`, what an
/// operator does after replacing the module's file) with readtrack still connected, the new
/// module forgot what readtrack had said it accepts (`<accepts>` comes once per connection):
/// receipts went whole as <sent> and claims were no longer confirmed against this readtrack's
/// word. It now keeps that word while the connection is the same (`inherited-namespace` too). The claims the old module
/// held go to offline storage (its memory goes with it), and the new one numbers on after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_reload_keeps_the_links_accepts_and_hands_its_claims_to_offline_storage() {
    let p = server_from(with_admin_shell(), &["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    command(
        &mut comp,
        &format!("<accepts xmlns='{HOOK}' events='signal done-list claims inherited-namespace batched'/>"),
    )
    .await;
    let mut alice = available(&p, &mut comp, "alice", "phone").await;
    alice.send_raw(&chat("c1", "bob@localhost", "c1")).await;
    let c1 = claim_of(&mut comp, "c1").await.expect("c1 claimed");

    p.reload_module("readtrack");
    assert!(
        p.log().contains(
            "readtrack module unloaded: 1 message(s) it had not confirmed went to offline storage"
        ),
        "the old module's claim is handed back\n{}",
        p.log()
    );
    // The same connection: what readtrack accepted still holds.
    let receipt = "<message id='V4NkR-38' type='crs' to='localhost'><received xmlns='urn:xmpp:receipts'>200</received></message>";
    alice.send_raw(receipt).await;
    let event = next_event(&mut comp, "the receipt", |e| match e {
        HookEvent::Signal { message } => message.id.as_deref() == Some("V4NkR-38"),
        HookEvent::Sent { message, .. } => {
            attr(message.original.text(), "id").as_deref() == Some("V4NkR-38")
        }
        _ => false,
    })
    .await;
    assert!(
        matches!(event, HookEvent::Signal { .. }),
        "after the reload a receipt still comes as a signal: {event:?}"
    );
    alice.send_raw(&chat("c2", "bob@localhost", "c2")).await;
    let c2 = claim_of(&mut comp, "c2").await;
    assert_eq!(
        c2,
        Some(c1 + 1),
        "numbered on after the old module's claims"
    );
    command(
        &mut comp,
        &format!("<durable xmlns='{HOOK}' from='{c1}' upto='{}'/>", c1 + 1),
    )
    .await;

    // bob's first device: c1 from mod_offline (handed back), not c2 (readtrack confirmed it).
    let mut bob = online(&p, "bob", "phone").await;
    let got = bob.messages_within(QUIET).await;
    let ids: Vec<String> = got.iter().filter_map(|m| attr(m, "id")).collect();
    assert_eq!(ids, vec!["c1"], "{got:#?}");
    assert!(
        got[0].contains("urn:xmpp:delay"),
        "from mod_offline: {}",
        got[0]
    );
    // A message written to bob's session goes as its bytes, as readtrack accepted.
    alice.send_raw(&chat("c3", "bob@localhost", "c3")).await;
    let raw = raw_routed(&mut comp, "c3").await;
    assert!(
        raw.contains("<f:forwarded xmlns:f='urn:xmpp:forward:0' xmlns='jabber:client'><message "),
        "after the reload a written message still goes as its bytes: {raw}"
    );
}

/// The same for `batched`: after a reload on the same connection, the events of one write still
/// share one `<message>` (a module that forgot the word would send one message per event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_reload_keeps_batched() {
    let p = server_from(with_admin_shell(), &["alice", "bob"]);
    let (mut comp, _) = component(&p).await;
    comp.keep_batches();
    accepts(
        &mut comp,
        "signal done-list claims routed-signal inherited-namespace batched",
    )
    .await;
    let mut alice = online(&p, "alice", "phone").await;
    let mut bob = online(&p, "bob", "phone").await;
    p.reload_module("readtrack");
    let ids = ["r1", "r2", "r3"];
    let burst: String = ids.iter().map(|id| chat(id, "bob@localhost", id)).collect();
    alice.send_raw(&burst).await;
    for id in ids {
        bob.expect_message(WAIT, |m| attr(m, "id").as_deref() == Some(id))
            .await;
    }
    alice.sync().await;
    let routed_per_message: Vec<usize> = comp
        .drain(QUIET)
        .await
        .iter()
        .map(|s| {
            HookEvent::parse_batch(s, DOMAIN)
                .unwrap()
                .iter()
                .filter(|e| matches!(e, Ok(HookEvent::Routed { .. })))
                .count()
        })
        .collect();
    assert_eq!(routed_per_message.iter().sum::<usize>(), 3);
    assert!(
        routed_per_message.iter().any(|n| *n > 1),
        "after the reload the events of one write still share a message: {routed_per_message:?}"
    );
}

/// Eight senders' bursts at once, which keep Prosody's loop busy, are reported whole within a
/// link budget a quarter of their events: the module's own queue must not count as readtrack
/// falling behind ("readtrack is N bytes behind", new messages left untracked). The module wrote
/// its queue only from a timer, which net.server_epoll runs once no connection is ready; on the
/// old module this failed in one run of three here (it depends on the loop never finding its
/// connections idle; `tests/lua_cost.rs`, `a_long_turn_writes_its_events_in_pieces_of_the_flush_size`,
/// checks the write size deterministically). The queue is now written whenever it passes
/// `readtrack_flush_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_that_keep_prosody_busy_are_reported_whole_within_the_link_budget() {
    const SENDERS: usize = 8;
    const N: usize = 400;
    let users: Vec<String> = (0..SENDERS).map(|i| format!("s{i}")).collect();
    let mut names: Vec<&str> = users.iter().map(String::as_str).collect();
    names.push("bob");
    let p = server_from(
        ProsodyOpts {
            extra_host: "readtrack_max_link_backlog = 262144\n".into(),
            ..ProsodyOpts::default()
        },
        &names,
    );
    let (mut comp, _) = component(&p).await;
    let mut senders = Vec::new();
    for u in &users {
        senders.push(available(&p, &mut comp, u, "phone").await);
    }
    let _bob = available(&p, &mut comp, "bob", "phone").await;
    let body = "x".repeat(300);
    // readtrack's side reads as fast as Prosody writes.
    let reader = tokio::spawn(async move {
        let mut routed = 0;
        while routed < SENDERS * N {
            match comp.next_stanza(WAIT).await {
                Some(s) if s.contains("<routed") => routed += 1,
                Some(_) => {}
                None => break,
            }
        }
        routed
    });
    let mut tasks = Vec::new();
    for (k, mut c) in senders.into_iter().enumerate() {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..N {
                c.send_raw(&chat(&format!("b{k}-{i}"), "bob@localhost/phone", &body))
                    .await;
            }
            c
        }));
    }
    let mut open = Vec::new(); // a sender's connection closed early drops what Prosody has not read
    for t in tasks {
        open.push(t.await.unwrap());
    }
    let routed = reader.await.unwrap();
    assert!(
        !p.log().contains("bytes behind"),
        "the module counted its own queue as readtrack's backlog\n{}",
        p.log()
    );
    assert_eq!(routed, SENDERS * N, "every message of the bursts reported");
}

/// The harness's [`unbatch`], which every other test here reads the module's events through:
/// a batch comes out as the messages the module writes one event at a time, byte for byte;
/// anything else comes out whole; a batch holding something besides hook events fails.
#[test]
fn the_harness_cuts_a_batch_into_the_messages_of_its_events() {
    let open = format!("<message from='{DOMAIN}' to='{COMPONENT}'>");
    let events = [
        format!("<available xmlns='{HOOK}' jid='a@localhost/x' session='s1'/>"),
        format!("<routed xmlns='{HOOK}' to='b@localhost'><session jid='b@localhost/y'/><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' id='m1' from='a@localhost/x' to='b@localhost'><body>&lt;hi&gt;</body></message></forwarded></routed>"),
        format!("<done xmlns='{HOOK}' ids='1 2'/>"),
    ];
    let batch = format!("{open}{}</message>", events.concat());
    let cut = unbatch(&batch);
    let alone: Vec<String> = events
        .iter()
        .map(|e| format!("{open}{e}</message>"))
        .collect();
    assert_eq!(cut, alone);
    for one in &alone {
        assert_eq!(unbatch(one), vec![one.clone()]);
    }
    let chat = "<message from='a@localhost/x' to='readtrack.localhost'><body>hi</body><thread>t</thread></message>";
    assert_eq!(unbatch(chat), vec![chat.to_string()]);
    let mixed = format!("{open}{}<body>hi</body></message>", events[0]);
    assert!(std::panic::catch_unwind(|| unbatch(&mixed)).is_err());
    let texted = format!("{open}{}hi{}</message>", events[0], events[2]);
    assert!(std::panic::catch_unwind(|| unbatch(&texted)).is_err());
    let mixed_content = "<message to='readtrack.localhost'>hi<body>there</body><x/></message>";
    assert_eq!(unbatch(mixed_content), vec![mixed_content.to_string()]);
    // A hook event is known by its namespace, however it is declared.
    let prefixed = format!("<h:done xmlns:h='{HOOK}' ids='3'/>");
    let batch = format!("{open}{}{prefixed}</message>", events[2]);
    assert_eq!(
        unbatch(&batch),
        vec![
            format!("{open}{}</message>", events[2]),
            format!("{open}{prefixed}</message>")
        ]
    );
}

//! The service loop's batching bound: one user flooding cannot hold everybody's acks in one
//! giant batch. Real engine and sled store; the component link is replaced by its channels.

use std::sync::atomic::Ordering;
use std::time::Duration;

use readtrack::component::LinkEvent;
use readtrack::engine::Engine;
use readtrack::hooks::{CommandBatch, HookCommand, HookEvent, SnapshotPage};
use readtrack::jid::Jid;
use readtrack::service::{Query, Service};
use readtrack::stanza::Incoming;
use readtrack::store::records::ReceiptState;
use readtrack::store::{Store, StoreOptions};
use tokio::sync::{mpsc, watch};

fn routed(from: &str, to: &str, id: &str) -> String {
    HookEvent::Routed {
        to: Jid::parse(to).unwrap(),
        archive_id: None,
        sent: false,
        claim: None,
        sessions: vec![],
        carbons: vec![],
        message: Incoming::read(&format!("<message xmlns='jabber:client' id='{id}' type='chat' from='{from}' to='{to}'><body>flood</body></message>")),
    }
    .to_xml("localhost", "readtrack.localhost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_committed_in_bounded_batches_and_others_get_their_ack() {
    flood_in_bounded_batches(1).await;
}

/// The same bound when the module writes several events to a message (`batched`): it counts
/// events, not stanzas (it counted stanzas, and a flood of 100 to a stanza went as one batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_batched_events_is_committed_in_bounded_batches() {
    flood_in_bounded_batches(100).await;
}

/// `per_stanza` events to each stanza from the server.
async fn flood_in_bounded_batches(per_stanza: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap();
    let engine = Engine::new(store, seed_config()).unwrap();
    let (command_tx, mut command_rx) = mpsc::channel(8192);
    let service = Service::new(engine, "readtrack.localhost".into(), command_tx);
    let stats = service.stats();
    let (event_tx, event_rx) = mpsc::channel(8192);
    let (_query_tx, query_rx) = mpsc::channel(1);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Everything is queued before the loop starts: the worst case for batching.
    let flood = 3_000;
    event_tx.send(LinkEvent::Connected).await.unwrap();
    const OPEN: &str = "<message from=\"localhost\" to=\"readtrack.localhost\">";
    let events: Vec<String> = (0..flood)
        .map(|i| routed("alice@localhost/a", "bob@localhost", &format!("f{i}")))
        .collect();
    for group in events.chunks(per_stanza) {
        let inner: String = group
            .iter()
            .map(|e| {
                assert!(e.starts_with(OPEN), "{e}");
                &e[OPEN.len()..e.len() - "</message>".len()]
            })
            .collect();
        event_tx
            .send(LinkEvent::Stanza(format!("{OPEN}{inner}</message>")))
            .await
            .unwrap();
    }
    event_tx
        .send(LinkEvent::Stanza(routed(
            "carol@localhost/c",
            "dave@localhost",
            "carol-1",
        )))
        .await
        .unwrap();
    let run = tokio::spawn(service.run(event_rx, query_rx, shutdown_rx));

    let mut acks = 0;
    let mut carol_acked = false;
    while acks < flood + 1 {
        let stanza = tokio::time::timeout(Duration::from_secs(60), command_rx.recv())
            .await
            .expect("acks flow")
            .unwrap();
        let commands = HookCommand::parse_batch(&stanza, "readtrack.localhost").unwrap();
        assert!(commands.len() <= CommandBatch::MAX_COMMANDS);
        for command in commands {
            // Told once per connection, first: what events this readtrack reads.
            if matches!(command, HookCommand::Accepts { .. }) {
                continue;
            }
            let HookCommand::SendAsHost { stanza_xml } = command else {
                panic!("only server acks expected: {command:?}");
            };
            assert!(stanza_xml.contains("10013"), "{stanza_xml}");
            acks += 1;
            carol_acked |= stanza_xml.contains("carol-1");
        }
    }
    assert_eq!(acks, flood + 1, "one ack per message");
    assert!(carol_acked, "carol's ack was released");
    // At most 512 events per flush: 3,001 events take at least 6 batches (the loop used to
    // fill one batch with up to 2,048 acks, or the whole queue when events had no output).
    let batches = stats.batches.load(Ordering::Relaxed);
    assert!(batches >= 6, "{batches} batches for {} events", flood + 1);
    shutdown_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

fn snapshot(executes_ack: bool) -> String {
    snapshot_executing(executes_ack, false)
}

fn snapshot_executing(executes_ack: bool, executes_bounce: bool) -> String {
    HookEvent::Snapshot {
        page: SnapshotPage {
            executes_ack,
            executes_bounce,
            ..SnapshotPage::WHOLE
        },
        sessions: vec![],
    }
    .to_xml("localhost", "readtrack.localhost")
}

/// A module older than the compact ack says nothing in its snapshot and gets every 10013 ack as
/// the whole `<send>` it always ran; one that says `executes='ack'` gets `<ack>` with the same
/// values, on that connection only (the next module may be an older one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ack_is_compact_only_on_a_connection_whose_module_executes_it() {
    let Running {
        _dir,
        events: event_tx,
        commands: mut command_rx,
        shutdown: shutdown_tx,
        run,
        ..
    } = running(seed_config());

    let mut acks = Vec::new();
    for (id, executes_ack) in [("old-1", false), ("new-1", true), ("old-2", false)] {
        event_tx.send(LinkEvent::Connected).await.unwrap();
        let events = [
            snapshot(executes_ack),
            routed("alice@localhost/a", "bob@localhost", id),
        ];
        for event in events {
            event_tx.send(LinkEvent::Stanza(event)).await.unwrap();
        }
        let ack = first_command(&mut command_rx, "the ack", |c| {
            !matches!(c, HookCommand::Accepts { .. })
        })
        .await;
        acks.push(ack);
        disconnect(&event_tx).await;
    }
    let [old_1, new_1, old_2] = <[HookCommand; 3]>::try_from(acks).unwrap();
    for (old, id) in [(old_1, "old-1"), (old_2, "old-2")] {
        let HookCommand::SendAsHost { stanza_xml } = old else {
            panic!("{id}: not a whole <send>: {old:?}");
        };
        assert!(
            stanza_xml.contains(&format!(
                "id=\"{id}\" type=\"crs\" from=\"localhost\" to=\"alice@localhost/a\""
            )),
            "{stanza_xml}"
        );
    }
    let HookCommand::Ack {
        to,
        message_id,
        time,
    } = new_1
    else {
        panic!("not a compact <ack>: {new_1:?}");
    };
    assert_eq!(to, Jid::parse("alice@localhost/a").unwrap());
    assert_eq!(message_id, "new-1");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    shutdown_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

/// Rolling upgrade of the bounce (issue 17 item 2): a module whose snapshot does not name
/// `bounce` (older, or one that executes only the compact ack) gets each delay bounce as the whole
/// `<send>` it always ran; one that says `executes='ack bounce'` gets `<bounce>` with the same
/// values and the same confirmation id, on that connection only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_is_compact_only_on_a_connection_whose_module_executes_it() {
    let mut config = seed_config();
    config.receipt_timeout = Duration::from_millis(50);
    let Running {
        _dir,
        events: event_tx,
        commands: mut command_rx,
        shutdown: shutdown_tx,
        run,
        ..
    } = running(config);

    let mut bounces = Vec::new();
    for (id, executes) in [
        ("old-1", (false, false)),
        ("acks-1", (true, false)),
        ("new-1", (true, true)),
    ] {
        event_tx.send(LinkEvent::Connected).await.unwrap();
        for event in [
            snapshot_executing(executes.0, executes.1),
            routed("alice@localhost/a", "bob@localhost", id),
        ] {
            event_tx.send(LinkEvent::Stanza(event)).await.unwrap();
        }
        // Unconfirmed bounces of earlier connections come again: this one's is wanted.
        let bounce = first_command(&mut command_rx, "the bounce", |c| match c {
            HookCommand::Bounce { message_id, .. } => message_id == id,
            HookCommand::SendAsHost { stanza_xml } => {
                stanza_xml.contains("type=\"error\"")
                    && stanza_xml.contains(&format!("id=\"{id}\""))
            }
            _ => false,
        })
        .await;
        bounces.push(bounce);
        disconnect(&event_tx).await;
    }
    let [old_1, acks_1, new_1] = <[HookCommand; 3]>::try_from(bounces).unwrap();
    for (old, id) in [(old_1, "old-1"), (acks_1, "acks-1")] {
        let HookCommand::SendAsHost { stanza_xml } = old else {
            panic!("{id}: not a whole <send>: {old:?}");
        };
        assert!(
            stanza_xml.contains(&format!(
                "id=\"{id}\" type=\"error\" from=\"localhost\" to=\"alice@localhost/a\"><body>flood</body>"
            )),
            "{stanza_xml}"
        );
    }
    let HookCommand::Bounce {
        to,
        message_id,
        body,
        time,
    } = new_1
    else {
        panic!("not a compact <bounce>: {new_1:?}");
    };
    assert_eq!(to, Jid::parse("alice@localhost/a").unwrap());
    assert_eq!(message_id, "new-1");
    assert_eq!(body.as_deref(), Some("flood"));
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    shutdown_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

/// The first command the service sends that `wanted` picks, batch by batch (the rest of its
/// batch is dropped); `what` names it when none comes within 20 s.
async fn first_command(
    commands: &mut mpsc::Receiver<String>,
    what: &str,
    wanted: impl Fn(&HookCommand) -> bool,
) -> HookCommand {
    loop {
        let stanza = tokio::time::timeout(Duration::from_secs(20), commands.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} does not come"))
            .unwrap();
        let batch = HookCommand::parse_batch(&stanza, "readtrack.localhost").unwrap();
        if let Some(command) = batch.into_iter().find(|c| wanted(c)) {
            return command;
        }
    }
}

/// The link to this module's connection ends (the next round connects a different module).
async fn disconnect(events: &mpsc::Sender<LinkEvent>) {
    events
        .send(LinkEvent::Disconnected {
            reason: "next module".into(),
        })
        .await
        .unwrap();
}

/// The engine's defaults in the seed dialect (server acks to every client), which these tests
/// exercise.
fn seed_config() -> readtrack::engine::EngineConfig {
    let mut config = readtrack::engine::EngineConfig::new("localhost");
    config.dialect = readtrack::engine::Dialect::Seed;
    config
}

/// A service loop on a real sled store in a temporary folder (kept as long as `_dir`), its
/// component link replaced by channels: `events` in, `commands` out.
struct Running {
    _dir: tempfile::TempDir,
    events: mpsc::Sender<LinkEvent>,
    commands: mpsc::Receiver<String>,
    shutdown: watch::Sender<bool>,
    /// Closures run on the engine between link events: a test's window into its store.
    queries: mpsc::Sender<Query>,
    run: tokio::task::JoinHandle<Result<Engine, readtrack::service::ServiceError>>,
}

fn running(config: readtrack::engine::EngineConfig) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap();
    let engine = Engine::new(store, config).unwrap();
    let (command_tx, commands) = mpsc::channel(64);
    let service = Service::new(engine, "readtrack.localhost".into(), command_tx);
    let (events, event_rx) = mpsc::channel(64);
    let (queries, query_rx) = mpsc::channel(1);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let run = tokio::spawn(service.run(event_rx, query_rx, shutdown_rx));
    Running {
        _dir: dir,
        events,
        commands,
        shutdown,
        queries,
        run,
    }
}

/// A `<done ids>` (issue 17 item 2) settles every bounce it names, as one `<done id>` each
/// would: bounces of two messages, confirmed by one event, are not sent again on the next
/// connection, where an unconfirmed one is (the control: the third message's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_list_settles_every_bounce_it_names() {
    let mut config = seed_config();
    config.receipt_timeout = Duration::from_millis(50);
    let Running {
        _dir,
        events: event_tx,
        commands: mut command_rx,
        shutdown: shutdown_tx,
        queries,
        run,
    } = running(config);

    // The command id of each compact bounce seen, by the bounced message's id, until `want`.
    async fn bounces(
        command_rx: &mut mpsc::Receiver<String>,
        want: &[&str],
    ) -> std::collections::BTreeMap<String, String> {
        let mut seen = std::collections::BTreeMap::new();
        while !want.iter().all(|m| seen.contains_key(*m)) {
            let stanza = tokio::time::timeout(Duration::from_secs(20), command_rx.recv())
                .await
                .unwrap_or_else(|_| panic!("bounces of {want:?} come; got {seen:?}"))
                .unwrap();
            // Each <bounce> element: its message-id and its command id.
            for element in stanza.split("<bounce ").skip(1) {
                let value = |name: &str| {
                    let start = element.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                    element[start..][..element[start..].find('"').unwrap()].to_string()
                };
                seen.insert(value("message-id"), value("id"));
            }
        }
        seen
    }

    event_tx.send(LinkEvent::Connected).await.unwrap();
    event_tx
        .send(LinkEvent::Stanza(snapshot_executing(true, true)))
        .await
        .unwrap();
    for id in ["m1", "m2", "m3"] {
        event_tx
            .send(LinkEvent::Stanza(routed(
                "alice@localhost/a",
                "bob@localhost",
                id,
            )))
            .await
            .unwrap();
    }
    let first = bounces(&mut command_rx, &["m1", "m2", "m3"]).await;
    event_tx
        .send(LinkEvent::Stanza(
            HookEvent::DoneList {
                ids: vec![first["m1"].clone(), first["m2"].clone()],
            }
            .to_xml("localhost", "readtrack.localhost"),
        ))
        .await
        .unwrap();
    // Bounces are sent again every 50 ms until confirmed: those sent before the service read
    // the done list may still be queued. Wait until the store shows m1 and m2 settled, then
    // drop what was sent until then.
    let settled = |id: &str| {
        let (user, seq) = id["bounce-".len()..].split_once('-').unwrap();
        (user.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    };
    let confirmed = [settled(&first["m1"]), settled(&first["m2"])];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        queries
            .send(Box::new(move |engine: &mut Engine, _| {
                let bouncing = confirmed.iter().any(|&(user, seq)| {
                    engine
                        .store()
                        .message(user, seq)
                        .unwrap()
                        .is_some_and(|m| matches!(m.receipt, ReceiptState::Bouncing { .. }))
                });
                let _ = tx.send(bouncing);
            }))
            .await
            .unwrap();
        if !rx.await.unwrap() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the done list settles m1 and m2"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while command_rx.try_recv().is_ok() {}
    event_tx
        .send(LinkEvent::Disconnected {
            reason: "next module".into(),
        })
        .await
        .unwrap();
    event_tx.send(LinkEvent::Connected).await.unwrap();
    event_tx
        .send(LinkEvent::Stanza(snapshot_executing(true, true)))
        .await
        .unwrap();
    let again = bounces(&mut command_rx, &["m3"]).await;
    // Whatever came with m3's resend: neither settled bounce.
    assert!(
        !again.contains_key("m1") && !again.contains_key("m2"),
        "settled bounces sent again: {again:?}"
    );
    assert_eq!(again["m3"], first["m3"], "the resend keeps its id");
    shutdown_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

/// Rolling upgrade of the replay's compact form: a module whose snapshot does not name
/// `deliver-bytes` (older) gets each replayed message as the whole `<deliver>` it always ran;
/// one that says `executes='... deliver-bytes'` gets `<deliver-bytes>` on that connection only,
/// carrying the same stanza (as it stands on the client's stream, no namespace on it) with its
/// `from` and `id` beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_compact_only_on_a_connection_whose_module_executes_it() {
    let Running {
        _dir,
        events: event_tx,
        commands: mut command_rx,
        shutdown: shutdown_tx,
        run,
        ..
    } = running(seed_config());

    let mut replays = Vec::new();
    for (n, executes) in [false, true, false].into_iter().enumerate() {
        let device = format!("bob{n}@localhost/phone");
        event_tx.send(LinkEvent::Connected).await.unwrap();
        let snapshot = HookEvent::Snapshot {
            page: SnapshotPage {
                executes_ack: true,
                executes_bounce: true,
                executes_deliver_bytes: executes,
                ..SnapshotPage::WHOLE
            },
            sessions: vec![],
        };
        let available = HookEvent::Available {
            jid: Jid::parse(&device).unwrap(),
            device_id: None,
            session_id: None,
        };
        for event in [
            snapshot.to_xml("localhost", "readtrack.localhost"),
            routed("alice@localhost/a", &format!("bob{n}@localhost"), "r&amp;1"),
            available.to_xml("localhost", "readtrack.localhost"),
        ] {
            event_tx.send(LinkEvent::Stanza(event)).await.unwrap();
        }
        let replay = first_command(&mut command_rx, "the replay", |c| {
            matches!(
                c,
                HookCommand::Deliver { .. } | HookCommand::DeliverBytes { .. }
            )
        })
        .await;
        replays.push(replay);
        disconnect(&event_tx).await;
    }
    let [old_1, new, old_2] = <[HookCommand; 3]>::try_from(replays).unwrap();
    let mut whole = Vec::new();
    for (old, n) in [(old_1, 0), (old_2, 2)] {
        let HookCommand::Deliver { to, stanza_xml } = old else {
            panic!("{n}: not a whole <deliver>: {old:?}");
        };
        assert_eq!(to, Jid::parse(&format!("bob{n}@localhost/phone")).unwrap());
        whole.push(stanza_xml);
    }
    let HookCommand::DeliverBytes {
        to,
        from,
        message_id,
        stanza_xml,
    } = new
    else {
        panic!("not a compact <deliver-bytes>: {new:?}");
    };
    assert_eq!(to, Jid::parse("bob1@localhost/phone").unwrap());
    assert_eq!(from.as_deref(), Some("alice@localhost/a"));
    assert_eq!(message_id.as_deref(), Some("r&1"));
    // The same stanza as the whole form's, but for the namespace left to the client's stream,
    // the user, and what differs between two replays: the times, the stanza id readtrack made.
    assert!(
        stanza_xml.starts_with("<message to=\"bob1@localhost/phone\" id=\"r&amp;1\""),
        "{stanza_xml}"
    );
    assert!(
        !stanza_xml.contains("xmlns=\"jabber:client\""),
        "{stanza_xml}"
    );
    let whole = whole[0]
        .replace(" xmlns=\"jabber:client\"", "")
        .replace("bob0@", "bob1@");
    assert_eq!(masked(&whole), masked(&stanza_xml));
    shutdown_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

/// `xml` with the values of `current`, `stamp` and the stanza id's `id` left out.
fn masked(xml: &str) -> String {
    let mut out = xml.to_string();
    for name in [" current=\"", " stamp=\"", "urn:xmpp:sid:0\" id=\""] {
        let at = out
            .find(name)
            .unwrap_or_else(|| panic!("no {name} in {xml}"))
            + name.len();
        let end = at + out[at..].find('"').unwrap();
        out.replace_range(at..end, "");
    }
    out
}

/// Escaped into an attribute a stanza can grow (a line end is five bytes there): a large replay
/// goes compact only where that makes its command hardly longer than the whole one, so the
/// compact form does not take a command past a stanza limit the whole one kept within. A large
/// body of plain text goes compact, one of line ends whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_replay_goes_compact_only_where_escaping_does_not_lengthen_it() {
    let Running {
        _dir,
        events: event_tx,
        commands: mut command_rx,
        shutdown: shutdown_tx,
        run,
        ..
    } = running(seed_config());

    event_tx.send(LinkEvent::Connected).await.unwrap();
    let snapshot = HookEvent::Snapshot {
        page: SnapshotPage {
            executes_ack: true,
            executes_bounce: true,
            executes_deliver_bytes: true,
            ..SnapshotPage::WHOLE
        },
        sessions: vec![],
    };
    let routed = |id: &str, body: &str| {
        HookEvent::Routed {
            to: Jid::parse("bob@localhost").unwrap(),
            archive_id: None,
            sent: false,
            claim: None,
            sessions: vec![],
            carbons: vec![],
            message: Incoming::read(&format!("<message xmlns='jabber:client' id='{id}' type='chat' from='alice@localhost/a' to='bob@localhost'><body>{body}</body></message>")),
        }
        .to_xml("localhost", "readtrack.localhost")
    };
    let available = HookEvent::Available {
        jid: Jid::parse("bob@localhost/phone").unwrap(),
        device_id: None,
        session_id: None,
    };
    for event in [
        snapshot.to_xml("localhost", "readtrack.localhost"),
        routed("text", &"a".repeat(20_000)),
        routed("lines", &"\n".repeat(20_000)),
        available.to_xml("localhost", "readtrack.localhost"),
    ] {
        event_tx.send(LinkEvent::Stanza(event)).await.unwrap();
    }
    let mut replays = Vec::new();
    while replays.len() < 2 {
        let stanza = tokio::time::timeout(Duration::from_secs(20), command_rx.recv())
            .await
            .expect("the replays come")
            .unwrap();
        replays.extend(
            HookCommand::parse_batch(&stanza, "readtrack.localhost")
                .unwrap()
                .into_iter()
                .filter(|c| {
                    matches!(
                        c,
                        HookCommand::Deliver { .. } | HookCommand::DeliverBytes { .. }
                    )
                }),
        );
    }
    assert!(
        matches!(&replays[0], HookCommand::DeliverBytes { message_id: Some(id), .. } if id == "text"),
        "{:?}",
        replays[0]
    );
    assert!(
        matches!(&replays[1], HookCommand::Deliver { stanza_xml, .. } if stanza_xml.contains("id=\"lines\"")),
        "{:?}",
        replays[1]
    );
    shutdown_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

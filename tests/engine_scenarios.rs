//! The engine's rules as scenarios, one test each, on a real store: sled in a temp folder, or a
//! fresh PostgreSQL database with `READTRACK_TEST_BACKEND=postgres` (tests/common/backend.rs).
//! Every scenario also runs in a `_reopened` variant that closes and reopens the store between
//! any two steps: durability must change no outcome.

mod common;

use common::jid;
use std::time::Duration;

use readtrack::engine::{Dialect, Engine, EngineConfig, Input, Output, ReceiptPolicy};
use readtrack::hooks::SessionInfo;
use readtrack::jid::{DeviceKeyRule, Jid};
use readtrack::stanza::{Message, MessageType, Outgoing, Receipt, Replay};
use readtrack::store::{DeviceRecord, Location, Store, StoreOptions};

use common::backend;
use readtrack::time::Millis;

const T0: u64 = 1_700_000_000_000;

/// A chat message as a client sends it (docs/protocol.md, the seed dialect).
fn chat(from: &str, to: &str, id: &str, body: &str) -> Message {
    let mut m = Message::new(MessageType::Chat);
    m.id = Some(id.into());
    m.from = Some(jid(from));
    m.to = Some(jid(to));
    m.body = Some(body.into());
    m
}

/// Seed receipt `<received xmlns="urn:xmpp:receipts">200</received>`, addressed to the server.
fn crs_received(from: &str, id: &str) -> Message {
    let mut m = Message::new(MessageType::Crs);
    m.id = Some(id.into());
    m.from = Some(jid(from));
    m.to = Some(jid("example.com"));
    m.receipt = Some(Receipt::SeedReceived {
        id: id.into(),
        status: "200".into(),
    });
    m
}

/// Seed ack of a replay: `type="crs"` with `<offline xmlns="urn:xmpp:offline"/>`.
fn crs_offline(from: &str, id: &str) -> Message {
    let mut m = crs_received(from, id);
    m.receipt = Some(Receipt::SeedOffline { id: id.into() });
    m
}

/// XEP-0184 receipt, addressed to the original sender.
fn xep_received(from: &str, to: &str, id: &str) -> Message {
    let mut m = Message::new(MessageType::Chat);
    m.from = Some(jid(from));
    m.to = Some(jid(to));
    m.receipt = Some(Receipt::Xep0184 { id: id.into() });
    m
}

struct World {
    /// Holds a sled store's folder for the test's length.
    #[allow(dead_code)]
    dir: tempfile::TempDir,
    location: Location,
    engine: Option<Engine>,
    config: EngineConfig,
    now: Millis,
    /// Close and reopen the store before every step.
    reopen_each_step: bool,
    /// The server's id of each session now online, by full JID (as mod_readtrack numbers them).
    session_ids: std::collections::HashMap<String, String>,
    connections: u64,
    store_options: StoreOptions,
}

impl Drop for World {
    fn drop(&mut self) {
        drop(self.engine.take());
        backend::drop_location(&self.location);
    }
}

impl World {
    fn new(reopen_each_step: bool) -> World {
        World::with(reopen_each_step, |_| {})
    }

    fn with(reopen_each_step: bool, tune: impl FnOnce(&mut EngineConfig)) -> World {
        World::with_store(reopen_each_step, StoreOptions::default(), tune)
    }

    fn with_store(
        reopen_each_step: bool,
        store_options: StoreOptions,
        tune: impl FnOnce(&mut EngineConfig),
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new("example.com");
        // The scenarios spell out the seed dialect; `auto` has its own below.
        config.dialect = Dialect::Seed;
        tune(&mut config);
        let location = backend::test_location(dir.path());
        let store = Store::open_location(&location, &store_options).unwrap();
        let engine = Engine::new(store, config.clone()).unwrap();
        World {
            dir,
            location,
            engine: Some(engine),
            config,
            now: Millis(T0),
            reopen_each_step,
            session_ids: Default::default(),
            connections: 0,
            store_options,
        }
    }

    fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().unwrap()
    }

    fn reopen(&mut self) {
        let store = self.engine.take().unwrap().close().unwrap();
        drop(store);
        let store = Store::open_location(&self.location, &self.store_options).unwrap();
        self.engine = Some(Engine::new(store, self.config.clone()).unwrap());
    }

    fn maybe_reopen(&mut self) {
        if self.reopen_each_step {
            self.reopen();
        }
    }

    /// The server executes every command at once and confirms those that ask for it, as
    /// mod_readtrack answers `<done id>`.
    fn server_confirms(&mut self, out: &[Output]) {
        for o in out {
            if let Output::SendAsHost {
                confirm: Some(id), ..
            } = o
            {
                self.engine().confirm(id).unwrap();
            }
        }
    }

    /// One input, then a commit: what the service does per batch. Returns everything written.
    fn step(&mut self, input: Input) -> Vec<Output> {
        self.maybe_reopen();
        let now = self.now;
        let mut out = self.engine().handle(input, now).unwrap();
        out.extend(self.engine().commit().unwrap());
        self.server_confirms(&out);
        out
    }

    /// Lets time pass, then ticks and commits.
    fn advance(&mut self, by: Duration) -> Vec<Output> {
        self.maybe_reopen();
        self.now = self.now.plus(by);
        let now = self.now;
        let mut out = self.engine().tick(now).unwrap();
        out.extend(self.engine().commit().unwrap());
        self.server_confirms(&out);
        out
    }

    /// A new connection of `full` sends its initial presence.
    fn online(&mut self, full: &str) -> Vec<Output> {
        let session_id = Some(self.connect(full));
        self.step(Input::Available {
            jid: jid(full),
            device_id: None,
            session_id,
        })
    }

    /// A new connection of `full`, with a server id of its own; readtrack is not told.
    fn connect(&mut self, full: &str) -> String {
        self.connections += 1;
        let id = format!("conn{}", self.connections);
        self.session_ids.insert(full.to_string(), id.clone());
        id
    }

    fn offline(&mut self, full: &str) -> Vec<Output> {
        let session_id = self.session_ids.remove(full);
        self.step(Input::Unavailable {
            jid: jid(full),
            session_id,
        })
    }

    /// What the server lists after readtrack reconnects: these sessions, each with the id of
    /// its current connection.
    fn snapshot(&mut self, online: &[&str]) -> Vec<Output> {
        let sessions = online
            .iter()
            .map(|full| SessionInfo {
                jid: jid(full),
                device_id: None,
                session_id: self.session_ids.get(*full).cloned(),
            })
            .collect();
        self.step(Input::Snapshot { sessions })
    }

    fn route(&mut self, message: Message, live_to: &[&str]) -> Vec<Output> {
        self.routed(message, live_to, false)
    }

    /// Routed with `sent`: the module's single event for a local client's message to a local
    /// user.
    fn route_sent(&mut self, message: Message, live_to: &[&str]) -> Vec<Output> {
        self.routed(message, live_to, true)
    }

    fn routed(&mut self, message: Message, live_to: &[&str], sent: bool) -> Vec<Output> {
        let to = message.to.clone().unwrap().to_bare();
        let sessions = live_to.iter().map(|s| jid(s)).collect();
        self.step(Input::routed(message, to, sessions, None, sent))
    }

    fn client_sends(&mut self, message: Message) -> Vec<Output> {
        self.step(Input::sent(message))
    }

    fn device(&mut self, user: &str, key: &str) -> DeviceRecord {
        let store = self.engine().store();
        let uid = store.user_id(user).unwrap().expect("user exists");
        store
            .devices(uid)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d)
            .find(|d| d.key == key)
            .expect("device exists")
    }

    fn logged(&mut self, user: &str) -> u64 {
        let store = self.engine().store();
        let uid = store.user_id(user).unwrap().expect("user exists");
        store.messages_after(uid, 0).count() as u64
    }
}

fn replays(out: &[Output]) -> Vec<(Jid, Replay)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver {
                to,
                stanza: Outgoing::Replay(r),
            } => Some((to.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

fn replayed_ids(out: &[Output]) -> Vec<String> {
    replays(out)
        .into_iter()
        .map(|(_, r)| r.original().unwrap().id.unwrap())
        .collect()
}

fn acks(out: &[Output]) -> Vec<(Jid, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::SendAsHost {
                confirm: _,
                stanza: Outgoing::ServerAck { to, id, from, .. },
            } => {
                assert_eq!(from, "example.com");
                Some((to.clone(), id.clone()))
            }
            _ => None,
        })
        .collect()
}

fn bounces(out: &[Output]) -> Vec<(Jid, String, Option<String>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::SendAsHost {
                confirm: _,
                stanza:
                    Outgoing::Bounce {
                        to, id, body, from, ..
                    },
            } => {
                assert_eq!(from, "example.com");
                Some((to.clone(), id.clone(), body.clone()))
            }
            _ => None,
        })
        .collect()
}

macro_rules! scenario {
    ($name:ident, $reopened:ident, $body:expr) => {
        #[test]
        fn $name() {
            ($body)(false)
        }
        #[test]
        fn $reopened() {
            ($body)(true)
        }
    };
}

const HELLO: &str =
    r#"{"time":"2013-11-20T06:41:36.102Z","cnt":"hello","msgTypec":"10000","mtype":"0"}"#;

scenario!(online_chat, online_chat_reopened, |reopen| {
    let mut w = World::new(reopen);
    assert!(w.online("bob@example.com/phone").is_empty());

    // The server wrote A's message to B's phone live; readtrack logs it, then acks A.
    w.maybe_reopen();
    let flushes_before = w.engine().store().flushes();
    let message = chat(
        "alice@example.com/Spark 2.6.3",
        "bob@example.com/phone",
        "V4NkR-38",
        HELLO,
    );
    let to = jid("bob@example.com");
    let now = w.now;
    let immediate = w
        .engine()
        .handle(
            Input::routed(message, to, vec![jid("bob@example.com/phone")], None, false),
            now,
        )
        .unwrap();
    assert!(
        acks(&immediate).is_empty(),
        "no ack before the write is durable"
    );
    assert_eq!(w.engine().held(), 1);
    let released = w.engine().commit().unwrap();
    assert!(
        w.engine().store().flushes() > flushes_before,
        "the ack is released only after a flush"
    );
    assert_eq!(
        acks(&released),
        vec![(jid("alice@example.com/Spark 2.6.3"), "V4NkR-38".to_string())]
    );

    // The phone's crs receipt moves its cursor; the delivery is no longer pending.
    assert!(w
        .client_sends(crs_received("bob@example.com/phone", "V4NkR-38"))
        .is_empty());
    let phone = w.device("bob@example.com", "phone");
    assert_eq!((phone.acked_upto, phone.acked_above.len()), (1, 0));
    assert_eq!(w.engine().counters().receipts_accepted, 1);

    // Acked in time: no bounce.
    assert!(bounces(&w.advance(Duration::from_secs(30))).is_empty());
    assert_eq!(w.engine().counters().bounces, 0);
});

scenario!(
    bounce_after_timeout,
    bounce_after_timeout_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        w.online("bob@example.com/phone");
        w.route(
            chat(
                "alice@example.com/Spark",
                "bob@example.com",
                "V4NkR-38",
                HELLO,
            ),
            &["bob@example.com/phone"],
        );

        assert!(
            bounces(&w.advance(Duration::from_millis(9_999))).is_empty(),
            "not before 10 s"
        );
        let out = w.advance(Duration::from_millis(1));
        assert_eq!(
            bounces(&out),
            vec![(
                jid("alice@example.com/Spark"),
                "V4NkR-38".into(),
                Some(HELLO.into())
            )]
        );
        assert!(
            bounces(&w.advance(Duration::from_secs(60))).is_empty(),
            "bounced once"
        );

        // Still logged and unread for the phone.
        assert_eq!(w.logged("bob@example.com"), 1);
        assert_eq!(w.device("bob@example.com", "phone").acked_upto, 0);
    }
);

scenario!(
    offline_replay_option_one,
    offline_replay_option_one_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        // B has used both devices before; both are offline now.
        w.online("bob@example.com/phone");
        w.online("bob@example.com/laptop");
        w.offline("bob@example.com/phone");
        w.offline("bob@example.com/laptop");

        let logged_at = w.now;
        let out = w.route(
            chat(
                "alice@example.com/Spark",
                "bob@example.com",
                "HncqL-65",
                "hi bob",
            ),
            &[],
        );
        assert_eq!(acks(&out).len(), 1);
        assert_eq!(bounces(&w.advance(Duration::from_secs(10))).len(), 1);

        // The phone logs in: the message is replayed with the offline marker and the delay stamp.
        let out = w.online("bob@example.com/phone");
        let r = replays(&out);
        assert_eq!(r.len(), 1);
        let (to, replay) = &r[0];
        assert_eq!(to, &jid("bob@example.com/phone"));
        assert_eq!(
            replay.original().unwrap().from,
            Some(jid("alice@example.com/Spark"))
        );
        assert_eq!(replay.original().unwrap().id.as_deref(), Some("HncqL-65"));
        assert_eq!(replay.original().unwrap().body.as_deref(), Some("hi bob"));
        assert!(replay.offline_marker);
        assert_eq!(replay.delay_from.as_deref(), Some("example.com"));
        assert_eq!(replay.logged_at, logged_at);
        assert!(replay.request_receipt);
        assert_eq!(replay.stanza_id_by, "bob@example.com");

        // The phone acks with the offline namespace: its cursor moves.
        w.client_sends(crs_offline("bob@example.com/phone", "HncqL-65"));
        assert_eq!(w.device("bob@example.com", "phone").acked_upto, 1);

        // Option One: the laptop, logging in later, gets the same message too.
        let out = w.online("bob@example.com/laptop");
        assert_eq!(replayed_ids(&out), vec!["HncqL-65".to_string()]);
        assert_eq!(replays(&out)[0].1.stanza_id, replay.stanza_id);
        assert_eq!(w.device("bob@example.com", "laptop").acked_upto, 0);
    }
);

scenario!(
    never_acked_is_replayed_again,
    never_acked_is_replayed_again_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        w.online("bob@example.com/phone");
        w.offline("bob@example.com/phone");
        w.route(
            chat("alice@example.com/a", "bob@example.com", "m1", "one"),
            &[],
        );

        let first = replays(&w.online("bob@example.com/phone"));
        assert_eq!(first.len(), 1);
        // A second availability in the same session is not a new login; but a new login is.
        w.offline("bob@example.com/phone");
        let second = replays(&w.online("bob@example.com/phone"));
        assert_eq!(
            second.len(),
            1,
            "at least once: replayed again on the next login"
        );
        assert_eq!(
            second[0].1.original().unwrap().id,
            first[0].1.original().unwrap().id
        );
        assert_eq!(second[0].1.stanza_id, first[0].1.stanza_id);
    }
);

impl World {
    /// `id` from alice, written live to bob's phone, which acks it.
    fn read_on_phone(&mut self, id: &str) {
        self.route(
            chat("alice@example.com/a", "bob@example.com", id, "x"),
            &["bob@example.com/phone"],
        );
        self.client_sends(crs_received("bob@example.com/phone", id));
    }
}

scenario!(
    new_device_gets_history,
    new_device_gets_history_reopened,
    |reopen| {
        // What another device already acked reaches a new device as history: the last
        // `history` messages.
        let mut w = World::with(reopen, |c| c.history = 2);
        for i in 1..=5 {
            w.read_on_phone(&format!("m{i}"));
        }
        let out = w.online("bob@example.com/tablet");
        assert_eq!(replayed_ids(&out), vec!["m4".to_string(), "m5".to_string()]);
        assert_eq!(w.device("bob@example.com", "tablet").acked_upto, 3);

        let mut w = World::with(reopen, |c| c.history = 0);
        w.read_on_phone("m1");
        assert!(replays(&w.online("bob@example.com/tablet")).is_empty());

        // history_max_age bounds the count: only messages younger than the window.
        let mut w = World::with(reopen, |c| {
            c.history = 10;
            c.history_max_age = Some(Duration::from_secs(3600));
        });
        w.read_on_phone("old");
        w.advance(Duration::from_secs(7200));
        w.read_on_phone("new");
        assert_eq!(
            replayed_ids(&w.online("bob@example.com/tablet")),
            vec!["new".to_string()]
        );
    }
);

scenario!(
    a_first_device_after_an_absence_gets_every_undelivered_message,
    a_first_device_after_an_absence_gets_every_undelivered_message_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| {
            c.history = 2;
            c.history_max_age = Some(Duration::from_secs(3600));
        });
        // Acked to alice (10013) while bob has no device at all, some of it long ago: none of
        // it may be left to the history window.
        for i in 1..=5 {
            w.route(
                chat(
                    "alice@example.com/a",
                    "bob@example.com",
                    &format!("m{i}"),
                    "x",
                ),
                &[],
            );
            w.advance(Duration::from_secs(3000));
        }
        // Retention keeps what no device has acked, however far outside the window.
        let now = w.now;
        assert_eq!(w.engine().retain(now, 1_000).unwrap().deleted, 0);
        let ids: Vec<String> = (1..=5).map(|i| format!("m{i}")).collect();
        assert_eq!(replayed_ids(&w.online("bob@example.com/tablet")), ids);

        // The phone, new too, starts at the lower of the undelivered point and the window: the
        // tablet has acked nothing yet, so it gets everything as well.
        assert_eq!(replayed_ids(&w.online("bob@example.com/phone")), ids);
        // Once the tablet acked m1..m3, a third device gets m4, m5 and the window.
        for i in 1..=3 {
            w.client_sends(crs_received("bob@example.com/tablet", &format!("m{i}")));
        }
        let out = w.online("bob@example.com/laptop");
        assert_eq!(replayed_ids(&out), vec!["m4".to_string(), "m5".to_string()]);
    }
);

scenario!(
    out_of_order_receipts,
    out_of_order_receipts_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        w.online("bob@example.com/phone");
        for id in ["m1", "m2", "m3"] {
            w.route(
                chat("alice@example.com/a", "bob@example.com", id, "x"),
                &["bob@example.com/phone"],
            );
        }
        w.client_sends(crs_received("bob@example.com/phone", "m3"));
        let d = w.device("bob@example.com", "phone");
        assert_eq!((d.acked_upto, d.acked_above.clone()), (0, vec![3]));
        w.client_sends(crs_received("bob@example.com/phone", "m1"));
        w.client_sends(crs_received("bob@example.com/phone", "m2"));
        let d = w.device("bob@example.com", "phone");
        assert_eq!((d.acked_upto, d.acked_above), (3, vec![]));
    }
);

scenario!(
    system_messages_and_policy,
    system_messages_and_policy_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| c.policy = ReceiptPolicy::System);
        w.online("carol@example.com/phone");
        // docs/protocol.md, system messages: from the domain itself, no type.
        let mut system = Message::new(MessageType::Normal);
        system.id = Some("gJE6T-2".into());
        system.from = Some(jid("example.com"));
        system.to = Some(jid("carol@example.com"));
        system.body = Some(r#"{"optType":"add","groupId":"room100","msgType":10001}"#.into());
        let out = w.route(system.clone(), &["carol@example.com/phone"]);
        assert!(
            acks(&out).is_empty(),
            "the server does not ack its own message"
        );

        // Its receipt: type="chat" with <received type="200"/>.
        let mut receipt = Message::new(MessageType::Chat);
        receipt.id = Some("gJE6T-2".into());
        receipt.from = Some(jid("carol@example.com/phone"));
        receipt.to = Some(jid("example.com"));
        receipt.receipt = Some(Receipt::SeedReceived {
            id: "gJE6T-2".into(),
            status: "200".into(),
        });
        w.client_sends(receipt);
        assert_eq!(w.device("carol@example.com", "phone").acked_upto, 1);
        assert!(bounces(&w.advance(Duration::from_secs(11))).is_empty());

        // Under policy `system`, an unacked chat message does not bounce, an unacked system one does.
        w.route(
            chat("alice@example.com/a", "carol@example.com", "c1", "hi"),
            &["carol@example.com/phone"],
        );
        let mut system2 = system;
        system2.id = Some("gJE6T-3".into());
        w.route(system2, &["carol@example.com/phone"]);
        let out = w.advance(Duration::from_secs(10));
        assert_eq!(
            bounces(&out)
                .into_iter()
                .map(|b| (b.0.to_string(), b.1))
                .collect::<Vec<_>>(),
            vec![("example.com".to_string(), "gJE6T-3".to_string())]
        );
    }
);

scenario!(
    foreign_and_unknown_receipts_change_nothing,
    foreign_and_unknown_receipts_change_nothing_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        w.online("bob@example.com/phone");
        w.online("dave@example.com/pc");
        w.route(
            chat("alice@example.com/a", "bob@example.com", "m1", "for bob"),
            &["bob@example.com/phone"],
        );

        w.client_sends(crs_received("dave@example.com/pc", "m1"));
        w.client_sends(crs_received("bob@example.com/phone", "no-such-id"));
        assert_eq!(w.engine().counters().receipts_rejected, 2);
        assert_eq!(w.engine().counters().receipts_accepted, 0);
        assert_eq!(w.device("bob@example.com", "phone").acked_upto, 0);
        assert_eq!(w.device("dave@example.com", "pc").acked_upto, 0);
        // Bob's message still bounces: nobody of Bob's acked it.
        assert_eq!(bounces(&w.advance(Duration::from_secs(10))).len(), 1);
    }
);

scenario!(
    duplicate_receipts_and_shared_ids,
    duplicate_receipts_and_shared_ids_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        w.online("bob@example.com/phone");
        w.route(
            chat(
                "alice@example.com/a",
                "bob@example.com",
                "same",
                "from alice",
            ),
            &["bob@example.com/phone"],
        );
        w.route(
            chat(
                "carol@example.com/c",
                "bob@example.com",
                "same",
                "from carol",
            ),
            &["bob@example.com/phone"],
        );
        w.route(
            chat("alice@example.com/a", "bob@example.com", "dup", "x"),
            &["bob@example.com/phone"],
        );

        // Duplicate receipts: the second changes nothing.
        w.client_sends(crs_received("bob@example.com/phone", "dup"));
        w.client_sends(crs_received("bob@example.com/phone", "dup"));
        let d = w.device("bob@example.com", "phone");
        assert_eq!((d.acked_upto, d.acked_above.clone()), (0, vec![3]));
        assert_eq!(w.engine().counters().receipts_duplicate, 1);

        // A XEP-0184 receipt addressed to carol settles carol's message, not alice's.
        w.client_sends(xep_received(
            "bob@example.com/phone",
            "carol@example.com/c",
            "same",
        ));
        let d = w.device("bob@example.com", "phone");
        assert_eq!((d.acked_upto, d.acked_above.clone()), (0, vec![2, 3]));
        // A seed receipt names no sender: it settles the oldest one still unacked.
        w.client_sends(crs_received("bob@example.com/phone", "same"));
        assert_eq!(w.device("bob@example.com", "phone").acked_upto, 3);
        assert!(
            bounces(&w.advance(Duration::from_secs(10))).is_empty(),
            "all three acked"
        );
    }
);

#[test]
fn timer_due_during_downtime_fires_at_first_tick_after_reopen() {
    let mut w = World::new(false);
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m1", "x"),
        &[],
    );
    // readtrack is down for a minute; no tick ran while the timer was due.
    w.now = w.now.plus(Duration::from_secs(60));
    w.reopen();
    let out = w.advance(Duration::ZERO);
    assert_eq!(bounces(&out).len(), 1);
    assert!(bounces(&w.advance(Duration::from_secs(1))).is_empty());
}

#[test]
fn xep_dialect_has_no_server_ack_and_no_bounce() {
    let mut w = World::with(false, |c| c.dialect = Dialect::Xep);
    w.online("bob@example.com/phone");
    w.offline("bob@example.com/phone");
    let out = w.route(
        chat("alice@example.com/a", "bob@example.com", "m1", "x"),
        &[],
    );
    assert!(acks(&out).is_empty());
    assert!(bounces(&w.advance(Duration::from_secs(60))).is_empty());
    let out = w.online("bob@example.com/phone");
    let r = replays(&out);
    assert_eq!(r.len(), 1);
    assert!(!r[0].1.offline_marker, "no seed marker in the xep dialect");
    assert_eq!(r[0].1.delay_from.as_deref(), Some("example.com"));
    w.client_sends(xep_received(
        "bob@example.com/phone",
        "alice@example.com/a",
        "m1",
    ));
    assert_eq!(w.device("bob@example.com", "phone").acked_upto, 1);
}

#[test]
fn after_hash_rule_groups_resources_into_one_device() {
    let mut w = World::with(false, |c| c.device_key = DeviceKeyRule::AfterHash);
    w.online("bob@example.com/Spark 2.6.3#android");
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m1", "x"),
        &["bob@example.com/Spark 2.6.3#android"],
    );
    w.client_sends(crs_received("bob@example.com/Spark 2.6.3#android", "m1"));
    w.offline("bob@example.com/Spark 2.6.3#android");
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m2", "x"),
        &[],
    );
    // A new client version on the same phone is the same device: only m2 is unread.
    assert_eq!(
        replayed_ids(&w.online("bob@example.com/Spark 2.7.0#android")),
        vec!["m2".to_string()]
    );
    assert_eq!(
        w.device("bob@example.com", "android").resource,
        "Spark 2.7.0#android"
    );
    assert_eq!(
        w.engine().counters().device_key_merges,
        0,
        "one session at a time"
    );
}

/// With `after-hash`, two live sessions whose resources differ before the '#' (two phones
/// both tagged `#android`, or a server renaming a conflicting resource) become one device:
/// readtrack cannot tell them apart, so it says so.
#[test]
fn two_live_sessions_merged_into_one_device_key_are_counted_and_logged() {
    let mut w = World::with(false, |c| c.device_key = DeviceKeyRule::AfterHash);
    w.online("bob@example.com/Spark 2.6.3#android");
    w.online("bob@example.com/Spark 2.7.0#android");
    assert_eq!(w.engine().counters().device_key_merges, 1);
    let devices = w.engine().cursors("bob@example.com").unwrap().devices;
    assert_eq!(devices.len(), 1, "{devices:?}");
}

#[test]
fn snapshot_after_reconnect_does_not_resend_in_flight() {
    let mut w = World::new(false);
    w.online("bob@example.com/phone");
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m1", "x"),
        &["bob@example.com/phone"],
    );
    w.online("bob@example.com/laptop");
    w.reopen();
    // After a reconnect the server lists the live sessions; the phone still has m1 in flight.
    let out = w.snapshot(&["bob@example.com/phone"]);
    assert!(replays(&out).is_empty());
    assert!(
        !w.device("bob@example.com", "laptop").online,
        "absent from the snapshot: offline"
    );
    assert!(w.device("bob@example.com", "phone").online);
}

/// The crash loop's loss (CI, seed 1795615400123948180): the phone's connection dropped with m1
/// in flight, and it connected again with the same resource while readtrack was away, so
/// readtrack heard neither. The snapshot lists the phone online as before, but the connection
/// is another one: m1 was lost with the old one and must be replayed.
#[test]
fn snapshot_replays_to_a_device_that_reconnected_while_readtrack_was_away() {
    for reopen_each_step in [false, true] {
        let mut w = World::new(reopen_each_step);
        w.online("bob@example.com/phone");
        w.route(
            chat("alice@example.com/a", "bob@example.com", "m1", "x"),
            &["bob@example.com/phone"],
        );
        w.reopen();
        w.connect("bob@example.com/phone");
        let out = w.snapshot(&["bob@example.com/phone"]);
        assert_eq!(replayed_ids(&out), ["m1"]);
        // The same connection at the next reconnect: the replay is sent again while unacked
        // (readtrack cannot know whether its commands reached the server before the link
        // broke); once the phone acks it, nothing is sent twice.
        let out = w.snapshot(&["bob@example.com/phone"]);
        assert_eq!(replayed_ids(&out), ["m1"]);
        w.client_sends(crs_received("bob@example.com/phone", "m1"));
        let out = w.snapshot(&["bob@example.com/phone"]);
        assert!(replays(&out).is_empty(), "{out:?}");
    }
}

/// The crash loop's second loss (CI, seed 1796175484754600584): a device logged in, readtrack
/// recorded its replay and flushed, and was killed before the replay's commands reached the
/// server. The snapshot after the restart lists the device on the same connection; the replay
/// must go again, not count as in flight.
#[test]
fn a_replay_cut_by_a_crash_is_sent_again_to_the_same_connection() {
    for reopen_each_step in [false, true] {
        let mut w = World::new(reopen_each_step);
        w.route(
            chat("alice@example.com/a", "bob@example.com", "m1", "x"),
            &[],
        );
        assert_eq!(replayed_ids(&w.online("bob@example.com/phone")), ["m1"]);
        // The commands are lost with the process; the server's session goes on.
        w.reopen();
        let out = w.snapshot(&["bob@example.com/phone"]);
        assert_eq!(replayed_ids(&out), ["m1"]);
    }
}

/// A server that names no connection (an older mod_readtrack) cannot tell a continuing session
/// from a new one: readtrack replays, since a message twice is better than a message lost.
#[test]
fn snapshot_without_session_ids_replays_what_is_unacked() {
    let mut w = World::new(false);
    w.step(Input::Available {
        jid: jid("bob@example.com/phone"),
        device_id: None,
        session_id: None,
    });
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m1", "x"),
        &["bob@example.com/phone"],
    );
    let out = w.step(Input::Snapshot {
        sessions: vec![SessionInfo {
            jid: jid("bob@example.com/phone"),
            device_id: None,
            session_id: None,
        }],
    });
    assert_eq!(replayed_ids(&out), ["m1"]);
}

/// The unavailable of a connection the same resource has already replaced is late news: the
/// device stays online in its new session.
#[test]
fn unavailable_of_a_replaced_connection_changes_nothing() {
    let mut w = World::new(false);
    w.online("bob@example.com/phone");
    let old = w.session_ids["bob@example.com/phone"].clone();
    w.online("bob@example.com/phone");
    let session = w.device("bob@example.com", "phone").session;
    w.step(Input::Unavailable {
        jid: jid("bob@example.com/phone"),
        session_id: Some(old),
    });
    let phone = w.device("bob@example.com", "phone");
    assert!(phone.online, "the newer connection is still online");
    assert_eq!(phone.session, session);
    w.offline("bob@example.com/phone");
    assert!(!w.device("bob@example.com", "phone").online);
}

#[test]
fn inputs_for_other_domains_are_rejected_without_change() {
    let mut w = World::new(false);
    let now = w.now;
    let err = w
        .engine()
        .handle(
            Input::Available {
                jid: jid("bob@elsewhere.org/phone"),
                device_id: None,
                session_id: None,
            },
            now,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rejected input: available session bob@elsewhere.org/phone is not a user of example.com"
    );
    let err = w
        .engine()
        .handle(
            Input::Available {
                jid: jid("bob@example.com"),
                device_id: None,
                session_id: None,
            },
            now,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rejected input: available session bob@example.com is not a full JID"
    );
    assert_eq!(w.engine().store().user_count(), 0);
}

/// `replay-on-available` (docs/rules.md): replay work is proportional to what is unread, not to
/// what is stored.
#[test]
fn replay_reads_only_what_is_unread() {
    let mut w = World::with(false, |c| c.policy = ReceiptPolicy::None);
    w.online("bob@example.com/phone");
    let total = 100_000u64;
    let unread = 10u64;
    for i in 1..=total {
        let m = chat(
            "alice@example.com/a",
            "bob@example.com",
            &format!("m{i}"),
            "x",
        );
        let live: &[&str] = if i <= total - unread {
            &["bob@example.com/phone"]
        } else {
            &[]
        };
        let to = jid("bob@example.com");
        let now = w.now;
        let sessions = live.iter().map(|s| jid(s)).collect();
        w.engine()
            .handle(Input::routed(m, to, sessions, None, false), now)
            .unwrap();
    }
    w.engine().commit().unwrap();
    // The phone read up to the last one it saw (XEP-0333 displayed), then went away.
    let mut marker = Message::new(MessageType::Chat);
    marker.from = Some(jid("bob@example.com/phone"));
    marker.to = Some(jid("alice@example.com/a"));
    marker.displayed = Some(format!("m{}", total - unread));
    w.client_sends(marker);
    assert_eq!(
        w.device("bob@example.com", "phone").acked_upto,
        total - unread
    );
    w.offline("bob@example.com/phone");

    let before = w.engine().store().records_read();
    let out = w.online("bob@example.com/phone");
    let read = w.engine().store().records_read() - before;
    assert_eq!(replays(&out).len() as u64, unread);
    // The 10 messages, plus the user and device records: nothing else.
    assert!(
        read <= unread + 5,
        "replay read {read} records for {unread} unread of {total}"
    );
}

fn fixture(name: &str) -> Message {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    readtrack::stanza::parse_message(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The wire examples of docs/protocol.md, parsed from the fixtures, drive the engine; what it
/// writes parses back to the dialect's shapes.
#[test]
fn seed_protocol_wire_examples_drive_the_engine() {
    use readtrack::stanza::{parse_message, write};
    let mut w = World::with(false, |c| c.device_key = DeviceKeyRule::AfterHash);

    // Chat and server ack: A's chat to B's Spark, written live; the ack; B's receipt (both
    // status forms).
    let chat = fixture("seed-chat.xml");
    let out = w.route(chat.clone(), &["bob@example.com/Spark 2.6.3"]);
    let ack = out.iter().find_map(|o| match o {
        Output::SendAsHost {
            confirm: _,
            stanza: s @ Outgoing::ServerAck { .. },
        } => Some(parse_message(&write::outgoing(s)).unwrap()),
        _ => None,
    });
    let ack = ack.expect("server ack");
    assert_eq!(
        (ack.kind, ack.id.as_deref(), ack.to),
        (MessageType::Crs, Some("V4NkR-38"), chat.from.clone())
    );
    assert!(ack.body.unwrap().contains(r#""msgType":"10013""#));
    w.client_sends(fixture("seed-receipt-text.xml"));
    assert_eq!(w.device("bob@example.com", "Spark 2.6.3").acked_upto, 1);
    w.client_sends(fixture("seed-receipt-attr.xml"));
    assert_eq!(w.engine().counters().receipts_duplicate, 1);

    // Offline replay: B's android was never online; A's message waits, then is replayed with
    // the marker.
    let mut later = chat.clone();
    later.id = Some("HncqL-65".into());
    w.route(later, &[]);
    let out = w.online("bob@example.com/Spark 2.6.3#android");
    let replayed: Vec<Message> = out
        .iter()
        .filter_map(|o| match o {
            Output::Deliver { stanza, .. } => {
                Some(parse_message(&write::outgoing(stanza)).unwrap())
            }
            _ => None,
        })
        .collect();
    let ids: Vec<_> = replayed.iter().map(|m| m.id.clone().unwrap()).collect();
    assert_eq!(
        ids,
        vec!["V4NkR-38".to_string(), "HncqL-65".to_string()],
        "history 100 covers both"
    );
    assert!(replayed
        .iter()
        .all(|m| m.offline.is_some() && m.delay.is_some() && m.receipt_request));
    w.client_sends(fixture("seed-offline-ack.xml"));
    let android = w.device("bob@example.com", "android");
    assert_eq!((android.acked_upto, android.acked_above), (0, vec![2]));

    // System messages: the system message and its type="200" receipt.
    w.online("carol@example.com/phone");
    w.route(
        fixture("seed-system-message.xml"),
        &["carol@example.com/phone"],
    );
    w.client_sends(fixture("seed-system-receipt.xml"));
    assert_eq!(w.device("carol@example.com", "phone").acked_upto, 1);

    // Delay bounce: nothing acked the Spark... except V4NkR-38; HncqL-65 was acked by android:
    // no bounce.
    assert!(bounces(&w.advance(Duration::from_secs(10))).is_empty());
}

// ---- Read state, sent-message sync, retention, limits (docs/rules.md) ----

fn displayed(from: &str, to: &str, id: &str) -> Message {
    let mut m = Message::new(MessageType::Chat);
    m.from = Some(jid(from));
    m.to = Some(jid(to));
    m.displayed = Some(id.into());
    m
}

fn conversations(w: &mut World, user: &str) -> Vec<(String, u64, u64)> {
    let view = w.engine().conversations(user).unwrap();
    let mut rows: Vec<_> = view
        .conversations
        .into_iter()
        .map(|c| (c.peer, c.unread, c.read_upto))
        .collect();
    rows.sort();
    rows
}

/// A device acking a long replay in order: each receipt finds its message at the front of what
/// is unacked and stops there, so it reads a few records, not the index of everything pending.
#[test]
fn receipts_in_order_cost_the_same_however_much_is_pending() {
    let mut w = World::new(false);
    w.online("bob@example.com/phone");
    let total = 3000;
    for i in 1..=total {
        w.route(
            chat(
                "alice@example.com/a",
                "bob@example.com",
                &format!("p{i}"),
                "x",
            ),
            &["bob@example.com/phone"],
        );
    }
    let mut most = 0;
    for i in 1..=total {
        let before = w.engine().store().records_read();
        w.client_sends(crs_received("bob@example.com/phone", &format!("p{i}")));
        most = most.max(w.engine().store().records_read() - before);
    }
    assert_eq!(w.device("bob@example.com", "phone").acked_upto, total);
    assert!(
        most <= 6,
        "a receipt read up to {most} records with {total} pending"
    );
}

/// Lookups by id start near what the device has not acked (the index is read from there), but
/// a marker also moves the conversation's read state: it finds a message the device acked long
/// ago if the conversation has not been read up to it.
#[test]
fn marker_for_a_long_acked_message_moves_read_state_and_old_receipts_cost_nothing() {
    let mut w = World::new(false);
    w.online("bob@example.com/phone");
    for i in 1..=200 {
        let id = format!("a{i}");
        w.route(
            chat("alice@example.com/a", "bob@example.com", &id, "x"),
            &["bob@example.com/phone"],
        );
        w.client_sends(crs_received("bob@example.com/phone", &id));
    }
    assert_eq!(w.device("bob@example.com", "phone").acked_upto, 200);
    w.client_sends(displayed(
        "bob@example.com/phone",
        "alice@example.com/a",
        "a3",
    ));
    assert_eq!(
        conversations(&mut w, "bob@example.com"),
        vec![("alice@example.com".into(), 197, 3)]
    );
    // A receipt sent again for a recent message is a duplicate; one for a message acked 190
    // messages ago is not looked up that far and names nothing unacked.
    let before = w.engine().counters().clone();
    w.client_sends(crs_received("bob@example.com/phone", "a199"));
    w.client_sends(crs_received("bob@example.com/phone", "a10"));
    let after = w.engine().counters().clone();
    assert_eq!(after.receipts_duplicate, before.receipts_duplicate + 1);
    assert_eq!(after.receipts_rejected, before.receipts_rejected + 1);
}

scenario!(
    displayed_marker_moves_conversation_read_state,
    displayed_marker_moves_conversation_read_state_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        w.online("bob@example.com/phone");
        w.online("bob@example.com/laptop");
        let both = ["bob@example.com/phone", "bob@example.com/laptop"];
        w.route(
            chat("alice@example.com/a", "bob@example.com", "a1", "x"),
            &both,
        );
        w.route(
            chat("carol@example.com/c", "bob@example.com", "c1", "x"),
            &both,
        );
        w.route(
            chat("alice@example.com/a", "bob@example.com", "a2", "x"),
            &both,
        );
        w.route(
            chat("alice@example.com/a", "bob@example.com", "a3", "x"),
            &both,
        );
        assert_eq!(
            conversations(&mut w, "bob@example.com"),
            vec![
                ("alice@example.com".into(), 3, 0),
                ("carol@example.com".into(), 1, 0)
            ]
        );

        // The laptop displays a2: alice's conversation has one unread left; the laptop's cursor
        // acks everything up to a2 (seq 3), carol's message included; the phone's does not move.
        w.client_sends(displayed(
            "bob@example.com/laptop",
            "alice@example.com/a",
            "a2",
        ));
        assert_eq!(
            conversations(&mut w, "bob@example.com"),
            vec![
                ("alice@example.com".into(), 1, 3),
                ("carol@example.com".into(), 1, 0)
            ]
        );
        assert_eq!(w.device("bob@example.com", "laptop").acked_upto, 3);
        assert_eq!(w.device("bob@example.com", "phone").acked_upto, 0);

        // A late marker for a1 moves nothing backwards.
        w.client_sends(displayed(
            "bob@example.com/phone",
            "alice@example.com/a",
            "a1",
        ));
        assert_eq!(
            conversations(&mut w, "bob@example.com")[0],
            ("alice@example.com".into(), 1, 3)
        );
        assert_eq!(
            w.device("bob@example.com", "phone").acked_upto,
            1,
            "the phone's own cursor still moves"
        );

        // The read state is the maximum across devices: the phone reading a3 clears it.
        w.client_sends(displayed(
            "bob@example.com/phone",
            "alice@example.com/a",
            "a3",
        ));
        assert_eq!(
            conversations(&mut w, "bob@example.com")[0],
            ("alice@example.com".into(), 0, 4)
        );

        // A marker for an unknown id changes nothing and is counted.
        let rejected = w.engine().counters().receipts_rejected;
        w.client_sends(displayed(
            "bob@example.com/phone",
            "carol@example.com/c",
            "nope",
        ));
        assert_eq!(w.engine().counters().receipts_rejected, rejected + 1);
        assert_eq!(
            conversations(&mut w, "bob@example.com")[1],
            ("carol@example.com".into(), 1, 0)
        );
    }
);

#[test]
fn routed_marked_sent_is_also_the_senders_own_message() {
    let mut w = World::new(false);
    w.online("bob@example.com/phone");
    w.online("alice@example.com/a");
    // One event: logged for alice (written live to her session) and for bob's other devices.
    let released = w.route_sent(
        chat(
            "bob@example.com/phone",
            "alice@example.com",
            "s1",
            "hi alice",
        ),
        &["alice@example.com/a"],
    );
    assert_eq!(
        acks(&released),
        vec![(jid("bob@example.com/phone"), "s1".to_string())],
        "the sender's server ack"
    );
    assert_eq!(w.logged("alice@example.com"), 1);
    assert_eq!(w.logged("bob@example.com"), 1, "in the sender's own log");
    let out = w.online("bob@example.com/laptop");
    assert!(
        matches!(
            &out[..],
            [Output::Deliver { stanza: Outgoing::SentCarbon { inner, .. }, .. }]
                if inner.original().unwrap().id.as_deref() == Some("s1")
        ),
        "the laptop gets it as a carbon: {out:?}"
    );
    // Marked sent but from another server (the module never does that): the recipient still
    // gets the message, and nobody's own log changes.
    w.route_sent(
        chat(
            "carol@elsewhere.example/x",
            "alice@example.com",
            "c1",
            "hey",
        ),
        &["alice@example.com/a"],
    );
    assert_eq!(w.logged("alice@example.com"), 2);
    assert_eq!(w.logged("bob@example.com"), 1);
}

scenario!(
    sent_messages_reach_other_devices_as_carbons_in_order,
    sent_messages_reach_other_devices_as_carbons_in_order_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        w.online("bob@example.com/phone");
        w.client_sends(chat(
            "bob@example.com/phone",
            "alice@example.com",
            "s1",
            "hi alice",
        ));
        w.route(
            chat("alice@example.com/a", "bob@example.com", "r1", "hi bob"),
            &["bob@example.com/phone"],
        );
        w.client_sends(chat(
            "bob@example.com/phone",
            "alice@example.com",
            "s2",
            "how are you",
        ));

        // A new laptop shows both sides, in conversation order.
        let out = w.online("bob@example.com/laptop");
        let shape: Vec<(String, String)> = out
            .iter()
            .map(|o| match o {
                Output::Deliver {
                    stanza: Outgoing::SentCarbon { from, to, inner },
                    ..
                } => {
                    assert_eq!(
                        (from.to_string(), to.to_string()),
                        ("bob@example.com".into(), "bob@example.com/laptop".into())
                    );
                    assert_eq!(
                        (
                            inner.original().unwrap().from.unwrap().to_string(),
                            inner.original().unwrap().to.unwrap().to_string()
                        ),
                        ("bob@example.com/phone".into(), "alice@example.com".into())
                    );
                    ("sent".into(), inner.original().unwrap().id.unwrap())
                }
                Output::Deliver {
                    stanza: Outgoing::Replay(r),
                    ..
                } => ("received".into(), r.original().unwrap().id.unwrap()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let expect = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shape,
            expect(&[("sent", "s1"), ("received", "r1"), ("sent", "s2")])
        );

        // Carbons need no receipt: the next login replays only the unacked received message.
        w.offline("bob@example.com/laptop");
        assert_eq!(
            replayed_ids(&w.online("bob@example.com/laptop")),
            vec!["r1".to_string()]
        );
        // The phone never gets its own messages back, and sent messages count as unread for no one.
        w.offline("bob@example.com/phone");
        assert_eq!(
            replayed_ids(&w.online("bob@example.com/phone")),
            vec!["r1".to_string()],
            "r1 is unacked; s1/s2 are its own"
        );
        assert_eq!(
            conversations(&mut w, "bob@example.com"),
            vec![("alice@example.com".into(), 1, 0)]
        );
        // No server ack or timer for one's own copy.
        assert_eq!(
            w.engine().store().timer_count(),
            1,
            "only r1 waits for a receipt"
        );
    }
);

scenario!(
    retention_deletes_what_everyone_read_outside_the_window,
    retention_deletes_what_everyone_read_outside_the_window_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| {
            c.history = 2;
            c.policy = ReceiptPolicy::None;
        });
        w.online("bob@example.com/phone");
        w.online("bob@example.com/laptop");
        for i in 1..=6 {
            w.route(
                chat(
                    "alice@example.com/a",
                    "bob@example.com",
                    &format!("m{i}"),
                    "x",
                ),
                &["bob@example.com/phone", "bob@example.com/laptop"],
            );
        }
        // The phone read everything, the laptop only up to m3: m1..m3 may go, m4 is held back by
        // the laptop, m5..m6 are in the history window.
        w.client_sends(displayed(
            "bob@example.com/phone",
            "alice@example.com/a",
            "m6",
        ));
        w.client_sends(displayed(
            "bob@example.com/laptop",
            "alice@example.com/a",
            "m3",
        ));
        w.maybe_reopen();
        let now = w.now;
        let report = w.engine().retain(now, 1_000).unwrap();
        w.engine().commit().unwrap();
        assert_eq!((report.deleted, report.complete), (3, true));
        assert_eq!(w.logged("bob@example.com"), 3);
        assert_eq!(w.engine().counters().messages_deleted, 3);
        // The laptop reads the rest: m4 goes at the next pass, the window keeps two.
        w.client_sends(displayed(
            "bob@example.com/laptop",
            "alice@example.com/a",
            "m6",
        ));
        let now = w.now;
        assert_eq!(w.engine().retain(now, 1_000).unwrap().deleted, 1);
        assert_eq!(w.logged("bob@example.com"), 2);
        // A new device still gets the history window.
        assert_eq!(
            replayed_ids(&w.online("bob@example.com/tablet")),
            vec!["m5".to_string(), "m6".to_string()]
        );
    }
);

scenario!(
    retention_max_age_and_device_expiry,
    retention_max_age_and_device_expiry_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| {
            c.history = 0;
            c.policy = ReceiptPolicy::None;
            c.retention_max_age = Duration::from_secs(3_600);
            c.expire_after = Duration::from_secs(86_400);
        });
        w.online("bob@example.com/phone");
        w.offline("bob@example.com/phone");
        w.route(
            chat("alice@example.com/a", "bob@example.com", "old", "x"),
            &[],
        );
        // The phone never acked it; it holds the message back until max_age.
        let now = w.now;
        assert_eq!(w.engine().retain(now, 100).unwrap().deleted, 0);
        w.advance(Duration::from_secs(3_601));
        let now = w.now;
        assert_eq!(w.engine().retain(now, 100).unwrap().deleted, 1);
        let phone = w.device("bob@example.com", "phone");
        assert_eq!(
            phone.acked_upto, 1,
            "what is gone counts as read, so unread stays true"
        );
        assert_eq!(
            w.engine().cursors("bob@example.com").unwrap().devices[0].unread,
            0
        );

        // A device unseen for expire_after is forgotten and no longer holds messages back.
        w.route(
            chat("alice@example.com/a", "bob@example.com", "new", "x"),
            &[],
        );
        w.advance(Duration::from_secs(86_400));
        let now = w.now;
        let report = w.engine().retain(now, 100).unwrap();
        assert_eq!(report.devices_expired, 1);
        assert_eq!(
            report.deleted, 1,
            "with no live device left, history 0 keeps nothing"
        );
        assert!(w
            .engine()
            .cursors("bob@example.com")
            .unwrap()
            .devices
            .is_empty());
    }
);

#[test]
fn retention_runs_in_bounded_batches() {
    let mut w = World::with(false, |c| {
        c.history = 0;
        c.policy = ReceiptPolicy::None;
    });
    w.online("bob@example.com/phone");
    for i in 1..=10 {
        w.route(
            chat(
                "alice@example.com/a",
                "bob@example.com",
                &format!("m{i}"),
                "x",
            ),
            &["bob@example.com/phone"],
        );
    }
    w.client_sends(displayed(
        "bob@example.com/phone",
        "alice@example.com/a",
        "m10",
    ));
    let now = w.now;
    let first = w.engine().retain(now, 4).unwrap();
    assert_eq!((first.deleted, first.complete), (4, false));
    assert_eq!(w.engine().retain(now, 4).unwrap().deleted, 4);
    let last = w.engine().retain(now, 4).unwrap();
    assert_eq!((last.deleted, last.complete), (2, true));
    assert_eq!(w.logged("bob@example.com"), 0);
}

#[test]
fn retention_racing_a_device_coming_online() {
    let mut w = World::with(false, |c| {
        c.policy = ReceiptPolicy::None;
        c.retention_max_age = Duration::from_secs(60);
    });
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m1", "x"),
        &[],
    );
    w.advance(Duration::from_secs(61));
    // The phone logs in and m1 is replayed to it...
    assert_eq!(
        replayed_ids(&w.online("bob@example.com/phone")),
        vec!["m1".to_string()]
    );
    // ...then retention deletes m1 (too old) before the phone's receipt arrives.
    let now = w.now;
    assert_eq!(w.engine().retain(now, 100).unwrap().deleted, 1);
    w.client_sends(crs_offline("bob@example.com/phone", "m1"));
    assert_eq!(
        w.engine().counters().receipts_rejected,
        1,
        "a receipt for a deleted message is counted, harmless"
    );
    let phone = w.device("bob@example.com", "phone");
    assert_eq!(phone.acked_upto, 1);
    assert_eq!(
        w.engine().cursors("bob@example.com").unwrap().devices[0].pending,
        0,
        "its delivery went with it"
    );
    w.offline("bob@example.com/phone");
    assert!(w.online("bob@example.com/phone").is_empty());
}

#[test]
fn unread_counts_leave_out_what_retention_deleted() {
    let mut w = World::with(false, |c| {
        c.policy = ReceiptPolicy::None;
        c.retention_max_age = Duration::from_secs(60);
    });
    // The phone is known, then away while m1..m3 arrive (too old by the time retention runs)
    // and m4, m5 arrive (recent).
    w.online("bob@example.com/phone");
    w.offline("bob@example.com/phone");
    for i in 1..=3 {
        let id = format!("m{i}");
        w.route(
            chat("alice@example.com/a", "bob@example.com", &id, "x"),
            &[],
        );
    }
    w.advance(Duration::from_secs(61));
    for i in 4..=5 {
        let id = format!("m{i}");
        w.route(
            chat("alice@example.com/a", "bob@example.com", &id, "x"),
            &[],
        );
    }
    let unread = |w: &mut World| {
        let cursors = w.engine().cursors("bob@example.com").unwrap();
        let view = w.engine().unread("bob@example.com", "phone", 100).unwrap();
        (cursors.devices[0].unread, view.unread, view.messages.len())
    };
    assert_eq!(unread(&mut w), (5, 5, 5));
    let now = w.now;
    assert_eq!(w.engine().retain(now, 100).unwrap().deleted, 3);
    // Deleted messages are no longer there to read: the counts agree with the list.
    assert_eq!(unread(&mut w), (2, 2, 2));
}

#[test]
fn replay_and_timers_are_bounded_by_configuration() {
    let mut w = World::with(false, |c| {
        c.max_replay = 2;
        c.max_pending_timers = 1;
    });
    w.online("bob@example.com/phone");
    w.offline("bob@example.com/phone");
    for i in 1..=3 {
        w.route(
            chat(
                "alice@example.com/a",
                "bob@example.com",
                &format!("m{i}"),
                "x",
            ),
            &[],
        );
    }
    assert_eq!(
        w.engine().counters().timers_refused,
        2,
        "only one timer may run"
    );
    assert_eq!(bounces(&w.advance(Duration::from_secs(10))).len(), 1);

    let out = w.online("bob@example.com/phone");
    assert_eq!(replayed_ids(&out), vec!["m1".to_string(), "m2".to_string()]);
    assert_eq!(w.engine().counters().replays_truncated, 1);
    // Once those are acked, the next login brings the rest.
    w.client_sends(crs_offline("bob@example.com/phone", "m1"));
    w.client_sends(crs_offline("bob@example.com/phone", "m2"));
    w.offline("bob@example.com/phone");
    assert_eq!(
        replayed_ids(&w.online("bob@example.com/phone")),
        vec!["m3".to_string()]
    );
}

/// `retention` over time: under steady traffic that every device reads, retention keeps the log at
/// the history window (plus at most one pass of slack), whatever the volume.
#[test]
fn store_stays_bounded_under_steady_traffic_with_retention() {
    let mut w = World::with(false, |c| {
        c.history = 50;
        c.policy = ReceiptPolicy::None;
    });
    w.online("bob@example.com/phone");
    w.online("bob@example.com/laptop");
    let live = ["bob@example.com/phone", "bob@example.com/laptop"];
    let mut sizes = Vec::new();
    let rounds = 20;
    let per_round = 1_000;
    for round in 0..rounds {
        for i in 0..per_round {
            let id = format!("m{round}-{i}");
            let to = jid("bob@example.com");
            let now = w.now;
            let message = chat(
                "alice@example.com/a",
                "bob@example.com",
                &id,
                "steady traffic",
            );
            w.engine()
                .handle(
                    Input::routed(
                        message,
                        to,
                        live.iter().map(|s| jid(s)).collect(),
                        None,
                        false,
                    ),
                    now,
                )
                .unwrap();
        }
        let last = format!("m{round}-{}", per_round - 1);
        w.client_sends(displayed(
            "bob@example.com/phone",
            "alice@example.com/a",
            &last,
        ));
        w.client_sends(displayed(
            "bob@example.com/laptop",
            "alice@example.com/a",
            &last,
        ));
        let now = w.now;
        let report = w.engine().retain(now, 10_000).unwrap();
        assert!(report.complete);
        w.engine().commit().unwrap();
        assert_eq!(
            w.logged("bob@example.com"),
            50,
            "round {round}: only the history window is kept"
        );
        // PostgreSQL reuses the space of deleted rows once they are vacuumed, which its
        // autovacuum does on its own schedule; the test runs it after each round.
        backend::vacuum(&w.location);
        sizes.push(w.engine().store().size_on_disk().unwrap());
    }
    assert_eq!(
        w.engine().counters().messages_deleted,
        rounds * per_round - 50
    );
    // sled reclaims space lazily; the size must plateau, not grow with the 20k messages logged.
    let (early, late) = (sizes[4], sizes[rounds as usize - 1]);
    eprintln!("store size on disk per round (bytes): {sizes:?}");
    assert!(
        late < early * 3,
        "store grew from {early} to {late} bytes under steady, fully read traffic"
    );
}

/// A bounce the server never confirmed (readtrack was killed before the command reached it, or
/// the connection broke) is sent again after a timeout, under the same command id, until it is
/// confirmed; the module executes one id once, so the sender sees it once.
#[test]
fn unconfirmed_bounce_is_sent_again_until_confirmed() {
    let mut w = World::new(false);
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m1", "x"),
        &[],
    );
    w.now = w.now.plus(Duration::from_secs(10));
    let now = w.now;
    let mut first = w.engine().tick(now).unwrap();
    first.extend(w.engine().commit().unwrap());
    let confirm_of = |out: &[Output]| -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::SendAsHost {
                    stanza: Outgoing::Bounce { id, .. },
                    confirm: Some(c),
                } => Some(format!("{id} {c}")),
                _ => None,
            })
            .collect()
    };
    let sent = confirm_of(&first);
    assert_eq!(sent.len(), 1);
    // No confirmation: lost in a crash. After a restart and the retry delay it goes out again.
    w.reopen();
    w.now = w.now.plus(Duration::from_secs(10));
    let now = w.now;
    let mut again = w.engine().tick(now).unwrap();
    again.extend(w.engine().commit().unwrap());
    assert_eq!(confirm_of(&again), sent, "same message, same command id");
    assert_eq!(w.engine().counters().bounces, 1, "counted once");
    assert_eq!(
        w.engine().log("bob@example.com", 0, 10).unwrap().messages[0].receipt,
        "bouncing"
    );
    // Confirmed: settled, no further sends; a repeated confirmation changes nothing.
    let id = sent[0].split(' ').nth(1).unwrap().to_string();
    w.engine().confirm(&id).unwrap();
    w.engine().confirm(&id).unwrap();
    assert_eq!(
        w.engine().log("bob@example.com", 0, 10).unwrap().messages[0].receipt,
        "bounced"
    );
    assert!(bounces(&w.advance(Duration::from_secs(60))).is_empty());
    assert_eq!(w.engine().store().timer_count(), 0);
}

/// A server that never confirms (say, an older module) gets the bounce a bounded number of
/// times, then readtrack gives up and settles it.
#[test]
fn a_never_confirmed_bounce_is_given_up_after_the_attempt_limit() {
    let mut w = World::new(false);
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m1", "x"),
        &[],
    );
    let mut sent = 0;
    for _ in 0..readtrack::engine::MAX_BOUNCE_ATTEMPTS + 3 {
        w.now = w.now.plus(Duration::from_secs(10));
        let now = w.now;
        let mut out = w.engine().tick(now).unwrap();
        out.extend(w.engine().commit().unwrap()); // nobody confirms
        sent += bounces(&out).len() as u32;
    }
    assert_eq!(sent, readtrack::engine::MAX_BOUNCE_ATTEMPTS);
    assert_eq!(
        w.engine().log("bob@example.com", 0, 10).unwrap().messages[0].receipt,
        "bounced"
    );
    assert_eq!(w.engine().store().timer_count(), 0);
    assert_eq!(
        w.engine().counters().bounces,
        1,
        "one bounce, however many sends"
    );
}

/// Schema 3: a replay records one range on the device, not a delivery record per message; the
/// range keeps what is in flight from being sent twice in a session and counts as pending.
fn replay_is_one_range(reopen: bool) {
    let mut w = World::new(reopen);
    for i in 1..=10 {
        w.route(
            chat(
                "alice@example.com/a",
                "bob@example.com",
                &format!("m{i}"),
                "x",
            ),
            &[],
        );
    }
    assert_eq!(replayed_ids(&w.online("bob@example.com/phone")).len(), 10);
    let store = w.engine().store();
    let uid = store.user_id("bob@example.com").unwrap().unwrap();
    let (no, _) = store.devices(uid).unwrap()[0].clone();
    assert!(
        store.deliveries(uid, no, u64::MAX).unwrap().is_empty(),
        "no delivery record per replayed message"
    );
    let phone = w.device("bob@example.com", "phone");
    assert_eq!(
        (
            phone.replayed.session,
            phone.replayed.upto,
            phone.replayed.max_upto
        ),
        (phone.session, 10, 10)
    );
    assert_eq!(
        w.engine().cursors("bob@example.com").unwrap().devices[0].pending,
        10
    );
    // One more arrives live: a delivery record of its own, pending too.
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m11", "x"),
        &["bob@example.com/phone"],
    );
    assert_eq!(
        w.engine().cursors("bob@example.com").unwrap().devices[0].pending,
        11
    );
    // An ack of one message out of order: the rest stays pending.
    w.client_sends(crs_offline("bob@example.com/phone", "m4"));
    assert_eq!(
        w.engine().cursors("bob@example.com").unwrap().devices[0].pending,
        10
    );
    let log = w.engine().log("bob@example.com", 3, 2).unwrap();
    let states: Vec<&str> = log.messages.iter().map(|m| m.devices[0].state).collect();
    assert_eq!(states, ["acked", "pending"]);
    // A reconnect snapshot continues the session: what the server reported writing live (m11)
    // is not sent twice; the replay's messages are (their commands may not have reached the
    // server before the link broke).
    let out = w.snapshot(&["bob@example.com/phone"]);
    let resent: Vec<String> = (1..=10)
        .filter(|i| *i != 4)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(replayed_ids(&out), resent);
    // A new session gets everything unacked again, once.
    w.offline("bob@example.com/phone");
    let again = replayed_ids(&w.online("bob@example.com/phone"));
    let expected: Vec<String> = (1..=11)
        .filter(|i| *i != 4)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(again, expected);
    let phone = w.device("bob@example.com", "phone");
    assert_eq!(
        (phone.replayed.session, phone.replayed.upto),
        (phone.session, 11)
    );
    assert_eq!(
        w.engine().cursors("bob@example.com").unwrap().devices[0].pending,
        10
    );
}

#[test]
fn replay_is_one_range_in_memory() {
    replay_is_one_range(false);
}

#[test]
fn replay_is_one_range_across_reopens() {
    replay_is_one_range(true);
}

scenario!(
    colliding_index_hashes_change_no_answer,
    colliding_index_hashes_change_no_answer_reopened,
    |reopen| {
        // Every id and every peer shares one hash: each lookup is a collision, which anyone
        // can craft against a fixed hash. Only the records decide.
        let options = StoreOptions {
            index_hash: readtrack::store::IndexHash::Collide,
            ..StoreOptions::default()
        };
        let mut w = World::with_store(reopen, options, |c| {
            c.receipt_timeout = Duration::from_secs(10);
        });
        w.online("bob@example.com/phone");
        for (from, id) in [
            ("alice@example.com/a", "a1"),
            ("carol@example.com/c", "same"),
            ("alice@example.com/a", "same"),
            ("carol@example.com/c", "c2"),
        ] {
            w.route(
                chat(from, "bob@example.com", id, "x"),
                &["bob@example.com/phone"],
            );
        }
        // A XEP-0184 receipt to alice settles alice's "same" (seq 3), not carol's (seq 2).
        w.client_sends(xep_received(
            "bob@example.com/phone",
            "alice@example.com/a",
            "same",
        ));
        let d = w.device("bob@example.com", "phone");
        assert_eq!((d.acked_upto, d.acked_above.clone()), (0, vec![3]));
        // The others get their receipts; carol's "same" is settled by the seed receipt.
        w.client_sends(crs_received("bob@example.com/phone", "a1"));
        w.client_sends(crs_received("bob@example.com/phone", "same"));
        w.client_sends(crs_received("bob@example.com/phone", "c2"));
        assert_eq!(w.device("bob@example.com", "phone").acked_upto, 4);
        // Nobody is bounced: every message was settled by its own receipt.
        assert!(bounces(&w.advance(Duration::from_secs(60))).is_empty());
        // A marker for carol's "same" reads carol's messages up to it (one): alice's a1 below
        // it shares the hash and is not counted.
        w.client_sends(displayed(
            "bob@example.com/phone",
            "carol@example.com/c",
            "same",
        ));
        assert_eq!(
            conversations(&mut w, "bob@example.com"),
            vec![
                ("alice@example.com".to_string(), 2, 0),
                ("carol@example.com".to_string(), 1, 2),
            ]
        );
    }
);

scenario!(
    a_re_created_account_never_sees_the_old_ones_data,
    a_re_created_account_never_sees_the_old_ones_data_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        let account = |token: &str| Input::Account {
            user: jid("bob@example.com"),
            token: token.into(),
        };
        w.step(account("first"));
        w.route(
            chat("alice@example.com/a", "bob@example.com", "old", "x"),
            &[],
        );
        // The same account, told again (a reconnect, a login): nothing changes.
        w.step(account("first"));
        assert_eq!(w.logged("bob@example.com"), 1);
        // Deleted and created again while readtrack was away: another token. The old
        // account's log (and its timer) goes before anything of the new one is recorded.
        w.step(account("second"));
        assert_eq!(w.logged("bob@example.com"), 0);
        assert!(replays(&w.online("bob@example.com/phone")).is_empty());
        assert!(bounces(&w.advance(Duration::from_secs(60))).is_empty());
        w.route(
            chat("alice@example.com/a", "bob@example.com", "new", "x"),
            &[],
        );
        assert_eq!(w.logged("bob@example.com"), 1);
        // The server deletes the account: everything goes, durably.
        w.step(Input::UserDeleted {
            user: jid("bob@example.com"),
        });
        w.reopen();
        assert_eq!(w.engine().store().user_id("bob@example.com").unwrap(), None);
        assert_eq!(w.engine().counters().users_purged, 2);
        // A user known from before tokens (an upgraded store) adopts the first one it is told.
        w.route(
            chat("alice@example.com/a", "carol@example.com", "c1", "x"),
            &[],
        );
        w.step(Input::Account {
            user: jid("carol@example.com"),
            token: "t".into(),
        });
        assert_eq!(w.logged("carol@example.com"), 1);
    }
);

// ---- per-user bounds (`[limits]`, issue 14 item 3) ----

impl World {
    fn device_keys(&mut self, user: &str) -> Vec<String> {
        let store = self.engine().store();
        let uid = store.user_id(user).unwrap().expect("user exists");
        let mut keys: Vec<_> = store
            .devices(uid)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d.key)
            .collect();
        keys.sort();
        keys
    }

    /// The user's running byte total, checked against the stored log it sums.
    fn log_bytes(&mut self, user: &str) -> u64 {
        let store = self.engine().store();
        let uid = store.user_id(user).unwrap().expect("user exists");
        let summed: u64 = store
            .messages_after(uid, 0)
            .map(|m| m.unwrap().stanza.len() as u64)
            .sum();
        let kept = store.user(uid).unwrap().log_bytes;
        assert_eq!(kept, summed, "the running total matches the stored stanzas");
        kept
    }
}

fn given_back(out: &[Output]) -> Vec<(Jid, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::StoreOffline { to, stanza_xml } => Some((to.clone(), stanza_xml.clone())),
            _ => None,
        })
        .collect()
}

scenario!(
    past_max_devices_the_device_idle_longest_is_forgotten,
    past_max_devices_the_device_idle_longest_is_forgotten_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| c.max_devices_per_user = 2);
        w.online("bob@example.com/phone");
        w.offline("bob@example.com/phone");
        w.advance(Duration::from_secs(60));
        w.online("bob@example.com/laptop");
        w.offline("bob@example.com/laptop");
        w.advance(Duration::from_secs(60));
        w.online("bob@example.com/tablet");
        assert_eq!(w.device_keys("bob@example.com"), ["laptop", "tablet"]);
        assert_eq!(w.engine().counters().devices_evicted, 1);
        // The phone comes back: it is a new device now, and the laptop is the idlest.
        w.advance(Duration::from_secs(60));
        w.online("bob@example.com/phone");
        assert_eq!(w.device_keys("bob@example.com"), ["phone", "tablet"]);
        assert_eq!(w.engine().counters().devices_evicted, 2);
        w.reopen();
        assert_eq!(w.engine().counters().devices_evicted, 2);
    }
);

scenario!(
    a_new_session_is_admitted_past_max_devices_when_every_device_is_online,
    a_new_session_is_admitted_past_max_devices_when_every_device_is_online_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| c.max_devices_per_user = 2);
        w.online("bob@example.com/phone");
        w.online("bob@example.com/laptop");
        w.route(
            chat("alice@example.com/a", "bob@example.com", "m1", "x"),
            &[],
        );
        // Never refuse a live session: the third device gets its replay like any other.
        let out = w.online("bob@example.com/tablet");
        assert_eq!(replayed_ids(&out), ["m1".to_string()]);
        assert_eq!(
            w.device_keys("bob@example.com"),
            ["laptop", "phone", "tablet"]
        );
        assert_eq!(w.engine().counters().devices_evicted, 0);
        // Once one is offline, the next new device makes it go.
        w.offline("bob@example.com/laptop");
        w.advance(Duration::from_secs(60));
        w.online("bob@example.com/desk");
        assert_eq!(
            w.device_keys("bob@example.com"),
            ["desk", "phone", "tablet"]
        );
        assert_eq!(w.engine().counters().devices_evicted, 1);
    }
);

scenario!(
    at_max_log_messages_acked_history_goes_first_then_the_message_goes_back_to_the_server,
    at_max_log_messages_acked_history_goes_first_then_the_message_goes_back_to_the_server_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| {
            c.max_log_messages_per_user = 3;
            c.history = 0;
            c.history_max_age = None;
        });
        w.online("bob@example.com/phone");
        let phone = ["bob@example.com/phone"];
        for id in ["m1", "m2", "m3"] {
            w.route(
                chat("alice@example.com/a", "bob@example.com", id, "x"),
                &phone,
            );
        }
        w.client_sends(crs_received("bob@example.com/phone", "m1"));
        w.client_sends(crs_received("bob@example.com/phone", "m2"));
        // Full: the oldest acked message makes room, one for one.
        let out = w.route(
            chat("alice@example.com/a", "bob@example.com", "m4", "x"),
            &phone,
        );
        assert!(given_back(&out).is_empty());
        assert_eq!(w.logged("bob@example.com"), 3);
        assert_eq!(w.engine().counters().messages_deleted, 1);
        w.route(
            chat("alice@example.com/a", "bob@example.com", "m5", "x"),
            &phone,
        );
        assert_eq!(w.engine().counters().messages_deleted, 2);
        w.log_bytes("bob@example.com");
        // m3 is the oldest now and nobody acked it: it stays, and m6 goes back to the server
        // (also when it was written live: that write may not have reached the phone).
        let out = w.route(
            chat("alice@example.com/a", "bob@example.com", "m6", "x"),
            &phone,
        );
        let back = given_back(&out);
        assert_eq!(back.len(), 1, "{out:?}");
        assert_eq!(back[0].0, jid("bob@example.com"));
        assert!(back[0].1.contains("id=\"m6\""), "{}", back[0].1);
        assert_eq!(w.logged("bob@example.com"), 3);
        assert_eq!(w.engine().counters().log_limit_given_back, 1);
        assert_eq!(w.engine().counters().given_back, 1);
        assert_eq!(w.engine().counters().messages_deleted, 2);
        let bytes = w.log_bytes("bob@example.com");
        assert!(bytes > 0);
        // Retention keeps the total right too.
        for id in ["m3", "m4", "m5"] {
            w.client_sends(crs_received("bob@example.com/phone", id));
        }
        let now = w.now;
        assert_eq!(w.engine().retain(now, 1_000).unwrap().deleted, 3);
        w.engine().commit().unwrap();
        assert_eq!(w.log_bytes("bob@example.com"), 0);
        w.reopen();
        assert_eq!(w.engine().counters().log_limit_given_back, 1);
    }
);

scenario!(
    at_max_log_bytes_acked_history_goes_first_and_an_unacked_log_is_never_trimmed,
    at_max_log_bytes_acked_history_goes_first_and_an_unacked_log_is_never_trimmed_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| c.max_log_bytes_per_user = 2_500);
        let body = "x".repeat(1_000);
        w.online("bob@example.com/phone");
        w.offline("bob@example.com/phone");
        w.route(
            chat("alice@example.com/a", "bob@example.com", "b1", &body),
            &[],
        );
        w.route(
            chat("alice@example.com/a", "bob@example.com", "b2", &body),
            &[],
        );
        assert!(w.log_bytes("bob@example.com") > 2_000);
        // No device acked anything: nothing is deleted to make room.
        let out = w.route(
            chat("alice@example.com/a", "bob@example.com", "b3", &body),
            &[],
        );
        assert_eq!(given_back(&out).len(), 1);
        assert_eq!(w.logged("bob@example.com"), 2);
        // The phone reads b1: it goes to make room for b4.
        w.online("bob@example.com/phone");
        w.client_sends(crs_offline("bob@example.com/phone", "b1"));
        let out = w.route(
            chat("alice@example.com/a", "bob@example.com", "b4", &body),
            &["bob@example.com/phone"],
        );
        assert!(given_back(&out).is_empty(), "{out:?}");
        assert_eq!(w.engine().counters().messages_deleted, 1);
        assert!(w.log_bytes("bob@example.com") <= 2_500);
        // A message alone over the budget never fits, and costs no history.
        w.client_sends(crs_received("bob@example.com/phone", "b2"));
        let big = "y".repeat(3_000);
        let out = w.route(
            chat("alice@example.com/a", "bob@example.com", "big", &big),
            &[],
        );
        assert_eq!(given_back(&out).len(), 1);
        assert_eq!(w.logged("bob@example.com"), 2);
        assert_eq!(w.engine().counters().log_limit_given_back, 2);
    }
);

scenario!(
    an_offline_message_readtrack_does_not_log_goes_back_to_the_servers_storage,
    an_offline_message_readtrack_does_not_log_goes_back_to_the_servers_storage_reopened,
    |reopen| {
        let mut w = World::new(reopen);
        // The server took it from its offline storage for readtrack (no session got it), but
        // readtrack's rule does not log it (no content): it goes back rather than nowhere.
        let mut empty = chat("alice@example.com/a", "bob@example.com", "e1", "");
        empty.body = None;
        let out = w.route(empty.clone(), &[]);
        let back = given_back(&out);
        assert_eq!(back.len(), 1, "{out:?}");
        assert_eq!(back[0].0, jid("bob@example.com"));
        assert!(back[0].1.contains("id=\"e1\""), "{}", back[0].1);
        assert_eq!(w.engine().counters().given_back, 1);
        // Written to a session, it is the session's: nothing to give back.
        w.online("bob@example.com/phone");
        let out = w.route(empty, &["bob@example.com/phone"]);
        assert!(given_back(&out).is_empty(), "{out:?}");
        assert_eq!(w.logged("bob@example.com"), 0);
    }
);

scenario!(
    at_the_log_limit_a_users_own_sent_copy_is_not_logged,
    at_the_log_limit_a_users_own_sent_copy_is_not_logged_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| c.max_log_messages_per_user = 2);
        // The tablet never acks what alice sends from her phone, so nothing can go.
        w.online("alice@example.com/phone");
        w.online("alice@example.com/tablet");
        w.online("bob@example.com/pc");
        for id in ["s1", "s2", "s3"] {
            w.route_sent(
                chat("alice@example.com/phone", "bob@example.com", id, "x"),
                &["bob@example.com/pc"],
            );
        }
        assert_eq!(w.logged("alice@example.com"), 2);
        assert_eq!(w.engine().counters().sent_not_logged, 1);
        // Bob's log is at its limit as well (nothing acked): s3 goes back to the server.
        assert_eq!(w.logged("bob@example.com"), 2);
        assert_eq!(w.engine().counters().log_limit_given_back, 1);
    }
);

scenario!(
    replay_stops_at_max_replay_bytes_and_the_rest_follows_at_the_next_login,
    replay_stops_at_max_replay_bytes_and_the_rest_follows_at_the_next_login_reopened,
    |reopen| {
        let mut w = World::with(reopen, |c| c.max_replay_bytes = 2_500);
        let body = "x".repeat(1_000);
        w.online("bob@example.com/phone");
        w.offline("bob@example.com/phone");
        for id in ["r1", "r2", "r3"] {
            w.route(
                chat("alice@example.com/a", "bob@example.com", id, &body),
                &[],
            );
        }
        let big = "y".repeat(4_000);
        w.route(
            chat("alice@example.com/a", "bob@example.com", "r4", &big),
            &[],
        );
        let out = w.online("bob@example.com/phone");
        assert_eq!(replayed_ids(&out), ["r1".to_string(), "r2".to_string()]);
        assert_eq!(w.engine().counters().replays_truncated, 1);
        for id in ["r1", "r2"] {
            w.client_sends(crs_offline("bob@example.com/phone", id));
        }
        w.offline("bob@example.com/phone");
        // r3 fits, r4 would pass the budget: next time.
        let out = w.online("bob@example.com/phone");
        assert_eq!(replayed_ids(&out), ["r3".to_string()]);
        w.client_sends(crs_offline("bob@example.com/phone", "r3"));
        w.offline("bob@example.com/phone");
        // A message larger than the whole budget still goes, alone.
        let out = w.online("bob@example.com/phone");
        assert_eq!(replayed_ids(&out), ["r4".to_string()]);
        assert_eq!(w.engine().counters().replays_truncated, 2);
    }
);

/// A receipt or marker naming an id that is nowhere examines at most `max_receipt_scan` index
/// entries (here 320: ten index records), however large the unread backlog, and is rejected.
#[test]
fn a_receipt_for_an_unknown_id_reads_a_bounded_part_of_a_large_backlog() {
    let mut w = World::with(false, |c| {
        c.max_receipt_scan = 320;
        c.policy = ReceiptPolicy::None;
    });
    w.online("bob@example.com/phone");
    let total = 2_000; // 63 index records
    for i in 1..=total {
        w.route(
            chat(
                "alice@example.com/a",
                "bob@example.com",
                &format!("p{i}"),
                "x",
            ),
            &["bob@example.com/phone"],
        );
    }
    let rejected = w.engine().counters().receipts_rejected;
    let before = w.engine().store().records_read();
    w.client_sends(crs_received(
        "bob@example.com/phone",
        "3f9c2a71-unknown-e4b8",
    ));
    let read = w.engine().store().records_read() - before;
    assert!(
        read <= 16,
        "a receipt for an unknown id read {read} records"
    );
    assert_eq!(w.engine().counters().receipts_rejected, rejected + 1);
    let before = w.engine().store().records_read();
    w.client_sends(displayed(
        "bob@example.com/phone",
        "alice@example.com",
        "7d01-no-such-id",
    ));
    let read = w.engine().store().records_read() - before;
    assert!(read <= 16, "a marker for an unknown id read {read} records");
    assert_eq!(w.engine().counters().receipts_rejected, rejected + 2);
    // What is within reach is still found.
    w.client_sends(crs_received("bob@example.com/phone", "p1"));
    assert_eq!(w.device("bob@example.com", "phone").acked_upto, 1);
}

/// The bound counts the index entries below the device's cursor that a receipt searches too
/// (for a duplicate): with 64 acked, 70 entries reach the 6th message above the cursor and not
/// the 7th, whether or not the receipts come in order.
#[test]
fn max_receipt_scan_counts_the_entries_below_the_cursor() {
    let mut w = World::with(false, |c| {
        c.max_receipt_scan = 70;
        c.policy = ReceiptPolicy::None;
    });
    w.online("bob@example.com/phone");
    for i in 1..=100 {
        w.route(
            chat(
                "alice@example.com/a",
                "bob@example.com",
                &format!("p{i}"),
                "x",
            ),
            &["bob@example.com/phone"],
        );
    }
    for i in 1..=64 {
        w.client_sends(crs_received("bob@example.com/phone", &format!("p{i}")));
    }
    assert_eq!(w.device("bob@example.com", "phone").acked_upto, 64);
    let counters = |w: &mut World| {
        let c = w.engine().counters();
        (
            c.receipts_accepted,
            c.receipts_duplicate,
            c.receipts_rejected,
        )
    };
    let before = counters(&mut w);
    w.client_sends(crs_received("bob@example.com/phone", "p71"));
    assert_eq!(
        counters(&mut w),
        (before.0, before.1, before.2 + 1),
        "p71 is past the bound"
    );
    w.client_sends(crs_received("bob@example.com/phone", "p70"));
    assert_eq!(
        counters(&mut w),
        (before.0 + 1, before.1, before.2 + 1),
        "p70 is within it"
    );
    assert_eq!(w.device("bob@example.com", "phone").acked_above, vec![70]);
    w.client_sends(crs_received("bob@example.com/phone", "p70"));
    w.client_sends(crs_received("bob@example.com/phone", "p64"));
    assert_eq!(
        counters(&mut w),
        (before.0 + 1, before.1 + 2, before.2 + 1),
        "p70 again and p64 (in the slack) are duplicates"
    );
    w.client_sends(crs_received("bob@example.com/phone", "p65"));
    assert_eq!(w.device("bob@example.com", "phone").acked_upto, 65);
}

/// A message routed live to two sessions readtrack has not seen yet creates both devices
/// (offline: no presence yet); at the device limit the first of them is not taken for an idle
/// device when the second comes.
#[test]
fn devices_created_by_one_event_do_not_evict_each_other() {
    let mut w = World::with(false, |c| c.max_devices_per_user = 2);
    w.online("bob@example.com/phone");
    w.advance(Duration::from_secs(60));
    w.route(
        chat("alice@example.com/a", "bob@example.com", "m1", "x"),
        &["bob@example.com/a", "bob@example.com/b"],
    );
    assert_eq!(w.device_keys("bob@example.com"), ["a", "b", "phone"]);
    assert_eq!(w.engine().counters().devices_evicted, 0);
}

/// A receipt one user sends another is logged for the recipient (a device learns its message was
/// read) but, being a receipt, gets no seed server ack: the sender's client would show the ack as
/// a message (the load bench's receivers saw a 10013 body where they expected a chat).
#[test]
fn a_receipt_to_a_local_user_is_logged_as_a_signal_and_not_acked() {
    let mut w = World::new(false);
    w.online("alice@example.com/a");
    let out = w.route(
        xep_received("bob@example.com/phone", "alice@example.com/a", "m1"),
        &["alice@example.com/a"],
    );
    assert!(acks(&out).is_empty(), "{out:?}");
    assert_eq!(w.logged("alice@example.com"), 1);
    let alice = w
        .engine()
        .store()
        .user_id("alice@example.com")
        .unwrap()
        .unwrap();
    let logged = w.engine().store().message(alice, 1).unwrap().unwrap();
    assert!(logged.signal && !logged.counts_as_unread());
    assert_eq!(
        w.device("alice@example.com", "a").acked_upto,
        1,
        "acked by being written"
    );
}

/// What one chat message costs in round trips to the database, in the steady state (the users
/// and devices known, both of bob's devices online): reads while it is handled, and one commit
/// for the whole batch, whatever its size (the service commits once per batch). Then the same
/// for a receipt of each message. On PostgreSQL the store's read cache answers every read of a
/// chat message (a new block of the log's index is not read: it cannot exist yet) and of a
/// receipt of a recent message, and a commit is two round trips (its statements pipelined,
/// then `COMMIT`). sled sends none.
#[test]
fn a_chat_message_costs_a_few_round_trips() {
    let mut w = World::new(false);
    w.online("bob@example.com/phone");
    w.online("bob@example.com/laptop");
    let live = ["bob@example.com/phone", "bob@example.com/laptop"];
    let routed = |i: u32| {
        let message = chat(
            "alice@example.com/a",
            "bob@example.com",
            &format!("m{i}"),
            "hi",
        );
        Input::routed(
            message,
            jid("bob@example.com"),
            live.iter().map(|s| jid(s)).collect(),
            None,
            false,
        )
    };
    w.route(
        chat("alice@example.com/a", "bob@example.com", "warm", "hi"),
        &live,
    );
    let trips = |w: &mut World| w.engine().store().round_trips();
    let messages = 40u32;
    let (start, now) = (trips(&mut w), w.now);
    for i in 0..messages {
        w.engine().handle(routed(i), now).unwrap();
    }
    let reads = trips(&mut w) - start;
    let start = trips(&mut w);
    w.engine().commit().unwrap();
    let commit = trips(&mut w) - start;
    let start = trips(&mut w);
    for i in 0..messages {
        w.engine()
            .handle(
                Input::sent(crs_received("bob@example.com/phone", &format!("m{i}"))),
                now,
            )
            .unwrap();
    }
    let receipt_reads = trips(&mut w) - start;
    let start = trips(&mut w);
    w.engine().commit().unwrap();
    let receipt_commit = trips(&mut w) - start;
    eprintln!(
        "{messages} messages: {reads} reads, a commit of {commit} round trips; \
         their receipts: {receipt_reads} reads, a commit of {receipt_commit}"
    );
    if backend::on_postgres() {
        assert_eq!(reads, 0, "{reads} reads for {messages} messages");
        // A receipt reads the index blocks from the device's cursor to the head and the
        // record of the message it names: both this process committed moments before, and
        // the backend keeps what it committed (bounded), so none of it is a round trip.
        assert_eq!(
            receipt_reads, 0,
            "{receipt_reads} reads for {messages} receipts"
        );
        // BEGIN, the fence and the writes in one round trip, COMMIT in a second.
        assert_eq!(
            (commit, receipt_commit),
            (2, 2),
            "round trips of the commits"
        );
    } else {
        assert_eq!(
            (reads, commit, receipt_reads, receipt_commit),
            (0, 0, 0, 0),
            "sled sends no statement"
        );
    }
}

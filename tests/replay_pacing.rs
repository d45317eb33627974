//! Replay flow control (`replay-pacing` in docs/rules.md): a replay goes out in chunks of at
//! most `replay_window_bytes`, each ended by a `Pace`; the next chunk follows the server's
//! `Drained` for that token. Engine level, on a real sled store in a temp folder.

use readtrack::engine::{Dialect, Engine, EngineConfig, Input, Output};
use readtrack::jid::Jid;
use readtrack::stanza::{Message, MessageType, Outgoing};
use readtrack::store::{Store, StoreOptions};
use readtrack::time::Millis;

const T0: u64 = 1_700_000_000_000;
const PHONE: &str = "bob@example.com/phone";

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

struct World {
    _dir: tempfile::TempDir,
    engine: Engine,
    now: Millis,
    connections: u64,
}

impl World {
    fn new(tune: impl FnOnce(&mut EngineConfig)) -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new("example.com");
        config.dialect = Dialect::Seed;
        tune(&mut config);
        let store = Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap();
        World {
            engine: Engine::new(store, config).unwrap(),
            _dir: dir,
            now: Millis(T0),
            connections: 0,
        }
    }

    fn step(&mut self, input: Input) -> Vec<Output> {
        self.now = Millis(self.now.0 + 1);
        let mut out = self.engine.handle(input, self.now).unwrap();
        out.extend(self.engine.commit().unwrap());
        out
    }

    fn online(&mut self) -> Vec<Output> {
        self.connections += 1;
        self.step(Input::Available {
            jid: jid(PHONE),
            device_id: None,
            session_id: Some(format!("conn{}", self.connections)),
        })
    }

    fn offline(&mut self) -> Vec<Output> {
        self.step(Input::Unavailable {
            jid: jid(PHONE),
            session_id: Some(format!("conn{}", self.connections)),
        })
    }

    fn drained(&mut self, token: u64) -> Vec<Output> {
        self.step(Input::Drained {
            jid: jid(PHONE),
            token,
        })
    }

    /// Messages `ids` for bob while he is offline, each about `body` bytes.
    fn backlog(&mut self, ids: &[&str], body: usize) {
        for id in ids {
            let mut m = Message::new(MessageType::Chat);
            m.id = Some(id.to_string());
            m.from = Some(jid("alice@example.com/a"));
            m.to = Some(jid("bob@example.com"));
            m.body = Some("x".repeat(body));
            self.step(Input::routed(
                m,
                jid("bob@example.com"),
                vec![],
                None,
                false,
            ));
        }
    }
}

fn replayed_ids(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver {
                stanza: Outgoing::Replay(r),
                ..
            } => Some(r.original().unwrap().id.unwrap()),
            _ => None,
        })
        .collect()
}

/// The token of the `Pace` ending `out`, which must be its last output (the module answers
/// once what was written before it has left).
fn pace(out: &[Output]) -> Option<u64> {
    let paces: Vec<_> = out
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Output::Pace { to, token } => Some((i, to.clone(), *token)),
            _ => None,
        })
        .collect();
    match paces.as_slice() {
        [] => None,
        [(i, to, token)] => {
            assert_eq!(*i, out.len() - 1, "the pace ends the chunk: {out:?}");
            assert_eq!(to, &jid(PHONE));
            Some(*token)
        }
        more => panic!("one pace per chunk, got {more:?}"),
    }
}

fn ids(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// Six messages of about 1,100 stored bytes each, a 2,500-byte window: two per chunk.
fn six_in_chunks_of_two() -> World {
    let mut w = World::new(|c| c.replay_window_bytes = 2_500);
    w.online();
    w.offline();
    w.backlog(&["m1", "m2", "m3", "m4", "m5", "m6"], 1_000);
    w
}

#[test]
fn a_replay_larger_than_the_window_goes_in_chunks_each_after_the_last_one_drained() {
    let mut w = six_in_chunks_of_two();
    let first = w.online();
    assert_eq!(replayed_ids(&first), ids(1..=2));
    let token = pace(&first).expect("more to come: the chunk ends with a pace");
    let second = w.drained(token);
    assert_eq!(replayed_ids(&second), ids(3..=4));
    let token = pace(&second).expect("a pace after the second chunk");
    let third = w.drained(token);
    assert_eq!(replayed_ids(&third), ids(5..=6));
    assert_eq!(pace(&third), None, "nothing left: no pace");
    assert_eq!(w.engine.counters().replays, 6);
    assert_eq!(w.engine.counters().replays_truncated, 0);
}

#[test]
fn a_drained_that_is_not_the_awaited_token_changes_nothing() {
    let mut w = six_in_chunks_of_two();
    let token = pace(&w.online()).unwrap();
    assert!(w.drained(token + 1).is_empty(), "an unknown token");
    let second = w.drained(token);
    assert_eq!(replayed_ids(&second), ids(3..=4));
    assert!(
        w.drained(token).is_empty(),
        "the same drained twice writes one chunk"
    );
    // Another resource of the user, or a user readtrack does not know, is no replay.
    assert!(w
        .step(Input::Drained {
            jid: jid("bob@example.com/laptop"),
            token: pace(&second).unwrap()
        })
        .is_empty());
    assert!(w
        .step(Input::Drained {
            jid: jid("nobody@example.com/x"),
            token: 1
        })
        .is_empty());
}

#[test]
fn a_device_gone_mid_replay_keeps_the_rest_unacked_and_gets_it_at_its_next_login() {
    let mut w = six_in_chunks_of_two();
    let token = pace(&w.online()).unwrap();
    w.offline();
    assert!(
        w.drained(token).is_empty(),
        "a late drained of a session that is gone"
    );
    // Nothing was acked: the next login replays from the start, again in chunks.
    let again = w.online();
    assert_eq!(replayed_ids(&again), ids(1..=2));
    assert!(
        w.drained(token).is_empty(),
        "the token of the earlier session"
    );
    let token = pace(&again).unwrap();
    assert_eq!(replayed_ids(&w.drained(token)), ids(3..=4));
}

#[test]
fn a_new_login_in_the_middle_of_a_replay_starts_it_again_and_voids_the_old_token() {
    let mut w = six_in_chunks_of_two();
    let old = pace(&w.online()).unwrap();
    // The phone reconnected (a new connection) before the server flushed the first chunk.
    let again = w.online();
    assert_eq!(replayed_ids(&again), ids(1..=2));
    assert!(w.drained(old).is_empty());
    let token = pace(&again).unwrap();
    assert_ne!(token, old);
    assert_eq!(replayed_ids(&w.drained(token)), ids(3..=4));
}

#[test]
fn the_per_login_totals_count_every_chunk() {
    // 2,500 bytes in flight, 4,000 per login: two chunks (2 + 1 messages), then the cut.
    let mut w = World::new(|c| {
        c.replay_window_bytes = 2_500;
        c.max_replay_bytes = 4_000;
    });
    w.online();
    w.offline();
    w.backlog(&["m1", "m2", "m3", "m4", "m5", "m6"], 1_000);
    let first = w.online();
    assert_eq!(replayed_ids(&first), ids(1..=2));
    let second = w.drained(pace(&first).unwrap());
    assert_eq!(replayed_ids(&second), ids(3..=3));
    assert_eq!(pace(&second), None, "cut at max_replay_bytes: no pace");
    assert_eq!(w.engine.counters().replays_truncated, 1);

    let mut w = World::new(|c| {
        c.replay_window_bytes = 2_500;
        c.max_replay = 3;
    });
    w.online();
    w.offline();
    w.backlog(&["m1", "m2", "m3", "m4", "m5", "m6"], 1_000);
    let first = w.online();
    let second = w.drained(pace(&first).unwrap());
    assert_eq!(replayed_ids(&second), ids(3..=3));
    assert_eq!(pace(&second), None, "cut at max_replay: no pace");
}

#[test]
fn a_message_larger_than_the_window_goes_alone() {
    let mut w = World::new(|c| c.replay_window_bytes = 500);
    w.online();
    w.offline();
    w.backlog(&["m1", "m2"], 1_000);
    let first = w.online();
    assert_eq!(replayed_ids(&first), ids(1..=1));
    let second = w.drained(pace(&first).unwrap());
    assert_eq!(replayed_ids(&second), ids(2..=2));
    assert_eq!(pace(&second), None);
}

#[test]
fn a_zero_window_writes_the_whole_replay_at_once() {
    let mut w = World::new(|c| c.replay_window_bytes = 0);
    w.online();
    w.offline();
    w.backlog(&["m1", "m2", "m3", "m4", "m5", "m6"], 1_000);
    let out = w.online();
    assert_eq!(replayed_ids(&out), ids(1..=6));
    assert_eq!(pace(&out), None);
}

#[test]
fn what_arrives_live_during_a_paced_replay_is_not_replayed_again() {
    let mut w = six_in_chunks_of_two();
    let first = w.online();
    // m7 reaches the phone live between two chunks.
    let mut m = Message::new(MessageType::Chat);
    m.id = Some("m7".into());
    m.from = Some(jid("alice@example.com/a"));
    m.to = Some(jid("bob@example.com"));
    m.body = Some("live".into());
    w.step(Input::routed(
        m,
        jid("bob@example.com"),
        vec![jid(PHONE)],
        None,
        false,
    ));
    let mut replayed = replayed_ids(&first);
    let mut token = pace(&first);
    while let Some(t) = token {
        let out = w.drained(t);
        replayed.extend(replayed_ids(&out));
        token = pace(&out);
    }
    assert_eq!(replayed, ids(1..=6));
}

//! Replay flow control (`replay-pacing` in docs/rules.md): a replay goes out in chunks of at
//! most `replay_window_bytes`, each ended by a `Pace`; the next chunk follows the server's
//! `Drained` for that token. Engine level on a real sled store in a temp folder, then end to end
//! through a real Prosody (either line, `READTRACK_PROSODY`) with a slow-reading client.

mod common;

use common::jid;
use readtrack::engine::{Dialect, Engine, EngineConfig, Input, Output};
use readtrack::stanza::{Message, MessageType, Outgoing};
use readtrack::store::{Store, StoreOptions};
use readtrack::time::Millis;

const T0: u64 = 1_700_000_000_000;
const PHONE: &str = "bob@example.com/phone";

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

// ---------------------------------------------------------------------------------------------
// End to end: a real Prosody, the readtrack binary, a client that reads slowly.

mod end_to_end {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    use super::common::daemon::{Readtrack, ReadtrackOpts};
    use super::common::*;

    /// 5,000 messages of about 4 KiB: a 20 MiB backlog (fewer, larger messages than a typical
    /// backlog, which keeps the time spent filling it down; the buffer counts bytes).
    const BACKLOG: usize = 5_000;
    const BODY: usize = 4_200;
    const MIB: u64 = 1024 * 1024;

    /// A Prosody whose c2s connections report their send buffer's peak
    /// (tests/prosody/mod_sendbuf_probe.lua).
    fn probed_server() -> Prosody {
        let p = Prosody::start(ProsodyOpts::with_test_module("sendbuf_probe"));
        for user in ["alice", "bob"] {
            p.register(user, "pw");
        }
        p
    }

    /// The largest send buffer the probe saw on the connection of `full_jid`.
    fn peak_send_buffer(p: &Prosody, full_jid: &str) -> u64 {
        let log = p.log();
        assert!(
            !log.contains("sendbuf-probe cannot see"),
            "the probe cannot measure on this backend"
        );
        let marker = format!("sendbuf-probe {full_jid} peak ");
        log.lines()
            .filter_map(|l| l.split_once(&marker).map(|(_, n)| n.trim()))
            .map(|n| n.parse::<u64>().unwrap())
            .max()
            .unwrap_or(0)
    }

    /// `count` messages from alice to bob (offline), each acked by the server (seed 10013), so
    /// each is logged. Sent in windows of 200 so the sender does not flood its own connection.
    async fn fill_backlog(p: &Prosody, count: usize) {
        let mut alice = online(p, "alice", "Spark").await;
        let body = "x".repeat(BODY);
        let mut acked = 0;
        let mut sent = 0;
        let started = Instant::now();
        while acked < count {
            while sent < count && sent - acked < 200 {
                alice
                    .send_raw(&chat(&format!("b{sent}"), "bob@localhost", &body))
                    .await;
                sent += 1;
            }
            let s = alice
                .next_stanza(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("server acks stopped at {acked} of {count}"));
            if attr(&s, "type").as_deref() == Some("crs") && s.contains("10013") {
                acked += 1;
            }
        }
        eprintln!(
            "backlog of {count} messages logged in {:?}",
            started.elapsed()
        );
        alice.close().await;
    }

    /// A raw c2s connection of bob's, logged in as `resource` and available, with a small
    /// receive buffer (64 KiB asked of the kernel, which then does not grow it): what the
    /// client does not read waits in the server, where the probe sees it.
    async fn raw_bob(p: &Prosody, resource: &str) -> (TcpStream, Vec<u8>) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let mut stream = socket
            .connect(([127, 0, 0, 1], p.c2s_port).into())
            .await
            .unwrap();
        let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                      xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
        let mut buf = Vec::new();
        stream.write_all(header.as_bytes()).await.unwrap();
        read_until(&mut stream, &mut buf, "</stream:features>").await;
        // SASL PLAIN of "\0bob\0pw".
        stream
            .write_all(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGJvYgBwdw==</auth>")
            .await
            .unwrap();
        read_until(&mut stream, &mut buf, "<success").await;
        stream.write_all(header.as_bytes()).await.unwrap();
        read_until(&mut stream, &mut buf, "</stream:features>").await;
        let bind = format!(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq><presence/>"
        );
        stream.write_all(bind.as_bytes()).await.unwrap();
        read_until(&mut stream, &mut buf, "</iq>").await;
        (stream, buf)
    }

    /// Reads until `needle` has arrived; what follows it stays in `buf`.
    async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &str) {
        loop {
            if let Some(at) = find(buf, needle.as_bytes()) {
                buf.drain(..at + needle.len());
                return;
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {needle} from the server"))
                .unwrap();
            assert!(n > 0, "closed while waiting for {needle}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// Logs bob in as `resource` and reads the replay slowly: nothing at all for the first 5
    /// seconds, then 16 KiB every 2 ms. The backlog's ids received, in order, and the time it
    /// took.
    async fn slow_replay(p: &Prosody, resource: &str) -> (Vec<usize>, Duration) {
        let (mut stream, mut buf) = raw_bob(p, resource).await;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut ids = Vec::new();
        let end = b"</message>";
        while ids.len() < BACKLOG {
            let mut chunk = vec![0u8; 16 * 1024];
            let n = match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut chunk))
                .await
            {
                Ok(Ok(n)) if n > 0 => n,
                other => panic!(
                    "the replay stopped after {} of {BACKLOG} messages ({other:?}); Prosody log:\n{}",
                    ids.len(),
                    p.log()
                        .lines()
                        .filter(|l| l.contains("buffer") || l.contains("error"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            while let Some(at) = find(&buf[used..], end) {
                // A presence or an iq may come before a message: its own start tag counts.
                let segment = &buf[used..used + at];
                let start = find(segment, b"<message").unwrap_or(0);
                let stanza = String::from_utf8_lossy(&segment[start..]).into_owned();
                used += at + end.len();
                if let Some(n) =
                    attr(&stanza, "id").and_then(|id| id.strip_prefix('b')?.parse().ok())
                {
                    ids.push(n);
                }
            }
            buf.drain(..used);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (ids, started.elapsed())
    }

    /// The issue-14 measurement: a 20 MiB backlog replayed to a client that stalls for 5 s,
    /// then reads slowly. Paced (the default 256 KiB window), the device's send buffer in
    /// Prosody peaks near one window and the replay completes, in order (Prosody 13 destroys a
    /// connection whose buffer passes 32 MiB; 0.12's grows without bound). The lower bound on
    /// the peak shows the probe does see a chunk waiting in the buffer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_20_mib_replay_reaches_a_slow_reader_through_a_send_buffer_far_below_32_mib() {
        let p = probed_server();
        let _rt = Readtrack::start(
            &p,
            ReadtrackOpts {
                extra: "[limits]\nmax_replay_bytes = 67108864\n".into(),
                ..ReadtrackOpts::default()
            },
        );
        fill_backlog(&p, BACKLOG).await;

        let (ids, took) = slow_replay(&p, "paced").await;
        assert_eq!(
            ids,
            (0..BACKLOG).collect::<Vec<_>>(),
            "every message, in order"
        );
        let peak = peak_send_buffer(&p, "bob@localhost/paced");
        eprintln!(
            "{}: paced replay of {BACKLOG} messages in {took:?}, peak send buffer {peak} bytes",
            prosody_line()
        );
        assert!(
            (100 * 1024..2 * MIB).contains(&peak),
            "peak send buffer {peak} bytes: expected about one 256 KiB window, far below 32 MiB"
        );
        assert!(!p.log().contains("no space left in buffer"));
    }
}

//! One workload at a time, for a profiler (the criterion benches interleave too much):
//!
//! ```sh
//! cargo bench --bench profile --no-run
//! valgrind --tool=callgrind --callgrind-out-file=target/cg.ingest \
//!     target/release/deps/profile-<hash> ingest 20000
//! callgrind_annotate --inclusive=yes target/cg.ingest | head -60
//! ```
//!
//! Workloads: `parse N`, `events N` (N routed chat events and N receipt events from the server,
//! read as the service reads them and the chat message's stored form cut as the engine logs
//! it; no store), `ingest N` (routed to a live device, receipts required, commit every 64),
//! `receipt N` (N acks after logging N messages, commit every 64; the acks alone are
//! `measured_receipts`), `replay N U` (log N messages
//! offline, read all but the last U, then one login replays them), `scan N U` (raw sled baseline:
//! N values of the same size, range scan of the last U).

use std::time::Instant;

use readtrack::engine::{Engine, EngineConfig, Input, ReceiptPolicy};
use readtrack::jid::Jid;
use readtrack::stanza::{parse_message, write, Message, MessageType, Receipt};
use readtrack::store::{Store, StoreOptions};
use readtrack::time::Millis;

const T0: u64 = 1_700_000_000_000;

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

fn routed(id: u64, live: bool) -> Input {
    let mut m = Message::new(MessageType::Chat);
    m.id = Some(format!("m{id}"));
    m.from = Some(jid("alice@example.com/Spark 2.6.3"));
    m.to = Some(jid("bob@example.com"));
    m.body = Some(
        r#"{"time":"2013-11-20T06:41:36.102Z","cnt":"hello","msgTypec":"10000","mtype":"0"}"#
            .into(),
    );
    m.thread = Some("P2J5R2".into());
    Input::routed(
        m,
        jid("bob@example.com"),
        if live {
            vec![jid("bob@example.com/phone")]
        } else {
            Vec::new()
        },
        None,
        false,
    )
}

/// What the engine logs of an input: the stored form of a routed message.
fn logged_bytes(input: &Input) -> usize {
    match input {
        Input::Routed { original, .. } => original
            .stored_form("bob@localhost", false)
            .unwrap()
            .text
            .len(),
        _ => 1,
    }
}

/// The service's allocator (the default `mimalloc` feature), so the benches measure what runs.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    readtrack::memory::no_transparent_huge_pages();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // Under plain `cargo bench` (no workload named) there is nothing to profile.
    let Some(what) = args.first().map(String::as_str) else {
        println!("profile: name a workload (parse, ingest, receipt, replay, scan); see benches/profile.rs");
        return;
    };
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scratch");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    // `PROFILE_CACHE_MB` sets sled's page cache (default: the store's 64 MiB).
    let mut options = StoreOptions::default();
    if let Some(mb) = std::env::var("PROFILE_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options.cache_bytes = mb * 1024 * 1024;
    }
    let store = Store::open(dir.path().join("db"), &options).unwrap();
    let mut config = EngineConfig::new("example.com");
    config.dialect = readtrack::engine::Dialect::Seed;
    if what == "replay" {
        config.policy = ReceiptPolicy::None;
        // The whole replay at one login (paced, it comes a window at a time).
        config.replay_window_bytes = 0;
    }
    let mut engine = Engine::new(store, config).unwrap();
    let phone = jid("bob@example.com/phone");
    let start = Instant::now();
    match what {
        "parse" => {
            let stanza = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/seed-chat.xml"),
            )
            .unwrap();
            let mut bytes = 0;
            for _ in 0..n {
                let m = parse_message(&stanza).unwrap();
                bytes += write::message(&m).len();
            }
            println!("{bytes}");
        }
        "events" => {
            let fixture = |name: &str| {
                std::fs::read_to_string(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join(format!("tests/fixtures/hooks/{name}.xml")),
                )
                .unwrap()
            };
            let (chat, receipt) = (fixture("routed"), fixture("sent-receipt"));
            let mut bytes = 0;
            for _ in 0..n {
                for stanza in [&chat, &receipt] {
                    match readtrack::service::from_server(stanza, "localhost") {
                        Ok(readtrack::service::FromServer::Input(input, _)) => {
                            bytes += logged_bytes(&input)
                        }
                        _ => panic!("not an input: {stanza}"),
                    }
                }
            }
            println!("{bytes}");
        }
        "ingest" | "receipt" => {
            engine
                .handle(
                    Input::Available {
                        jid: phone.clone(),
                        device_id: None,
                        session_id: None,
                    },
                    Millis(T0),
                )
                .unwrap();
            for i in 1..=n {
                engine.handle(routed(i, true), Millis(T0 + i)).unwrap();
                if i % 64 == 0 {
                    engine.commit().unwrap();
                }
            }
            engine.commit().unwrap();
            if what == "receipt" {
                let logged = start.elapsed();
                let start = Instant::now();
                measured_receipts(&mut engine, &phone, n);
                println!("logged in {logged:?}, acked in {:?}", start.elapsed());
            }
        }
        "replay" => {
            // `replay N U`: N logged while the phone is away, all but the last U read, one login.
            let unread: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(n);
            engine
                .handle(
                    Input::Available {
                        jid: phone.clone(),
                        device_id: None,
                        session_id: None,
                    },
                    Millis(T0),
                )
                .unwrap();
            engine
                .handle(
                    Input::Unavailable {
                        jid: phone.clone(),
                        session_id: None,
                    },
                    Millis(T0),
                )
                .unwrap();
            for i in 1..=n {
                engine.handle(routed(i, false), Millis(T0)).unwrap();
                if i % 1024 == 0 {
                    engine.commit().unwrap();
                }
            }
            if unread < n {
                let mut marker = Message::new(MessageType::Chat);
                marker.from = Some(phone.clone());
                marker.to = Some(jid("alice@example.com/Spark 2.6.3"));
                marker.displayed = Some(format!("m{}", n - unread));
                engine.handle(Input::sent(marker), Millis(T0)).unwrap();
            }
            engine.commit().unwrap();
            let logged = start.elapsed();
            let start = Instant::now();
            let (stanzas, bytes) = measured_replay(&mut engine, phone);
            println!(
                "logged in {logged:?}; replayed {stanzas} ({bytes} bytes) in {:?}",
                start.elapsed()
            );
            return;
        }
        "scan" => {
            // `scan N U`: the baseline. N values of a logged message's size in a raw sled tree,
            // then a range scan of the last U.
            let unread: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(n);
            let db = sled::Config::new()
                .path(dir.path().join("raw"))
                .cache_capacity(options.cache_bytes)
                .open()
                .unwrap();
            let tree = db.open_tree("log").unwrap();
            // A logged chat message as the store encodes it (the same record as benches/core.rs).
            let record = readtrack::store::MessageRecord {
                seq: 1,
                stanza_id: u128::MAX / 3,
                msg_id: Some("m1000000".into()),
                from: "alice@example.com/Spark 2.6.3".into(),
                kind: Some("chat".into()),
                stanza: format!(
                    "<message xmlns=\"jabber:client\" type=\"chat\"><body>{}</body></message>",
                    (Some(
                    r#"{"time":"2013-11-20T06:41:36.102Z","cnt":"hello","msgTypec":"10000","mtype":"0"}"#
                        .into(),
                )).map(|b: String| b.replace('&', "&amp;").replace('<', "&lt;")).unwrap_or_default()
                ),
                signal: false,
                asks_receipt: false,
                logged_at: T0,
                system: false,
                receipt: readtrack::store::ReceiptState::NotRequired,
                archive_id: None,
                sent: false,
                to: None,
            };
            let value =
                bincode::serde::encode_to_vec(&record, bincode::config::standard()).unwrap();
            for i in 1..=n {
                tree.insert(key(i), value.as_slice()).unwrap();
            }
            db.flush().unwrap();
            let start = Instant::now();
            let bytes = measured_scan(&tree, n - unread + 1);
            println!("scanned {unread} ({bytes} bytes) in {:?}", start.elapsed());
            return;
        }
        other => panic!("unknown workload {other:?} (parse, ingest, receipt, replay)"),
    }
    println!("{what} {n}: {:?}", start.elapsed());
}

fn key(seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&1u64.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The measured part of `receipt`: N seed receipts from the phone, one per logged message, in
/// order, commit every 64 (callgrind: `--toggle-collect='*measured_receipts*'`).
#[inline(never)]
fn measured_receipts(engine: &mut Engine, phone: &Jid, n: u64) {
    for i in 1..=n {
        let mut m = Message::new(MessageType::Crs);
        m.id = Some(format!("m{i}"));
        m.from = Some(phone.clone());
        m.to = Some(jid("example.com"));
        m.receipt = Some(Receipt::SeedReceived {
            id: format!("m{i}"),
            status: "200".into(),
        });
        engine.handle(Input::sent(m), Millis(T0 + n)).unwrap();
        if i % 64 == 0 {
            engine.commit().unwrap();
        }
    }
    engine.commit().unwrap();
}

/// The measured part of `replay` (callgrind: `--toggle-collect='*measured_replay*'`).
#[inline(never)]
fn measured_replay(engine: &mut Engine, phone: Jid) -> (usize, usize) {
    let (faults, start) = (minor_faults(), Instant::now());
    let out = engine
        .handle(
            Input::Available {
                jid: phone,
                device_id: None,
                session_id: None,
            },
            Millis(T0 + 1),
        )
        .unwrap();
    let engine_side = start.elapsed();
    let mut bytes = 0;
    for o in &out {
        if let readtrack::engine::Output::Deliver { stanza, .. } = o {
            bytes += write::outgoing(stanza).len();
        }
    }
    eprintln!(
        "replay: engine {engine_side:?}, serialisation {:?}, {} minor page faults",
        start.elapsed() - engine_side,
        minor_faults() - faults
    );
    (out.len(), bytes)
}

/// This process's minor page faults so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The measured part of `scan` (callgrind: `--toggle-collect='*measured_scan*'`).
#[inline(never)]
fn measured_scan(tree: &sled::Tree, from: u64) -> usize {
    let mut bytes = 0;
    for kv in tree.range(key(from)..=key(u64::MAX)) {
        bytes += kv.unwrap().1.len();
    }
    bytes
}

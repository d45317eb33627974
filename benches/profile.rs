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
//! `measured_receipts`), `chat N` (the load bench's xep chat as `readtrack serve` gets it: per
//! message its hook events, read with `service::from_server` and handled, eight pairs, each
//! receipt 64 messages after its message, commit every 96 messages; all of it is
//! `measured_chat`; the receipt's signal rides on its `<routed sent>`, as a module told
//! `routed-signal` sends it: two events per message), `frame N` (the events of `chat N` as one
//! stream, cut into stanzas by the link's framer, which runs on the link's reader thread, not
//! in `chat`), `chat-signal N` (the same with the receipt's
//! separate `<signal>` before its `<routed>`, as an older module or readtrack has it: three
//! events per message), `chat-batched N` and `frame-batched N` (the same events eight to a
//! `<message>`, as a module told `batched` writes a turn's), `replay N U` (log N messages
//! offline, read all but the last U, then one login replays them), `scan N U` (raw sled baseline:
//! N values of the same size, range scan of the last U).

use std::time::Instant;

use readtrack::engine::{Engine, EngineConfig, Input, ReceiptPolicy};
use readtrack::jid::Jid;
use readtrack::stanza::{
    parse_message, write, Frame, Framer, Limits, Message, MessageType, Receipt,
};
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
static GLOBAL: readtrack::alloc::Allocator = readtrack::alloc::Allocator;

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
    if what.starts_with("chat") {
        // As `readtrack serve` runs for the load bench's `LOAD_DIALECT=xep`.
        config = EngineConfig::new("localhost");
        config.dialect = readtrack::engine::Dialect::Xep;
    }
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
        "frame" | "frame-batched" => {
            // The events of `chat N` as one stream from the server, read in the link's 8-KiB
            // chunks and cut into stanzas as the link's reader does, on its own thread.
            let mut stream = String::from("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' from='readtrack.localhost' id='p'>");
            let mut script = chat_script(n, true);
            if what == "frame-batched" {
                script = batched(script);
            }
            for stanza in script.into_iter().flatten() {
                stream.push_str(&stanza);
            }
            let start = Instant::now();
            let (frames, bytes) = measured_frame(stream.as_bytes());
            println!(
                "frame {n}: {frames} stanzas, {bytes} bytes in {:?}",
                start.elapsed()
            );
            return;
        }
        "chat" | "chat-signal" | "chat-batched" => {
            let mut script = chat_script(n, what != "chat-signal");
            if what == "chat-batched" {
                script = batched(script);
            }
            let start = Instant::now();
            let handled = measured_chat(&mut engine, &script);
            println!("chat {n}: {handled} events in {:?}", start.elapsed());
            return;
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

/// The events of one chat message of the load bench (xep dialect) as mod_readtrack reports
/// them: the message, routed to the receiver's session and logged as sent for the sender (one
/// `<routed sent>`); the receiver's XEP-0184 receipt (a compact `<signal>`); the receipt,
/// routed to the sender's session. `fold`: the receipt's signal rides on its `<routed
/// sent='true'>` (readtrack accepts `routed-signal`), and the second is empty. Each written
/// message is the bytes Prosody wrote, inheriting its namespace (`inherited-namespace`).
fn chat_events(pair: u64, i: u64, fold: bool) -> [String; 3] {
    let (alice, bob) = (
        format!("send{pair}@localhost/load"),
        format!("recv{pair}@localhost/load"),
    );
    let (alice_bare, bob_bare) = (
        format!("send{pair}@localhost"),
        format!("recv{pair}@localhost"),
    );
    let id = format!("p{pair}m{i}");
    [
        format!("<message from='localhost' to='readtrack.localhost'><routed xmlns='urn:readtrack:hook:0' to='{bob_bare}' archive-id='a{pair}x{i}' sent='true'><session jid='{bob}'/><f:forwarded xmlns:f='urn:xmpp:forward:0' xmlns='jabber:client'><message id='{id}' type='chat' to='{bob_bare}' from='{alice}'><request xmlns='urn:xmpp:receipts'/><body>load message {i}</body></message></f:forwarded></routed></message>"),
        if fold {
            String::new()
        } else {
            format!("<message from='localhost' to='readtrack.localhost'><signal xmlns='urn:readtrack:hook:0' from='{bob}' to='{alice}' id='rc-{id}' receipt='xep0184' receipt-id='{id}'/></message>")
        },
        format!("<message from='localhost' to='readtrack.localhost'><routed xmlns='urn:readtrack:hook:0' to='{alice_bare}' archive-id='b{pair}x{i}'{}><session jid='{alice}'/><f:forwarded xmlns:f='urn:xmpp:forward:0' xmlns='jabber:client'><message id='rc-{id}' to='{alice}' from='{bob}'><received xmlns='urn:xmpp:receipts' id='{id}'/></message></f:forwarded></routed></message>", if fold { " sent='true'" } else { "" }),
    ]
}

/// The events of `chat N` in the order `readtrack serve` gets them: eight pairs online, then
/// N messages round robin, each one's receipt (the last two events) 64 messages later; `None`
/// marks a commit, after every 96 messages' worth of events (the load bench's batches).
fn chat_script(n: u64, fold: bool) -> Vec<Option<String>> {
    const PAIRS: u64 = 8;
    const LAG: u64 = 64;
    let mut script = Vec::new();
    for pair in 0..PAIRS {
        for who in ["send", "recv"] {
            script.push(Some(format!("<message from='localhost' to='readtrack.localhost'><available xmlns='urn:readtrack:hook:0' jid='{who}{pair}@localhost/load'/></message>")));
        }
    }
    script.push(None);
    for k in 0..n + LAG {
        if k < n {
            let [chat, _, _] = chat_events(k % PAIRS, k / PAIRS, fold);
            script.push(Some(chat));
        }
        if k >= LAG {
            let acked = k - LAG;
            let [_, receipt, routed_receipt] = chat_events(acked % PAIRS, acked / PAIRS, fold);
            if !fold {
                script.push(Some(receipt));
            }
            script.push(Some(routed_receipt));
        }
        if k % 96 == 95 {
            script.push(None);
        }
    }
    script.push(None);
    script
}

/// The events of a script, `BATCH` to a `<message>` between commits, as a module told `batched`
/// writes the events of one turn of Prosody's loop (`chat-batched`, `frame-batched`).
fn batched(script: Vec<Option<String>>) -> Vec<Option<String>> {
    const BATCH: usize = 8;
    const OPEN: &str = "<message from='localhost' to='readtrack.localhost'>";
    let mut out = Vec::new();
    let mut events = Vec::new();
    let flush = |events: &mut Vec<String>, out: &mut Vec<Option<String>>| {
        if !events.is_empty() {
            let inner: String = events
                .drain(..)
                .map(|e| e[OPEN.len()..e.len() - "</message>".len()].to_string())
                .collect();
            out.push(Some(format!("{OPEN}{inner}</message>")));
        }
    };
    for step in script {
        match step {
            Some(event) => {
                assert!(event.starts_with(OPEN) && event.ends_with("</message>"));
                events.push(event);
                if events.len() == BATCH {
                    flush(&mut events, &mut out);
                }
            }
            None => {
                flush(&mut events, &mut out);
                out.push(None);
            }
        }
    }
    flush(&mut events, &mut out);
    out
}

/// The measured part of `chat` (callgrind: `--toggle-collect='*measured_chat*'`): each event
/// read as `readtrack serve` reads it (`service::from_server_batch`: one, or several to a
/// message in `chat-batched`) and handled, a commit at each `None`. Returns the events handled.
#[inline(never)]
fn measured_chat(engine: &mut Engine, script: &[Option<String>]) -> u64 {
    let mut handled = 0;
    for (at, step) in script.iter().enumerate() {
        let Some(stanza) = step else {
            engine.commit().unwrap();
            continue;
        };
        for event in readtrack::service::from_server_batch(stanza, "localhost").unwrap() {
            match event {
                Ok(readtrack::service::FromServer::Input(input, _)) => {
                    engine.handle(*input, Millis(T0 + at as u64)).unwrap();
                }
                _ => panic!("not an input: {stanza}"),
            }
            handled += 1;
        }
    }
    handled
}

/// The measured part of `frame` (callgrind: `--toggle-collect='*measured_frame*'`): the
/// stream pushed into a [`Framer`] 8 KiB at a time, each stanza taken out before the next
/// chunk. Returns the stanzas and their bytes.
#[inline(never)]
fn measured_frame(stream: &[u8]) -> (u64, usize) {
    let mut framer = Framer::new(Limits::default());
    let (mut frames, mut bytes) = (0, 0);
    for chunk in stream.chunks(8 * 1024) {
        framer.push(chunk);
        while let Some(frame) = framer.next_frame().unwrap() {
            if let Frame::Stanza(text) = frame {
                frames += 1;
                bytes += text.len();
            }
        }
    }
    (frames, bytes)
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

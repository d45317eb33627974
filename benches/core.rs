//! Component benches of issue 5, each next to its physical baseline in the same run:
//!
//! - `parse/*`: stanza framing, parsing and writing vs a bare quick-xml event scan of the same bytes;
//! - `ingest/*`: engine ingest (batch of 64 routed messages, then the group-commit flush) vs raw
//!   sled inserts of the same bytes (the records the store keeps for those messages) with the
//!   same flush policy, and vs raw inserts of the log entry alone;
//! - `receipt/*`: engine receipt processing (64 acks, then commit) vs raw sled read-modify-write
//!   of one key with the same flush policy;
//! - `replay/*`: replay of 10k unread among 1M logged for one user (engine + serialisation) vs a
//!   raw sled range scan of 10k keys among 1M values of the same size;
//! - scaling: ingest rate and replay time at 10k, 100k and 1M logged messages for one user,
//!   measured while the 1M log is built (once per run).
//! - PostgreSQL, when `READTRACK_BENCH_PG_URL` names a server (an admin URL such as
//!   `scripts/postgres start` prints): its own baselines in the same groups, a batched `INSERT`
//!   of the log rows a batch writes (`ingest/pg_insert_batch64`: user_id bigint, seq bigint,
//!   record bytea, one transaction per 64 rows) and an indexed range read of 10k rows of one user
//!   among 1M (`replay/pg_range_10k_of_1m`), and the engine on PostgreSQL beside the engine on
//!   sled (`engine_pg_batch64`, `engine_pg_ack_batch64`, `engine_pg_replay_10k_of_1m`), each in
//!   a scratch database the run creates and drops. Unset, those rows say "not measured".
//!
//! After criterion finishes, the ratios (baseline time / subject time, so 1.0 = as fast as the
//! baseline) are printed as a table and written to `target/readtrack-bench.json`. Only estimates
//! written by this run are used. Run: `cargo bench --bench core`.

/// The service's allocator (the default `mimalloc` feature), so the benches measure what runs.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: readtrack::alloc::Allocator = readtrack::alloc::Allocator;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use criterion::{black_box, Criterion, Throughput};
use readtrack::engine::{Engine, EngineConfig, Input, Output, ReceiptPolicy};
use readtrack::jid::Jid;
use readtrack::stanza::{parse_message, write, Framer, Limits, Message, MessageType, Receipt};
use readtrack::store::{
    ConversationRecord, Counters, DeliveryRecord, IndexEntry, Location, MessageRecord,
    ReceiptState, Store, StoreOptions, UserRecord,
};
use readtrack::time::Millis;
use serde_json::json;

// The PostgreSQL scratch databases, shared with `load.rs` (which takes all of `common/`).
#[path = "common/pgscratch.rs"]
mod pgscratch;
use pgscratch::{pg_admin_url, PgScratch, PG_NOT_MEASURED};

const T0: u64 = 1_700_000_000_000;
/// Group commit policy of every write bench: one flush per this many operations.
const BATCH: usize = 64;
const BODY: &str =
    r#"{"time":"2013-11-20T06:41:36.102Z","cnt":"hello","msgTypec":"10000","mtype":"0"}"#;

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// Folder for the bench databases: under `target/`, on the same disk as a real store.
fn scratch() -> tempfile::TempDir {
    let base = target_dir().join("bench-scratch");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// sled's cache for every store of the run: the default (`[store] cache_mb = 64`) unless
/// `BENCH_CACHE_MB` says otherwise, for the engine and the raw baselines alike.
fn store_options() -> StoreOptions {
    match std::env::var("BENCH_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(mb) => StoreOptions {
            cache_bytes: mb << 20,
            ..StoreOptions::default()
        },
        None => StoreOptions::default(),
    }
}

fn open_engine(path: &Path, policy: ReceiptPolicy) -> Engine {
    open_engine_at(&Location::Sled(path.to_path_buf()), policy)
}

fn open_engine_at(location: &Location, policy: ReceiptPolicy) -> Engine {
    let store = Store::open_location(location, &store_options()).unwrap();
    let mut config = EngineConfig::new("example.com");
    config.dialect = readtrack::engine::Dialect::Seed;
    config.policy = policy;
    // The whole replay at one login, as the raw scan it is measured against reads it: paced, it
    // would come a window at a time, each after the module's <drained>.
    config.replay_window_bytes = 0;
    // The scaling points and the replay figures log up to 1M messages for one user, which
    // `max_log_messages_per_user` (100k by default) refuses once the log is full of unacked
    // messages: the rest were handed back, unlogged, and a login "of 10k among 1M" replayed
    // the oldest 10k unread (capped by `max_replay`) of a 100k log.
    config.max_log_messages_per_user = u64::MAX;
    config.max_log_bytes_per_user = u64::MAX;
    Engine::new(store, config).unwrap()
}

fn raw_sled(path: &Path) -> sled::Db {
    sled::Config::new()
        .path(path)
        .cache_capacity(store_options().cache_bytes)
        .open()
        .unwrap()
}

fn chat(id: &str) -> Message {
    let mut m = Message::new(MessageType::Chat);
    m.id = Some(id.into());
    m.from = Some(jid("alice@example.com/Spark 2.6.3"));
    m.to = Some(jid("bob@example.com"));
    m.body = Some(BODY.into());
    m.thread = Some("P2J5R2".into());
    m
}

fn routed(id: &str, live: bool) -> Input {
    Input::routed(
        chat(id),
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

fn crs_received(id: &str) -> Input {
    let mut m = Message::new(MessageType::Crs);
    m.id = Some(id.into());
    m.from = Some(jid("bob@example.com/phone"));
    m.to = Some(jid("example.com"));
    m.receipt = Some(Receipt::SeedReceived {
        id: id.into(),
        status: "200".into(),
    });
    Input::sent(m)
}

fn displayed(id: &str) -> Input {
    let mut m = Message::new(MessageType::Chat);
    m.from = Some(jid("bob@example.com/phone"));
    m.to = Some(jid("alice@example.com/Spark 2.6.3"));
    m.displayed = Some(id.into());
    Input::sent(m)
}

fn available() -> Input {
    Input::Available {
        jid: jid("bob@example.com/phone"),
        device_id: None,
        session_id: None,
    }
}

fn unavailable() -> Input {
    Input::Unavailable {
        jid: jid("bob@example.com/phone"),
        session_id: None,
    }
}

/// One logged chat message as the store encodes it in `userseq_message`.
fn encoded<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
}

fn message_record_bytes() -> Vec<u8> {
    let record = MessageRecord {
        seq: 1,
        stanza_id: u128::MAX / 3,
        msg_id: Some("m1000000".into()),
        from: "alice@example.com/Spark 2.6.3".into(),
        kind: Some("chat".into()),
        stanza: format!(
            "<message xmlns=\"jabber:client\" type=\"chat\"><body>{}</body></message>",
            (Some(BODY.into()))
                .map(|b: String| b.replace('&', "&amp;").replace('<', "&lt;"))
                .unwrap_or_default()
        ),
        signal: false,
        asks_receipt: false,
        logged_at: T0,
        system: false,
        receipt: ReceiptState::Waiting { deadline: T0 },
        archive_id: None,
        sent: false,
        to: None,
    };
    encoded(&record)
}

fn user_seq(user: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&user.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Logs messages `{prefix}{n}` until `*logged` reaches `upto`, outside any clock (commit every
/// 1024, then once at the end).
fn log_untimed(engine: &mut Engine, logged: &mut u64, upto: u64, prefix: &str, live: bool) {
    while *logged < upto {
        *logged += 1;
        engine
            .handle(routed(&format!("{prefix}{logged}"), live), Millis(T0))
            .unwrap();
        if *logged % 1024 == 0 {
            engine.commit().unwrap();
        }
    }
    engine.commit().unwrap();
}

// ---- PostgreSQL ----

/// The log table's shape, as a store keeps a log: the baseline's rows are the ones the ingest
/// figure writes, the record bytes included.
fn pg_log_table(client: &mut postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE log (user_id bigint NOT NULL, seq bigint NOT NULL, record bytea NOT NULL, \
             PRIMARY KEY (user_id, seq))",
        )
        .unwrap();
}

/// Rows `first..=last` of user 1 in one statement (arrays unnested: one round trip).
fn pg_insert_rows(
    client: &mut impl postgres::GenericClient,
    insert: &postgres::Statement,
    first: u64,
    last: u64,
    record: &[u8],
) {
    let users: Vec<i64> = vec![1; (last + 1 - first) as usize];
    let seqs: Vec<i64> = (first..=last).map(|s| s as i64).collect();
    let records: Vec<&[u8]> = vec![record; users.len()];
    client.execute(insert, &[&users, &seqs, &records]).unwrap();
}

const PG_INSERT: &str =
    "INSERT INTO log (user_id, seq, record) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])";

// ---- parse ----

fn bench_parse(c: &mut Criterion) {
    let stanza = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed-chat.xml"),
    )
    .unwrap();
    let parsed = parse_message(&stanza).unwrap();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(stanza.len() as u64));
    g.bench_function("quickxml_scan", |b| {
        b.iter(|| {
            let mut reader = quick_xml::Reader::from_str(black_box(&stanza));
            let mut events = 0u32;
            loop {
                match reader.read_event().unwrap() {
                    quick_xml::events::Event::Eof => break,
                    e => {
                        black_box(&e);
                        events += 1
                    }
                }
            }
            events
        })
    });
    g.bench_function("parse_message", |b| {
        b.iter(|| parse_message(black_box(&stanza)).unwrap())
    });
    g.bench_function("frame_and_parse", |b| {
        b.iter(|| {
            let mut framer = Framer::new(Limits::default());
            framer.push(black_box(stanza.as_bytes()));
            match framer.next_frame().unwrap() {
                Some(readtrack::stanza::Frame::Stanza(s)) => parse_message(&s).unwrap(),
                other => panic!("expected a stanza, got {other:?}"),
            }
        })
    });
    g.bench_function("write", |b| b.iter(|| write::message(black_box(&parsed))));
    g.finish();
}

// ---- ingest ----

/// The index record of `block` (32 messages of user 1) as it stands once `seq` is logged: the
/// bytes the store writes for it, for the raw baselines.
fn index_block(block: u64, seq: u64) -> Vec<u8> {
    let entries: Vec<IndexEntry> = (block * 32..=seq.min(block * 32 + 31))
        .filter(|s| *s > 0)
        .map(|s| IndexEntry {
            seq: s,
            msgid: s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            peer: 0xaf63_dc4c_8601_ec8c,
        })
        .collect();
    encoded(&entries)
}

fn bench_ingest(c: &mut Criterion) {
    let value = message_record_bytes();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(BATCH as u64));

    let raw_dir = scratch();
    let db = raw_sled(raw_dir.path());
    let log = db.open_tree("log").unwrap();
    let mut seq = 0u64;
    g.bench_function("raw_sled_batch64", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                seq += 1;
                log.insert(user_seq(1, seq), value.as_slice()).unwrap();
            }
            db.flush().unwrap();
        })
    });
    drop((log, db));

    // The target's baseline: the same bytes the store keeps for a batch of 64 messages (per
    // message: log entry, receipt timer, live delivery; per batch: the index records of the
    // blocks of 32 it touched, as they stand after it, the user record, the conversation record
    // and the counters), as plain sled inserts into trees of the same names, then the same
    // flush. Values are the real records, encoded.
    let bytes_dir = scratch();
    let db = raw_sled(bytes_dir.path());
    let tree = |n: &str| db.open_tree(n).unwrap();
    let (log, index, timers, deliveries, users, convs, meta) = (
        tree("userseq_message"),
        tree("userblock_index"),
        tree("deadline_userseq"),
        tree("userdeviceseq_delivery"),
        tree("userid_user"),
        tree("userpeer_conversation"),
        tree("meta"),
    );
    let delivery = encoded(&DeliveryRecord { session: 1, at: T0 });
    let user = encoded(&UserRecord {
        jid: "bob@example.com".into(),
        head: 1 << 20,
        first_seq: 1,
        next_device: 1,
        account: None,
        log_bytes: 300 << 20,
    });
    let conv = encoded(&ConversationRecord {
        peer: "alice@example.com".into(),
        last_seq: 1 << 20,
        last_at: T0,
        read_upto: 0,
        unread: 1 << 20,
    });
    let counters = encoded(&Counters::default());
    let mut seq = 0u64;
    g.bench_function("raw_sled_same_bytes_batch64", |b| {
        b.iter(|| {
            let first = seq + 1;
            for _ in 0..BATCH {
                seq += 1;
                let k24 = |a: u64| {
                    let mut k = [0u8; 24];
                    k[..8].copy_from_slice(&a.to_be_bytes());
                    k[8..16]
                        .copy_from_slice(&seq.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                    k[16..].copy_from_slice(&seq.to_be_bytes());
                    k
                };
                log.insert(user_seq(1, seq), value.as_slice()).unwrap();
                timers.insert(k24(T0 + seq), &[]).unwrap();
                deliveries
                    .insert(&k24(1)[..20], delivery.as_slice())
                    .unwrap();
            }
            for block in first / 32..=seq / 32 {
                index
                    .insert(user_seq(1, block), index_block(block, seq))
                    .unwrap();
            }
            users.insert(user_seq(1, 0), user.as_slice()).unwrap();
            convs.insert(user_seq(1, 7), conv.as_slice()).unwrap();
            meta.insert(b"counters", counters.as_slice()).unwrap();
            db.flush().unwrap();
        })
    });
    drop((log, index, timers, deliveries, users, convs, meta, db));

    // PostgreSQL's own: the log rows of a batch of 64 in one transaction, committed as the
    // server is set (synchronous_commit as the operator leaves it, like the engine's commits).
    let pg = pg_admin_url().map(|admin| PgScratch::create(&admin, "ingest"));
    if let Some(pg) = &pg {
        let mut client = pg.client();
        pg_log_table(&mut client);
        let insert = client.prepare(PG_INSERT).unwrap();
        let mut seq = 0u64;
        g.bench_function("pg_insert_batch64", |b| {
            b.iter(|| {
                let mut tx = client.transaction().unwrap();
                pg_insert_rows(&mut tx, &insert, seq + 1, seq + BATCH as u64, &value);
                tx.commit().unwrap();
                seq += BATCH as u64;
            })
        });
    } else {
        println!("ingest/pg_insert_batch64: {PG_NOT_MEASURED}");
    }

    // PostgreSQL's own insert of the same rows as the engine's commit of a batch (the rows of
    // `raw_sled_same_bytes_batch64` above: per message the log row, its receipt timer and its
    // live delivery; per batch the index blocks it touched, the user, the conversation and the
    // counters), into the tables of `schema/postgres/`, one statement per table (arrays
    // unnested, upserts where the engine's commit overwrites a row), in one transaction. What
    // the engine adds on top is its rules, its encodings and the commit's lease check.
    let pg_rows = pg_admin_url().map(|admin| PgScratch::create(&admin, "ingest_rows"));
    if let Some(pg) = &pg_rows {
        let mut client = pg.client();
        client
            .batch_execute(include_str!("../schema/postgres/001_initial.sql"))
            .unwrap();
        let statements = [
            "INSERT INTO readtrack_userseq_message (user_id, seq, record) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
            "INSERT INTO readtrack_deadline_userseq (deadline, user_id, seq) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])",
            "INSERT INTO readtrack_userdeviceseq_delivery (user_id, device, seq, record) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[])",
            "INSERT INTO readtrack_userblock_index (user_id, block, record) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) \
             ON CONFLICT (user_id, block) DO UPDATE SET record = EXCLUDED.record",
            "INSERT INTO readtrack_userid_user (user_id, record) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET record = EXCLUDED.record",
            "INSERT INTO readtrack_userpeer_conversation (user_id, peer, record) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, peer) DO UPDATE SET record = EXCLUDED.record",
            "INSERT INTO readtrack_meta (key, record) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record",
        ]
        .map(|sql| client.prepare(sql).unwrap());
        let [log_rows, timer_rows, delivery_rows, index_rows, user_row, conv_row, meta_row] =
            &statements;
        let mut seq = 0u64;
        g.bench_function("pg_same_rows_batch64", |b| {
            b.iter(|| {
                let first = seq + 1;
                seq += BATCH as u64;
                let seqs: Vec<i64> = (first..=seq).map(|s| s as i64).collect();
                let ones: Vec<i64> = vec![1; seqs.len()];
                let deadlines: Vec<i64> = seqs.iter().map(|s| T0 as i64 + s).collect();
                let records: Vec<&[u8]> = vec![value.as_slice(); seqs.len()];
                let deliveries: Vec<&[u8]> = vec![delivery.as_slice(); seqs.len()];
                let blocks: Vec<i64> = (first / 32..=seq / 32).map(|b| b as i64).collect();
                let index: Vec<Vec<u8>> = blocks
                    .iter()
                    .map(|&block| index_block(block as u64, seq))
                    .collect();
                let block_users: Vec<i64> = vec![1; blocks.len()];
                let mut tx = client.transaction().unwrap();
                tx.execute(log_rows, &[&ones, &seqs, &records]).unwrap();
                tx.execute(timer_rows, &[&deadlines, &ones, &seqs]).unwrap();
                tx.execute(delivery_rows, &[&ones, &ones, &seqs, &deliveries])
                    .unwrap();
                tx.execute(index_rows, &[&block_users, &blocks, &index])
                    .unwrap();
                tx.execute(user_row, &[&1i64, &user]).unwrap();
                tx.execute(conv_row, &[&1i64, &"alice@example.com", &conv])
                    .unwrap();
                tx.execute(meta_row, &[&"counters", &counters]).unwrap();
                tx.commit().unwrap();
            })
        });
    } else {
        println!("ingest/pg_same_rows_batch64: {PG_NOT_MEASURED}");
    }

    let dir = scratch();
    let mut engine = open_engine(&dir.path().join("db"), ReceiptPolicy::All);
    engine.handle(available(), Millis(T0)).unwrap();
    engine.commit().unwrap();
    let mut n = 0u64;
    g.bench_function("engine_batch64", |b| {
        b.iter_custom(|iters| timed_ingest(&mut engine, &mut n, iters))
    });
    drop(engine);

    // The engine on PostgreSQL, the same batches: one transaction per commit.
    if let Some(pg) = pg_admin_url().map(|admin| PgScratch::create(&admin, "engine_ingest")) {
        let mut engine = open_engine_at(&Location::Postgres(pg.url()), ReceiptPolicy::All);
        engine.handle(available(), Millis(T0)).unwrap();
        engine.commit().unwrap();
        let mut n = 0u64;
        g.bench_function("engine_pg_batch64", |b| {
            b.iter_custom(|iters| timed_ingest(&mut engine, &mut n, iters))
        });
        // Round trips per batch (reads, and the commit's), and the batch's time split between
        // handling the messages and the commit, for reading the figure.
        let before = engine.store().round_trips();
        let (handling, committing) = timed_ingest_split(&mut engine, &mut n, 20);
        println!(
            "ingest/engine_pg_batch64: {:.1} round trips per batch of {BATCH} (reads and the commit); \
             {:.0} µs handling the messages, {:.0} µs in the commit (mean of 20 batches)",
            (engine.store().round_trips() - before) as f64 / 20.0,
            handling.as_secs_f64() * 1e6 / 20.0,
            committing.as_secs_f64() * 1e6 / 20.0
        );
    } else {
        println!("ingest/engine_pg_batch64: {PG_NOT_MEASURED}");
    }
    g.finish();
}

/// `iters` batches of 64 routed messages, each followed by its group commit; only the engine's
/// work is timed (building the inputs is not).
fn timed_ingest(engine: &mut Engine, n: &mut u64, iters: u64) -> Duration {
    let (handling, committing) = timed_ingest_split(engine, n, iters);
    handling + committing
}

/// [`timed_ingest`]'s time, split: handling the batch's messages, and its commit.
fn timed_ingest_split(engine: &mut Engine, n: &mut u64, iters: u64) -> (Duration, Duration) {
    let (mut handling, mut committing) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..iters {
        let inputs: Vec<Input> = (0..BATCH)
            .map(|_| {
                *n += 1;
                routed(&format!("m{n}"), true)
            })
            .collect();
        let start = Instant::now();
        for input in inputs {
            engine.handle(input, Millis(T0 + *n)).unwrap();
        }
        let handled = Instant::now();
        black_box(engine.commit().unwrap());
        committing += handled.elapsed();
        handling += handled - start;
    }
    (handling, committing)
}

// ---- receipts ----

fn bench_receipt(c: &mut Criterion) {
    let mut g = c.benchmark_group("receipt");
    g.throughput(Throughput::Elements(BATCH as u64));

    let raw_dir = scratch();
    let db = raw_sled(raw_dir.path());
    let cursors = db.open_tree("cursor").unwrap();
    // A device record's size: key, resource, cursor, a few counters.
    cursors.insert([0u8; 12], vec![0u8; 48]).unwrap();
    g.bench_function("raw_sled_rmw_batch64", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let mut v = cursors.get([0u8; 12]).unwrap().unwrap().to_vec();
                let n = u64::from_le_bytes(v[..8].try_into().unwrap()) + 1;
                v[..8].copy_from_slice(&n.to_le_bytes());
                cursors.insert([0u8; 12], v).unwrap();
            }
            db.flush().unwrap();
        })
    });
    drop((cursors, db));

    let dir = scratch();
    let mut engine = open_engine(&dir.path().join("db"), ReceiptPolicy::All);
    engine.handle(available(), Millis(T0)).unwrap();
    engine.commit().unwrap();
    let (mut logged, mut acked) = (0u64, 0u64);
    g.bench_function("engine_ack_batch64", |b| {
        b.iter_custom(|iters| timed_acks(&mut engine, &mut logged, &mut acked, iters))
    });
    assert_acked(&engine, acked);
    drop(engine);

    if let Some(pg) = pg_admin_url().map(|admin| PgScratch::create(&admin, "engine_receipt")) {
        let mut engine = open_engine_at(&Location::Postgres(pg.url()), ReceiptPolicy::All);
        engine.handle(available(), Millis(T0)).unwrap();
        engine.commit().unwrap();
        let (mut logged, mut acked) = (0u64, 0u64);
        g.bench_function("engine_pg_ack_batch64", |b| {
            b.iter_custom(|iters| timed_acks(&mut engine, &mut logged, &mut acked, iters))
        });
        assert_acked(&engine, acked);
    } else {
        println!("receipt/engine_pg_ack_batch64: {PG_NOT_MEASURED}");
    }
    g.finish();
}

/// `iters` batches of 64 receipts for messages waiting for one (logged outside the clock, written
/// live to the phone), each batch followed by its commit.
fn timed_acks(engine: &mut Engine, logged: &mut u64, acked: &mut u64, iters: u64) -> Duration {
    let need = *acked + iters * BATCH as u64;
    log_untimed(engine, logged, need, "r", true);
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let inputs: Vec<Input> = (0..BATCH)
            .map(|_| {
                *acked += 1;
                crs_received(&format!("r{acked}"))
            })
            .collect();
        let start = Instant::now();
        for input in inputs {
            engine.handle(input, Millis(T0 + 1)).unwrap();
        }
        black_box(engine.commit().unwrap());
        spent += start.elapsed();
    }
    spent
}

fn assert_acked(engine: &Engine, acked: u64) {
    let acked_upto: u64 = engine
        .store()
        .devices(engine.store().user_id("bob@example.com").unwrap().unwrap())
        .unwrap()[0]
        .1
        .acked_upto;
    assert_eq!(acked_upto, acked, "every receipt moved the cursor");
}

// ---- replay and scaling ----

/// One login of bob's phone: the replay computed by the engine and serialised. Returns
/// (elapsed, stanzas, records read). The logout that follows is not timed.
fn one_replay(engine: &mut Engine) -> (Duration, usize, u64) {
    let before = engine.store().records_read();
    let start = Instant::now();
    let out = engine.handle(available(), Millis(T0 + 5)).unwrap();
    let mut bytes = 0usize;
    for o in &out {
        if let Output::Deliver { stanza, .. } = o {
            bytes += write::outgoing(stanza).len();
        }
    }
    black_box(bytes);
    let spent = start.elapsed();
    let read = engine.store().records_read() - before;
    engine.handle(unavailable(), Millis(T0 + 6)).unwrap();
    (spent, out.len(), read)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Marks everything up to `upto` read, so the next login replays the rest.
fn read_upto(engine: &mut Engine, upto: u64) {
    engine
        .handle(displayed(&format!("m{upto}")), Millis(T0 + 4))
        .unwrap();
    engine.commit().unwrap();
}

fn replay_point(engine: &mut Engine, logged: u64, unread: u64) -> serde_json::Value {
    if logged > unread {
        read_upto(engine, logged - unread);
    }
    assert_eq!(
        engine.counters().log_limit_given_back,
        0,
        "every message of the bench's log was logged (none handed back at a log limit)"
    );
    let runs: Vec<_> = (0..5).map(|_| one_replay(engine)).collect();
    assert!(
        runs.iter().all(|r| r.1 as u64 == unread),
        "replayed {runs:?}, expected {unread} each"
    );
    let ms = median(runs.iter().map(|r| r.0.as_secs_f64() * 1e3).collect());
    println!(
        "scaling: logged {logged:>8}  unread {unread:>6}  replay {ms:8.2} ms  records read {}",
        runs[0].2
    );
    json!({"logged": logged, "unread": unread, "replay_ms": ms, "records_read": runs[0].2})
}

fn bench_replay_and_scaling(c: &mut Criterion) -> serde_json::Value {
    // `BENCH_REPLAY_TOTAL` shrinks the log for a quick run (the targets are stated for 1M).
    let total: u64 = std::env::var("BENCH_REPLAY_TOTAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    const UNREAD: u64 = 10_000;
    let checkpoints: Vec<u64> = [10_000u64, 100_000, total]
        .into_iter()
        .filter(|&p| p < total)
        .chain([total])
        .collect();
    let dir = scratch();
    let mut engine = open_engine(&dir.path().join("db"), ReceiptPolicy::None);
    engine.handle(available(), Millis(T0)).unwrap();
    engine.handle(unavailable(), Millis(T0)).unwrap();
    engine.commit().unwrap();
    let built = Instant::now();
    let mut ingest = Vec::new();
    let mut replays = Vec::new();
    let mut logged = 0u64;
    for &point in &checkpoints {
        // Bulk to 10k short of the checkpoint, then 10k timed with the bench's flush policy.
        log_untimed(&mut engine, &mut logged, point - 10_000, "m", false);
        let inputs: Vec<Input> = (logged + 1..=point)
            .map(|i| routed(&format!("m{i}"), false))
            .collect();
        let start = Instant::now();
        for (i, input) in inputs.into_iter().enumerate() {
            engine.handle(input, Millis(T0)).unwrap();
            if (i + 1) % BATCH == 0 {
                engine.commit().unwrap();
            }
        }
        engine.commit().unwrap();
        let rate = 10_000.0 / start.elapsed().as_secs_f64();
        logged = point;
        println!(
            "scaling: logged {logged:>8}  ingest {rate:10.0} msg/s (last 10k, flush every {BATCH})"
        );
        ingest.push(json!({"logged": logged, "ingest_msgs_per_s": rate}));
        if point < total {
            replays.push(replay_point(&mut engine, logged, UNREAD));
            replays.push(replay_point(&mut engine, logged, 1_000));
        }
    }
    println!(
        "replay store: {total} messages built in {:.1} s",
        built.elapsed().as_secs_f64()
    );

    // The baseline: 1M values of the same size in a raw sled tree; a 10k-key range scan.
    let raw_dir = scratch();
    let db = raw_sled(raw_dir.path());
    let log = db.open_tree("log").unwrap();
    let value = message_record_bytes();
    for chunk in (1..=total).collect::<Vec<_>>().chunks(10_000) {
        let mut batch = sled::Batch::default();
        for &seq in chunk {
            batch.insert(&user_seq(1, seq), value.as_slice());
        }
        log.apply_batch(batch).unwrap();
    }
    db.flush().unwrap();

    read_upto(&mut engine, total - UNREAD);
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(UNREAD));
    g.bench_function("raw_sled_scan_10k_of_1m", |b| {
        b.iter(|| {
            let start = user_seq(1, total - UNREAD + 1);
            let end = user_seq(1, u64::MAX);
            let mut n = 0usize;
            for kv in log.range(start..=end) {
                let (_, v) = kv.unwrap();
                n += v.len();
            }
            n
        })
    });
    g.bench_function("raw_sled_scan_decode_10k_of_1m", |b| {
        b.iter(|| {
            let start = user_seq(1, total - UNREAD + 1);
            let end = user_seq(1, u64::MAX);
            let mut n = 0usize;
            for kv in log.range(start..=end) {
                let (_, v) = kv.unwrap();
                let (m, _): (MessageRecord, usize) =
                    bincode::serde::decode_from_slice(&v, bincode::config::standard()).unwrap();
                n += m.seq as usize;
            }
            n
        })
    });
    g.bench_function("engine_replay_10k_of_1m", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| one_replay(&mut engine).0).sum())
    });
    // PostgreSQL's own: the same 1M rows in a log table, the last 10k of the user read through
    // the primary key's index, each record's bytes touched.
    let pg = pg_admin_url().map(|admin| PgScratch::create(&admin, "replay"));
    if let Some(pg) = &pg {
        let mut client = pg.client();
        pg_log_table(&mut client);
        let insert = client.prepare(PG_INSERT).unwrap();
        let loaded = Instant::now();
        for first in (1..=total).step_by(10_000) {
            pg_insert_rows(
                &mut client,
                &insert,
                first,
                (first + 9_999).min(total),
                &value,
            );
        }
        client.batch_execute("ANALYZE log").unwrap();
        println!(
            "replay baseline: {total} rows into PostgreSQL in {:.1} s",
            loaded.elapsed().as_secs_f64()
        );
        let range = client
            .prepare("SELECT seq, record FROM log WHERE user_id = $1 AND seq > $2 ORDER BY seq")
            .unwrap();
        let after = (total - UNREAD) as i64;
        g.bench_function("pg_range_10k_of_1m", |b| {
            b.iter(|| {
                let rows = client.query(&range, &[&1i64, &after]).unwrap();
                assert_eq!(rows.len() as u64, UNREAD);
                rows.iter()
                    .map(|row| row.get::<_, &[u8]>(1).len())
                    .sum::<usize>()
            })
        });
        // The engine on PostgreSQL, the same log built the same way (outside the clock).
        let engine_db = PgScratch::create(pg_admin_url().as_deref().unwrap(), "engine_replay");
        let mut pg_engine =
            open_engine_at(&Location::Postgres(engine_db.url()), ReceiptPolicy::None);
        pg_engine.handle(available(), Millis(T0)).unwrap();
        pg_engine.handle(unavailable(), Millis(T0)).unwrap();
        pg_engine.commit().unwrap();
        let built = Instant::now();
        let mut pg_logged = 0u64;
        log_untimed(&mut pg_engine, &mut pg_logged, total, "m", false);
        println!(
            "replay store on PostgreSQL: {total} messages built in {:.1} s",
            built.elapsed().as_secs_f64()
        );
        read_upto(&mut pg_engine, total - UNREAD);
        g.bench_function("engine_pg_replay_10k_of_1m", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| one_replay(&mut pg_engine).0).sum())
        });
    } else {
        println!("replay/pg_range_10k_of_1m: {PG_NOT_MEASURED}");
    }
    g.finish();
    drop(pg);
    drop((log, db));
    replays.push(replay_point(&mut engine, total, UNREAD));
    replays.push(replay_point(&mut engine, total, 1_000));
    json!({"ingest": ingest, "replay": replays})
}

// ---- summary ----

/// Mean time per iteration (ns) of a bench, if this run wrote it.
fn estimate(group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("criterion"));
    let path = home.join(group).join(id).join("new/estimates.json");
    let meta = std::fs::metadata(&path).ok()?;
    if meta.modified().ok()? < since {
        return None; // left over from an earlier run (or filtered out of this one)
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    readtrack::memory::no_transparent_huge_pages();
    let started = SystemTime::now();
    let mut c = criterion();
    // criterion skips filtered-out benches, but not their set-up: skip that here (substring
    // match, as criterion's filter for plain names).
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |group: &str| match filter.as_deref() {
        None => true,
        Some(f) => group.contains(f) || f.contains(group),
    };
    if wanted("parse") {
        bench_parse(&mut c);
    }
    if wanted("ingest") {
        bench_ingest(&mut c);
    }
    if wanted("receipt") {
        bench_receipt(&mut c);
    }
    let scaling = if wanted("replay") || wanted("scaling") {
        bench_replay_and_scaling(&mut c)
    } else {
        json!(null)
    };
    c.final_summary();

    // (what, group, subject, baseline, target ratio)
    // For a row whose subject is its own baseline, the target is a time limit in ms.
    let pairs: [(&str, &str, &str, &str, Option<f64>); 15] = [
        (
            "parse vs quick-xml scan",
            "parse",
            "parse_message",
            "quickxml_scan",
            Some(0.5),
        ),
        (
            "frame+parse vs quick-xml scan",
            "parse",
            "frame_and_parse",
            "quickxml_scan",
            None,
        ),
        (
            "write vs quick-xml scan",
            "parse",
            "write",
            "quickxml_scan",
            None,
        ),
        (
            "ingest vs raw sled inserts, same bytes",
            "ingest",
            "engine_batch64",
            "raw_sled_same_bytes_batch64",
            Some(0.8),
        ),
        (
            "ingest vs raw inserts, log entry only",
            "ingest",
            "engine_batch64",
            "raw_sled_batch64",
            None,
        ),
        (
            "receipts vs raw sled rmw",
            "receipt",
            "engine_ack_batch64",
            "raw_sled_rmw_batch64",
            None,
        ),
        (
            "replay 10k/1M vs raw range scan",
            "replay",
            "engine_replay_10k_of_1m",
            "raw_sled_scan_10k_of_1m",
            Some(0.5),
        ),
        (
            "replay 10k/1M engine-side (ms, ≤ 20)",
            "replay",
            "engine_replay_10k_of_1m",
            "engine_replay_10k_of_1m",
            Some(20.0),
        ),
        (
            "PostgreSQL insert vs raw sled, log rows",
            "ingest",
            "pg_insert_batch64",
            "raw_sled_batch64",
            None,
        ),
        (
            "PostgreSQL range read vs raw sled scan",
            "replay",
            "pg_range_10k_of_1m",
            "raw_sled_scan_10k_of_1m",
            None,
        ),
        (
            "ingest on PostgreSQL vs its batched insert",
            "ingest",
            "engine_pg_batch64",
            "pg_insert_batch64",
            None,
        ),
        (
            "ingest on PostgreSQL vs its insert, same rows",
            "ingest",
            "engine_pg_batch64",
            "pg_same_rows_batch64",
            Some(0.5),
        ),
        (
            "receipts on PostgreSQL vs on sled",
            "receipt",
            "engine_pg_ack_batch64",
            "engine_ack_batch64",
            None,
        ),
        (
            "replay 10k/1M on PostgreSQL vs range read",
            "replay",
            "engine_pg_replay_10k_of_1m",
            "pg_range_10k_of_1m",
            None,
        ),
        (
            "replay 10k/1M on PostgreSQL (ms, ≤ 50)",
            "replay",
            "engine_pg_replay_10k_of_1m",
            "engine_pg_replay_10k_of_1m",
            Some(50.0),
        ),
    ];
    let mut rows = Vec::new();
    println!(
        "\n{:<40} {:>14} {:>14} {:>8} {:>8}",
        "ratio (baseline time / subject time)", "subject", "baseline", "ratio", "target"
    );
    for (what, group, subject, baseline, target) in pairs {
        let (Some(s), Some(b)) = (
            estimate(group, subject, started),
            estimate(group, baseline, started),
        ) else {
            let pg = [subject, baseline].iter().any(|b| b.contains("pg_"));
            if pg && pg_admin_url().is_none() {
                println!("{what:<40} ({PG_NOT_MEASURED})");
            } else {
                println!("{what:<40} (not run in this invocation)");
            }
            continue;
        };
        if subject == baseline {
            let ms = s / 1e6;
            let limit = target.unwrap_or(20.0);
            let met = ms <= limit;
            println!(
                "{what:<40} {:>11.2} ms {:>14} {:>8} {:>8}",
                ms,
                "",
                "",
                if met { "met" } else { "MISSED" }
            );
            rows.push(json!({"what": what, "ms": ms, "target_ms": limit, "met": met}));
            continue;
        }
        let ratio = b / s;
        let verdict = match target {
            Some(t) if ratio >= t => format!("≥{t} met"),
            Some(t) => format!("≥{t} MISSED"),
            None => "-".into(),
        };
        println!(
            "{what:<40} {:>11.1} µs {:>11.1} µs {:>8.3} {:>8}",
            s / 1e3,
            b / 1e3,
            ratio,
            verdict
        );
        rows.push(
            json!({"what": what, "group": group, "subject": subject, "baseline": baseline,
            "subject_ns": s, "baseline_ns": b, "ratio": ratio, "target": target,
            "met": target.map(|t| ratio >= t)}),
        );
    }
    let out = target_dir().join("readtrack-bench.json");
    let doc = json!({"ratios": rows, "scaling": scaling});
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("written {}", out.display());
    let _ = std::fs::remove_dir_all(target_dir().join("bench-scratch"));
}

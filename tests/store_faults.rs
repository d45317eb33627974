//! Store faults (issue 6, item 4): a store readtrack cannot trust is refused with an error that
//! says what is wrong and where, `readtrack serve` exits non-zero before it connects to anything,
//! and the store's files are byte-identical afterwards (readtrack never "repairs" by
//! overwriting). Then the disk filling up under a running engine: the write fails, no ack is
//! released, and what was flushed before survives.
//!
//! Runs the real binary as a second process where a process boundary matters (the lock), and the
//! library elsewhere. The tmpfs tests mount a filesystem and therefore need root; without it they
//! fail with a hint rather than pass silently.
//!
//! The sled cases (a held file lock, a schema version or foreign data in sled's files, a garbled
//! snapshot, a full disk) are sled's own and run on sled whatever the backend. The PostgreSQL
//! cases at the end (a second process on one database, an old owner's late commit, a schema
//! from a newer readtrack, migrations applied once) need the cluster named by
//! `READTRACK_TEST_PG_URL` (tests/common/backend.rs) and fail saying so without it.

mod common;

use common::jid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use readtrack::engine::{Engine, Input};
use readtrack::stanza::{Message, MessageType};
use readtrack::store::{Location, Store, StoreError, StoreOptions};

use common::backend;
use readtrack::time::Millis;

const T0: u64 = 1_700_000_000_000;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_readtrack"))
}

fn chat(id: &str, body: &str) -> Message {
    let mut m = Message::new(MessageType::Chat);
    m.id = Some(id.into());
    m.from = Some(jid("bob@localhost/pc"));
    m.to = Some(jid("alice@localhost"));
    m.body = Some(body.into());
    m
}

fn routed(id: &str, body: &str) -> Input {
    Input::routed(chat(id, body), jid("alice@localhost"), vec![], None, false)
}

/// Opens through readtrack, retrying while sled's lock from a just-closed handle is released.
fn open(path: &Path) -> Result<Store, StoreError> {
    Store::open(path, &StoreOptions::default())
}

/// A store with `n` messages logged and flushed, then closed.
fn make_store(path: &Path, n: usize) {
    let mut engine = Engine::new(open(path).unwrap(), seed_config()).unwrap();
    for i in 0..n {
        engine
            .handle(routed(&format!("m{i}"), "hello"), Millis(T0))
            .unwrap();
    }
    drop(engine.close().unwrap());
}

/// Every file under `dir` with its bytes: compared before and after a refused start.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A config for `serve` whose component port refuses connections: a store that opens keeps the
/// service alive (retrying the link), so only a refused store makes it exit.
fn write_config(dir: &Path, store: &Path) -> PathBuf {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let path = dir.join("readtrack.toml");
    std::fs::write(
        &path,
        format!(
            "[xmpp]\nconnect = \"127.0.0.1:{closed_port}\"\nsecret = \"s3cret-store-faults\"\n\
             [store]\npath = \"{}\"\n[admin]\nsocket = \"{}\"\n",
            store.display(),
            dir.join("admin.sock").display()
        ),
    )
    .unwrap();
    path
}

fn spawn_serve(config: &Path, log: &Path) -> Child {
    Command::new(binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("READTRACK_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

/// Runs `readtrack serve` on `store` and requires it to exit within 10 s with status 1; returns
/// its stderr.
fn serve_must_refuse(store: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), store);
    let log = dir.path().join("stderr");
    let mut child = spawn_serve(&config, &log);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "readtrack serve started on a store it should refuse:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("readtrack starting"),
        "got as far as starting:\n{stderr}"
    );
    stderr
}

/// The store's data is exactly as before: `conf` and every byte of sled's log file `db`
/// unchanged. sled cannot open a database without two physical side effects, which this allows
/// and nothing else: it pads `db` with zeros to a whole segment, and it replaces `snap.*` (its
/// page-table snapshot, derived from the log and rebuilt from it) with a fresh one. readtrack
/// refuses before writing anything of its own.
fn assert_data_untouched(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>) {
    let is_snapshot = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("snap."))
    };
    let mut diffs = Vec::new();
    for (path, b) in before.iter().filter(|(p, _)| !is_snapshot(p)) {
        match after.get(path) {
            None => diffs.push(format!("{} removed", path.display())),
            Some(a) if path.ends_with("db") => {
                let padded =
                    a.len() >= b.len() && a.starts_with(b) && a[b.len()..].iter().all(|&x| x == 0);
                if !padded {
                    let first = a.iter().zip(b).position(|(x, y)| x != y);
                    diffs.push(format!(
                        "{} rewritten: first difference at byte {first:?}",
                        path.display()
                    ));
                }
            }
            Some(a) if a != b => diffs.push(format!("{} changed", path.display())),
            _ => {}
        }
    }
    for path in after
        .keys()
        .filter(|p| !before.contains_key(*p) && !is_snapshot(p))
    {
        diffs.push(format!("{} created", path.display()));
    }
    assert!(
        diffs.is_empty(),
        "store data changed:\n{}",
        diffs.join("\n")
    );
}

/// The last line of stderr: what `main` printed when it gave up.
fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

#[test]
fn locked_by_another_readtrack_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    make_store(&store, 3);
    // The first readtrack holds the store (and keeps retrying its link to a closed port).
    let first_dir = tempfile::tempdir().unwrap();
    let first_log = first_dir.path().join("stderr");
    let mut first = spawn_serve(&write_config(first_dir.path(), &store), &first_log);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&first_log)
        .unwrap()
        .contains("readtrack starting")
    {
        assert!(
            first.try_wait().unwrap().is_none(),
            "first readtrack exited"
        );
        assert!(Instant::now() < deadline, "first readtrack did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = files(&store);
    let stderr = serve_must_refuse(&store);
    assert_eq!(
        last_line(&stderr),
        format!(
            "readtrack: store at {} is in use by another process (sled allows one); if readtrack serve runs, use the CLI through its admin socket",
            store.display()
        )
    );
    assert_eq!(
        files(&store),
        before,
        "the refused process wrote to the store"
    );
    // SIGTERM the first one by its own pid: a clean stop, so the store is still usable after.
    Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(first.wait().unwrap().success());
    let store = open(&store).unwrap();
    assert_eq!(store.message_count(), 3);
}

/// Writes `schema_version` = `version` straight into sled's meta tree.
fn set_schema_version(path: &Path, version: u32) {
    // sled lets go of its lock a little after a dropped store's last handle: retry a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let db = loop {
        match sled::open(path) {
            Ok(db) => break db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("open {} with sled: {e}", path.display()),
        }
    };
    db.open_tree("meta")
        .unwrap()
        .insert("schema_version", &version.to_be_bytes())
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn wrong_schema_version_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    make_store(&store, 2);
    // A version from the future: this readtrack cannot know its layout.
    let future = readtrack::store::SCHEMA_VERSION + 1;
    set_schema_version(&store, future);
    let before = files(&store);
    let stderr = serve_must_refuse(&store);
    assert_eq!(
        last_line(&stderr),
        format!(
            "readtrack: store at {} has schema version {future}, this readtrack reads version {}; refusing to touch it",
            store.display(),
            readtrack::store::SCHEMA_VERSION
        )
    );
    assert_data_untouched(&before, &files(&store));
    // The library refuses the same way (the CLI's direct path).
    let err = open(&store)
        .err()
        .expect("opened a store of a future version");
    assert!(
        matches!(
            err,
            StoreError::SchemaVersion { found, expected, .. } if found == future && expected == readtrack::store::SCHEMA_VERSION
        ),
        "{err}"
    );
    assert_data_untouched(&before, &files(&store));
}

/// Regression: `Store::open` opened (and so created) all of readtrack's trees before checking the
/// schema, so a refused foreign database, or a store of a newer version with other trees, had
/// readtrack's trees written into it on the way to the refusal.
#[test]
fn a_sled_database_readtrack_did_not_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    {
        let db = sled::open(&store).unwrap();
        db.open_tree("jid_userid")
            .unwrap()
            .insert("someone@else", &[0u8; 8])
            .unwrap();
        db.flush().unwrap();
    }
    let before = files(&store);
    let stderr = serve_must_refuse(&store);
    assert_eq!(
        last_line(&stderr),
        format!(
            "readtrack: store at {} holds data but no schema version; it was not written by readtrack",
            store.display()
        )
    );
    assert_data_untouched(&before, &files(&store));
}

#[test]
fn store_path_that_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    std::fs::write(&store, b"not a database").unwrap();
    let stderr = serve_must_refuse(&store);
    assert!(
        last_line(&stderr).starts_with(&format!(
            "readtrack: cannot open store at {}: ",
            store.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&store).unwrap(), b"not a database");
}

/// A garbled snapshot file (sled's page table, read first on open): sled detects it by its
/// checksum, and readtrack refuses to start and leaves the log alone.
#[test]
fn corrupt_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    make_store(&store, 50);
    // sled writes its snapshot while recovering, so one more open leaves one on disk.
    drop(open(&store).unwrap());
    let snap = files(&store)
        .into_keys()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("snap.")
        })
        .expect("sled wrote no snapshot");
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&snap, &bytes).unwrap();
    let before = files(&store);
    let stderr = serve_must_refuse(&store);
    assert!(
        last_line(&stderr).starts_with(&format!(
            "readtrack: cannot open store at {}: ",
            store.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        files(&store),
        before,
        "a refused corrupt store was modified"
    );
}

/// A tmpfs of `size`, mounted for the test and unmounted on drop. Needs root; without it the
/// test fails with what to do, rather than passing without having run.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (run the tests as root, or in a container with CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// The disk fills up under a running engine: the commit that cannot be made durable fails with
/// the OS error, so the acks it would have released are never sent (the service stops on a
/// store error), and everything committed before it is still there after the space comes back.
#[test]
fn disk_full_fails_the_commit_and_keeps_what_was_acked() {
    let fs = Tmpfs::mount("2m");
    let store = fs.0.path().join("data");
    let mut engine = Engine::new(open(&store).unwrap(), seed_config()).unwrap();
    let body = "x".repeat(8 * 1024);
    let mut acked = 0;
    let err = loop {
        let step = engine
            .handle(routed(&format!("m{acked}"), &body), Millis(T0))
            .and_then(|_| engine.commit());
        match step {
            Ok(released) => {
                // Each commit releases exactly the one 10013 ack it made durable.
                assert_eq!(released.len(), 1);
                acked += 1;
            }
            Err(e) => break e,
        }
        assert!(acked < 10_000, "a 2 MiB tmpfs never filled up");
    };
    assert!(
        // sled reports the full disk from the write that cannot reserve log space (before the flush,
        // which names the path); its text is the io::Error's Debug. Asserted loosely on purpose:
        // the OS error is what matters and what the operator sees.
        err.to_string().contains("No space left on device"),
        "{err}"
    );
    assert!(acked > 10, "failed early: {acked} commits");
    drop(engine);
    // Grow the filesystem and look: every acked message is there.
    let out = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(fs.0.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let store = open(&store).unwrap();
    assert!(
        store.message_count() >= acked,
        "{} messages after a disk-full, {acked} were acked",
        store.message_count()
    );
}

/// The engine's defaults in the seed dialect (server acks to every client), which these tests
/// exercise.
fn seed_config() -> readtrack::engine::EngineConfig {
    let mut config = readtrack::engine::EngineConfig::new("localhost");
    config.dialect = readtrack::engine::Dialect::Seed;
    config
}

// ---- PostgreSQL ----

/// Runs SQL on a test database as the admin, off any runtime thread.
fn sql(url: &str, statement: &str) -> Vec<postgres::Row> {
    let (url, statement) = (url.to_string(), statement.to_string());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client.query(&statement, &[]).unwrap()
    })
    .join()
    .unwrap()
}

fn count(url: &str, table: &str) -> i64 {
    sql(url, &format!("SELECT count(*) FROM {table}"))[0].get(0)
}

/// A config for `serve` on the PostgreSQL database `url`, its component port closed.
fn write_pg_config(dir: &Path, url: &str, lease_seconds: u64) -> PathBuf {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let path = dir.join("readtrack.toml");
    std::fs::write(
        &path,
        format!(
            "[xmpp]\nconnect = \"127.0.0.1:{closed_port}\"\nsecret = \"s3cret-store-faults\"\n\
             [store]\nbackend = \"postgres\"\nurl = \"{url}\"\nlease_seconds = {lease_seconds}\n\
             [admin]\nsocket = \"{}\"\n",
            dir.join("admin.sock").display()
        ),
    )
    .unwrap();
    path
}

/// Waits until `log` says the service started; panics if the process exits first.
fn wait_started(child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("readtrack starting")
    {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "readtrack exited ({status}) before starting:\n{}",
                std::fs::read_to_string(log).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "readtrack did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit by itself within 10 s; returns its status code and stderr.
fn wait_exit(child: &mut Child, log: &Path) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), std::fs::read_to_string(log).unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "readtrack serve started beside a live owner:\n{}",
                std::fs::read_to_string(log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two real `readtrack serve` processes on one database: the second is refused with the
/// holder's name while the first runs; after the first is killed (-9, no clean release) the
/// second gets the store once the lease has expired, under a new epoch.
#[test]
fn a_second_process_on_one_database_is_refused_until_the_first_ones_lease_expires() {
    let url = backend::fresh_database();
    let first_dir = tempfile::tempdir().unwrap();
    let first_log = first_dir.path().join("stderr");
    let mut first = spawn_serve(&write_pg_config(first_dir.path(), &url, 2), &first_log);
    wait_started(&mut first, &first_log);

    let second_dir = tempfile::tempdir().unwrap();
    let second_config = write_pg_config(second_dir.path(), &url, 2);
    let second_log = second_dir.path().join("stderr");
    let mut second = spawn_serve(&second_config, &second_log);
    let (code, stderr) = wait_exit(&mut second, &second_log);
    assert_eq!(code, Some(1), "{stderr}");
    let refusal = last_line(&stderr);
    assert!(
        refusal.starts_with(&format!("readtrack: PostgreSQL store {url} is in use by "))
            && refusal.contains(&format!(":{}:", first.id()))
            && refusal.contains("one readtrack process per database"),
        "the refusal names the holder (host:pid:random) and what to do: {refusal}"
    );
    let epoch: i64 = sql(&url, "SELECT epoch FROM readtrack_owner")[0].get(0);

    // No clean close: the lease stays until it expires.
    Command::new("kill")
        .args(["-KILL", &first.id().to_string()])
        .status()
        .unwrap();
    first.wait().unwrap();
    let mut early = spawn_serve(&second_config, &second_log);
    let (code, stderr) = wait_exit(&mut early, &second_log);
    assert_eq!(
        code,
        Some(1),
        "refused while the dead holder's lease runs: {stderr}"
    );

    std::thread::sleep(Duration::from_millis(2500));
    let mut second = spawn_serve(&second_config, &second_log);
    wait_started(&mut second, &second_log);
    let (holder, new_epoch): (String, i64) = {
        let rows = sql(&url, "SELECT holder, epoch FROM readtrack_owner");
        (rows[0].get(0), rows[0].get(1))
    };
    assert!(holder.contains(&format!(":{}:", second.id())), "{holder}");
    assert_eq!(new_epoch, epoch + 1, "a takeover is a new epoch");
    Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(second.wait().unwrap().success());
    // A clean stop releases the lease: the next process is not kept waiting.
    let store = Store::open_location(&Location::Postgres(url.clone()), &StoreOptions::default())
        .expect("the lease was released at the clean stop");
    drop(store);
    backend::drop_location(&Location::Postgres(url));
}

/// An engine on a fresh PostgreSQL database with one message ("m1", user 1, seq 1) committed:
/// the database's URL, its location (to drop it at the end) and the engine.
fn pg_engine_with_one_message() -> (String, Location, Engine) {
    let url = backend::fresh_database();
    let location = Location::Postgres(url.clone());
    let mut engine = Engine::new(
        Store::open_location(&location, &StoreOptions::default()).unwrap(),
        seed_config(),
    )
    .unwrap();
    engine.handle(routed("m1", "before"), Millis(T0)).unwrap();
    engine.commit().unwrap();
    (url, location, engine)
}

/// An owner that lost its lease (another process took the store over) cannot commit: its
/// transaction is rolled back whole, so a late commit moves no cursor and logs nothing.
#[test]
fn an_old_owners_late_commit_moves_nothing() {
    let (url, location, mut engine) = pg_engine_with_one_message();
    assert_eq!(count(&url, "readtrack_userseq_message"), 1);
    // What a process that found the lease expired does: a new holder, a new epoch.
    sql(
        &url,
        "UPDATE readtrack_owner SET holder = 'newcomer', epoch = epoch + 1, \
         expires = now() + interval '1 hour'",
    );
    engine.handle(routed("m2", "late"), Millis(T0 + 1)).unwrap();
    let err = engine.commit().expect_err("the fenced commit fails");
    assert!(
        err.to_string()
            .contains("this process no longer owns the store"),
        "{err}"
    );
    assert_eq!(count(&url, "readtrack_userseq_message"), 1, "nothing moved");
    drop(engine);
    backend::drop_location(&location);
}

/// A database whose schema a newer readtrack wrote is refused, and left as it was.
#[test]
fn a_database_of_a_newer_schema_is_refused_and_left_alone() {
    let url = backend::fresh_database();
    sql(
        &url,
        "CREATE TABLE readtrack_schema (version integer PRIMARY KEY, name text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now())",
    );
    sql(
        &url,
        "INSERT INTO readtrack_schema (version, name) VALUES (99, 'future')",
    );
    let location = Location::Postgres(url.clone());
    let err = Store::open_location(&location, &StoreOptions::default())
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "PostgreSQL store {url} has schema version 99, this readtrack knows version {}; refusing to touch it",
            readtrack::store::PG_SCHEMA_VERSION
        )
    );
    let tables: i64 = sql(
        &url,
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'readtrack_%'",
    )[0]
    .get(0);
    assert_eq!(tables, 1, "only the schema table is there");
    backend::drop_location(&location);
}

/// A fresh database gets the schema once; reopening applies nothing again.
#[test]
fn migrations_are_applied_once_in_order() {
    let url = backend::fresh_database();
    let location = Location::Postgres(url.clone());
    drop(Store::open_location(&location, &StoreOptions::default()).unwrap());
    let applied = |url: &str| -> Vec<(i32, String)> {
        sql(
            url,
            "SELECT version, name || ' ' || applied_at::text FROM readtrack_schema ORDER BY version",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let first = applied(&url);
    assert_eq!(
        first.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (1..=readtrack::store::PG_SCHEMA_VERSION).collect::<Vec<_>>()
    );
    drop(Store::open_location(&location, &StoreOptions::default()).unwrap());
    assert_eq!(applied(&url), first, "nothing applied twice");
    backend::drop_location(&location);
}

/// A connection the server cut (a restart, an idle timeout) is opened again at the next call:
/// the commit after it goes through, and nothing committed before is lost.
#[test]
fn a_broken_connection_is_opened_again_and_the_commit_goes_through() {
    let (url, location, mut engine) = pg_engine_with_one_message();
    let name = url.rsplit('/').next().unwrap().to_string();
    let admin = std::env::var("READTRACK_TEST_PG_URL").unwrap();
    let cut: Vec<postgres::Row> = sql(
        &admin,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' \
             AND pid <> pg_backend_pid()"
        ),
    );
    assert!(!cut.is_empty(), "readtrack's connections were cut");
    engine
        .handle(routed("m2", "after"), Millis(T0 + 1))
        .unwrap();
    engine
        .commit()
        .expect("the commit runs on a new connection");
    assert_eq!(count(&url, "readtrack_userseq_message"), 2);
    drop(engine);
    backend::drop_location(&location);
}

/// `readtrack check` on a PostgreSQL store: the connection and the schema, one verdict each,
/// the password never shown.
#[test]
fn check_reports_the_postgres_connection_and_schema() {
    let url = backend::fresh_database();
    let with_password = url.replacen("://postgres@", "://postgres:not-shown@", 1);
    let dir = tempfile::tempdir().unwrap();
    let config = write_pg_config(dir.path(), &with_password, 30);
    let check = || -> (String, serde_json::Value) {
        let out = Command::new(binary())
            .args(["check", "--json", "--config"])
            .arg(&config)
            .env_remove("READTRACK_SECRET")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (text, serde_json::from_slice(&out.stdout).unwrap())
    };
    let verdict = |report: &serde_json::Value, name: &str| -> (bool, String) {
        let c = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {report}"));
        (
            c["ok"].as_bool().unwrap(),
            c["detail"].as_str().unwrap().to_string(),
        )
    };
    let (text, report) = check();
    assert!(!text.contains("not-shown"), "the password is shown: {text}");
    let (ok, detail) = verdict(&report, "store");
    assert!(
        ok && detail.contains("PostgreSQL") && detail.contains("answers"),
        "{detail}"
    );
    assert_eq!(
        verdict(&report, "schema"),
        (
            true,
            format!(
                "{url}: no readtrack tables yet; serve creates them (schema {})",
                readtrack::store::PG_SCHEMA_VERSION
            )
        )
    );
    let location = Location::Postgres(url.clone());
    let store = Store::open_location(&location, &StoreOptions::default()).unwrap();
    let (_, report) = check();
    let (ok, detail) = verdict(&report, "schema");
    assert!(
        !ok && detail.contains("in use by") && detail.contains("no service answers"),
        "a store held by a process with no admin socket fails the check: {detail}"
    );
    drop(store);
    let (_, report) = check();
    assert_eq!(
        verdict(&report, "schema"),
        (
            true,
            format!(
                "{url}: schema {}, not in use",
                readtrack::store::PG_SCHEMA_VERSION
            )
        )
    );
    // An unreachable server fails the store check and names the URL.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = write_pg_config(
        dir.path(),
        &format!("postgres://postgres:not-shown@127.0.0.1:{closed}/nothing"),
        30,
    );
    let out = Command::new(binary())
        .args(["check", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (ok, detail) = verdict(&report, "store");
    assert!(
        !ok && detail.contains(&format!("postgres://postgres@127.0.0.1:{closed}/nothing")),
        "{detail}"
    );
    assert!(!detail.contains("not-shown"));
    backend::drop_location(&location);
}

/// A commit that loses to another transaction (SQLSTATE 40001, which CockroachDB and YugabyteDB
/// return routinely) runs again whole, and its ack is released once it went through. The
/// conflict is raised by the server itself, once, from a trigger.
#[test]
fn a_commit_that_loses_to_another_transaction_runs_again_whole() {
    let (url, location, mut engine) = pg_engine_with_one_message();
    sql(&url, "CREATE SEQUENCE conflicts");
    sql(
        &url,
        "CREATE FUNCTION conflict_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF nextval('conflicts') = 1 THEN \
           RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001'; \
         END IF; RETURN NULL; END $$",
    );
    sql(
        &url,
        "CREATE TRIGGER conflict_once BEFORE INSERT ON readtrack_userseq_message \
         FOR EACH STATEMENT EXECUTE FUNCTION conflict_once()",
    );
    engine
        .handle(routed("m2", "after"), Millis(T0 + 1))
        .unwrap();
    let released = engine
        .commit()
        .expect("the commit ran again and went through");
    assert_eq!(released.len(), 1, "m2's ack is released: {released:?}");
    let tries: i64 = sql(&url, "SELECT last_value FROM conflicts")[0].get(0);
    assert_eq!(tries, 2, "one refused try, one that went through");
    assert_eq!(count(&url, "readtrack_userseq_message"), 2);
    drop(engine);
    backend::drop_location(&location);
}

/// A new message's rows (log entry, timer, deliveries) are inserted without an upsert's conflict
/// check; should one be in the table already (here planted; in life, a commit retried after it
/// reached the server and its answer was lost with the connection), the commit runs again with
/// every row upserted and goes through, the row holding what the engine wrote.
#[test]
fn a_row_taken_for_new_that_is_there_already_is_overwritten() {
    let (url, location, mut engine) = pg_engine_with_one_message();
    // The row m2 will be logged at: user 1, seq 2.
    sql(
        &url,
        "INSERT INTO readtrack_userseq_message (user_id, seq, record) VALUES (1, 2, '\\x00')",
    );
    engine
        .handle(routed("m2", "after"), Millis(T0 + 1))
        .unwrap();
    let released = engine.commit().expect("the commit went through as upserts");
    assert_eq!(released.len(), 1, "m2's ack is released: {released:?}");
    assert_eq!(count(&url, "readtrack_userseq_message"), 2);
    let record: Vec<u8> = sql(
        &url,
        "SELECT record FROM readtrack_userseq_message WHERE user_id = 1 AND seq = 2",
    )[0]
    .get(0);
    assert!(record.len() > 1, "the planted row was overwritten");
    let store = engine.store();
    let logged = store.message(1, 2).unwrap().expect("m2 is logged");
    assert_eq!(logged.msg_id.as_deref(), Some("m2"));
    drop(engine);
    backend::drop_location(&location);
}

/// A commit the database refuses for a reason retrying cannot mend (here a constraint an
/// operator added) fails at once, saying the SQLSTATE and the server's message, not "db error";
/// nothing of it is applied and its ack is not released.
#[test]
fn a_commit_the_database_refuses_fails_with_the_servers_reason() {
    let (url, location, mut engine) = pg_engine_with_one_message();
    sql(
        &url,
        "ALTER TABLE readtrack_userseq_message ADD CONSTRAINT no_more CHECK (false) NOT VALID",
    );
    engine
        .handle(routed("m2", "refused"), Millis(T0 + 1))
        .unwrap();
    let started = Instant::now();
    let err = engine.commit().expect_err("the constraint refuses the row");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not retried: {:?}",
        started.elapsed()
    );
    // The detail shows the refused row (its record's bytes, cut by the server).
    let text = err.to_string();
    let reason = format!(
        "PostgreSQL store {url}: ERROR 23514: new row for relation \"readtrack_userseq_message\" \
         violates check constraint \"no_more\" (detail: Failing row contains (1, 2, \\x"
    );
    assert!(text.starts_with(&reason), "{text}");
    assert_eq!(
        count(&url, "readtrack_userseq_message"),
        1,
        "nothing applied"
    );
    drop(engine);
    backend::drop_location(&location);
}

/// The service loop with its link replaced by channels, on `engine`: the event sender, the
/// command receiver, the shutdown switch and the running loop.
#[allow(clippy::type_complexity)]
fn service_on(
    engine: Engine,
) -> (
    tokio::sync::mpsc::Sender<readtrack::component::LinkEvent>,
    tokio::sync::mpsc::Receiver<String>,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<Engine, readtrack::service::ServiceError>>,
) {
    let (command_tx, command_rx) = tokio::sync::mpsc::channel(64);
    let service =
        readtrack::service::Service::new(engine, "readtrack.localhost".into(), command_tx);
    let (event_tx, event_rx) = tokio::sync::mpsc::channel(64);
    let (query_tx, query_rx) = tokio::sync::mpsc::channel(1);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move {
        let _queries = query_tx;
        service.run(event_rx, query_rx, shutdown_rx).await
    });
    (event_tx, command_rx, shutdown_tx, run)
}

/// The `<routed>` event of a message from alice's session to offline bob, which the module
/// took from mod_offline under `claim`.
fn claimed_event(id: &str, claim: u64) -> String {
    readtrack::hooks::HookEvent::Routed {
        to: jid("bob@localhost"),
        archive_id: None,
        sent: false,
        claim: Some(claim),
        sessions: vec![],
        carbons: vec![],
        message: readtrack::stanza::Incoming::read(&format!(
            "<message xmlns='jabber:client' id='{id}' type='chat' from='alice@localhost/Spark' to='bob@localhost'><body>claimed</body></message>"
        )),
    }
    .to_xml("localhost", "readtrack.localhost")
}

/// The commands of the next command stanza, if one comes within `wait`.
async fn next_commands(
    commands: &mut tokio::sync::mpsc::Receiver<String>,
    wait: Duration,
) -> Option<Vec<readtrack::hooks::HookCommand>> {
    tokio::time::timeout(wait, commands.recv())
        .await
        .ok()
        .flatten()
        .map(|stanza| {
            readtrack::hooks::HookCommand::parse_batch(&stanza, "readtrack.localhost").unwrap()
        })
}

/// A claim (a message the module took from mod_offline and holds until readtrack confirms it)
/// is confirmed only after the commit that made it durable: while the database holds the
/// commit back (a lock on the message log), no confirmation leaves, nor the sender's ack; once
/// it lets go, both do, the ack first, and the message is in the log. A confirmation sent
/// before the commit would let the module forget a message a crash then loses.
#[test]
fn a_claim_is_confirmed_only_after_the_commit_that_made_it_durable() {
    // The PostgreSQL backend runs its own runtime: opened (and dropped) outside the service's.
    let url = backend::fresh_database();
    let location = Location::Postgres(url.clone());
    let engine = Engine::new(
        Store::open_location(&location, &StoreOptions::default()).unwrap(),
        seed_config(),
    )
    .unwrap();
    let engine = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(claim_confirmed_after_commit(engine, url));
    assert_eq!(engine.store().message_count(), 2);
    drop(engine);
    backend::drop_location(&location);
}

async fn claim_confirmed_after_commit(engine: Engine, url: String) -> Engine {
    use readtrack::component::LinkEvent;
    use readtrack::hooks::HookCommand;
    let (events, mut commands, shutdown, run) = service_on(engine);
    events.send(LinkEvent::Connected).await.unwrap();
    events
        .send(LinkEvent::Stanza(
            readtrack::hooks::HookEvent::Snapshot {
                page: readtrack::hooks::SnapshotPage::WHOLE,
                sessions: vec![],
            }
            .to_xml("localhost", "readtrack.localhost"),
        ))
        .await
        .unwrap();
    let first = next_commands(&mut commands, Duration::from_secs(10))
        .await
        .expect("the first commit's <accepts>");
    assert!(
        matches!(&first[..], [HookCommand::Accepts { events }] if events.split(' ').any(|e| e == "claims")),
        "{first:?}"
    );
    // One message committed without a stall, to have the user and the log's tables in use.
    events
        .send(LinkEvent::Stanza(claimed_event("c1", 7)))
        .await
        .unwrap();
    let got = next_commands(&mut commands, Duration::from_secs(10))
        .await
        .expect("c1's commit");
    assert_eq!(
        got.last(),
        Some(&HookCommand::Durable {
            from: 1,
            upto: 7,
            // Claims of this connection before the first it read go back (none were made).
            returned: vec![(1, 6)]
        })
    );

    // The database holds the next commit back.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let locker = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut tx = client.transaction().unwrap();
            tx.batch_execute("LOCK TABLE readtrack_userseq_message IN ACCESS EXCLUSIVE MODE")
                .unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            tx.rollback().unwrap();
        })
    };
    locked_rx.recv().unwrap();
    events
        .send(LinkEvent::Stanza(claimed_event("c2", 8)))
        .await
        .unwrap();
    assert_eq!(
        next_commands(&mut commands, Duration::from_millis(1500)).await,
        None,
        "a command left while the commit was held back"
    );
    release_tx.send(()).unwrap();
    locker.join().unwrap();
    let got = next_commands(&mut commands, Duration::from_secs(10))
        .await
        .expect("c2's commit");
    assert!(
        matches!(&got[0], HookCommand::SendAsHost { stanza_xml } if stanza_xml.contains("10013") && stanza_xml.contains("c2")),
        "{got:?}"
    );
    assert_eq!(
        got.last(),
        Some(&HookCommand::Durable {
            from: 8,
            upto: 8,
            returned: vec![]
        })
    );
    shutdown.send(true).unwrap();
    run.await.unwrap().unwrap()
}

//! `readtrack export` and `readtrack import` (docs/cli.md): a store built by the real service
//! beside a real Prosody moves to the other backend and back, and nothing changes on the way.
//!
//! The store starts on the run's backend (`READTRACK_TEST_BACKEND`): sled -> PostgreSQL -> sled
//! on the sled pass, PostgreSQL -> sled -> PostgreSQL on the PostgreSQL pass. Both need the
//! cluster `scripts/postgres start` runs (`READTRACK_TEST_PG_URL`); `scripts/test` starts it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::daemon::{binary, store_section, Readtrack, ReadtrackOpts};
use common::*;
use readtrack::engine::{Dialect, Engine, EngineConfig, Input, ReceiptPolicy};
use readtrack::stanza::{Message, MessageType, Receipt};
use readtrack::store::transfer::{self, TransferError};
use readtrack::store::{Location, Store, StoreOptions};
use readtrack::time::Millis;

const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// A database of its own on the test cluster, for a store on PostgreSQL whatever the run's
/// backend is.
fn fresh_postgres() -> Location {
    assert!(
        std::env::var("READTRACK_TEST_PG_URL").is_ok_and(|u| !u.is_empty()),
        "tests/transfer.rs moves stores to PostgreSQL and back: apt-get install postgresql, then eval \"$(scripts/postgres start)\" (scripts/test does both)"
    );
    Location::Postgres(common::backend::fresh_database())
}

fn is_postgres(location: &Location) -> bool {
    matches!(location, Location::Postgres(_))
}

/// A CLI config for a stopped store at `location` (the admin socket is never there).
fn config_for(dir: &Path, name: &str, location: &Location) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[xmpp]\ndomain = \"localhost\"\ncomponent = \"readtrack.localhost\"\nsecret = \"s\"\n\n\
             [store]\n{}\n\n[admin]\nsocket = \"{name}.sock\"\n",
            store_section(location)
        ),
    )
    .unwrap();
    path
}

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run readtrack")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What the operator sees of every user: `cursors --json` and the whole `log --json`.
fn views(config: &Path) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for user in USERS {
        let jid = format!("{user}@localhost");
        for args in [
            vec!["cursors", jid.as_str(), "--json"],
            vec!["log", jid.as_str(), "--limit", "100000", "--json"],
        ] {
            let text = ok(cli(config, &args), &args.join(" "));
            all.push(serde_json::from_str(&text).expect("JSON"));
        }
    }
    all
}

/// A store written by the real service: three users, devices that come and go, acked and
/// unacked messages, receipt timers, read state. Returns it stopped.
async fn built_store(p: &Prosody, location: Location) -> Readtrack {
    let mut rt = Readtrack::start(
        p,
        ReadtrackOpts {
            timeout: "60s",
            store: Some(location),
            ..ReadtrackOpts::default()
        },
    );
    let mut phone = online(p, "bob", "phone").await;
    let mut laptop = online(p, "bob", "laptop").await;
    laptop.close().await;
    let mut carol = online(p, "carol", "phone").await;
    let mut alice = online(p, "alice", "Spark").await;
    for i in 1..=40 {
        let to = if i % 4 == 0 {
            "carol@localhost"
        } else {
            "bob@localhost"
        };
        alice
            .send_raw(&chat(
                &format!("m{i}"),
                to,
                &escape(&format!("message {i} & <more>")),
            ))
            .await;
    }
    alice.sync().await;
    for i in 1..=10 {
        let id = format!("m{i}");
        if i % 4 != 0 {
            phone
                .expect_message(WAIT, |s| attr(s, "id").as_deref() == Some(id.as_str()))
                .await;
            phone.send_raw(&crs_receipt(&id)).await;
        }
    }
    phone
        .send_raw("<message to='alice@localhost/Spark' type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='m7'/></message>")
        .await;
    phone.sync().await;
    carol
        .send_raw(&chat("c1", "alice@localhost", "from carol"))
        .await;
    carol.sync().await;
    rt.wait_acked("bob@localhost", "phone", 8);
    let cursors = rt.cursors("bob@localhost");
    assert!(cursors["head"].as_u64() >= Some(30), "{cursors}");
    rt.stop();
    rt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_store_moves_to_the_other_backend_and_back_record_for_record() {
    let p = server_with(&USERS);
    let dir = tempfile::tempdir().unwrap();
    let source_location = common::backend::test_location(&dir.path().join("source"));
    let (other, back) = if is_postgres(&source_location) {
        (Location::Sled(dir.path().join("other")), fresh_postgres())
    } else {
        (fresh_postgres(), Location::Sled(dir.path().join("back")))
    };
    let _rt = built_store(&p, source_location.clone()).await;
    let source = config_for(dir.path(), "source", &source_location);
    let other_config = config_for(dir.path(), "other", &other);
    let back_config = config_for(dir.path(), "back", &back);
    let want = views(&source);

    let first = dir.path().join("first.export");
    let said = ok(
        cli(&source, &["export", "--to", first.to_str().unwrap()]),
        "export",
    );
    assert!(said.starts_with("exported "), "{said}");
    assert!(said.contains("; every record compared"), "{said}");

    let imported = ok(
        cli(
            &other_config,
            &["import", "--from", first.to_str().unwrap(), "--json"],
        ),
        "import into the other backend",
    );
    let imported: serde_json::Value = serde_json::from_str(&imported).unwrap();
    assert_eq!(imported["verified"], true, "{imported}");
    assert!(
        imported["trees"]["userseq_message"].as_u64() >= Some(30),
        "{imported}"
    );
    assert_eq!(
        views(&other_config),
        want,
        "the other backend shows another store"
    );

    let second = dir.path().join("second.export");
    ok(
        cli(&other_config, &["export", "--to", second.to_str().unwrap()]),
        "export from the other backend",
    );
    let said_back = ok(
        cli(
            &back_config,
            &["import", "--from", second.to_str().unwrap()],
        ),
        "import back",
    );
    // What docs/cli.md shows (`--nocapture`).
    print!("{said}{said_back}");
    assert_eq!(views(&back_config), want, "the store came back changed");

    // Every record, byte for byte: the export of each copy is the same file.
    let third = dir.path().join("third.export");
    ok(
        cli(&back_config, &["export", "--to", third.to_str().unwrap()]),
        "export of the copy's copy",
    );
    let first_bytes = std::fs::read(&first).unwrap();
    assert_eq!(std::fs::read(&second).unwrap(), first_bytes);
    assert_eq!(std::fs::read(&third).unwrap(), first_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_a_store_that_is_not_empty_and_changes_nothing() {
    let p = server_with(&USERS);
    let dir = tempfile::tempdir().unwrap();
    let location = common::backend::test_location(&dir.path().join("store"));
    let _rt = built_store(&p, location.clone()).await;
    let config = config_for(dir.path(), "store", &location);
    let before = views(&config);
    let export = dir.path().join("store.export");
    ok(
        cli(&config, &["export", "--to", export.to_str().unwrap()]),
        "export",
    );

    let out = cli(&config, &["import", "--from", export.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "readtrack: the target store is not empty (tree jid_userid has records): import only into a new, empty store\n"
    );
    assert_eq!(views(&config), before);

    // An export never writes over a file either.
    let out = cli(&config, &["export", "--to", export.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "readtrack: {} exists; an export never overwrites a file\n",
            export.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_refuse_while_the_service_runs() {
    let p = server_with(&USERS);
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    let file = rt.config_path().with_file_name("served.export");
    for args in [
        ["export", "--to", file.to_str().unwrap()],
        ["import", "--from", file.to_str().unwrap()],
    ] {
        let out = rt.cli(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.starts_with(
                "readtrack: readtrack serve is running on this store (its admin socket "
            ) && said.contains("is live): stop it first"),
            "{args:?}: {said}"
        );
    }
    assert!(!file.exists(), "an export that was refused wrote a file");
}

#[test]
fn a_wrong_database_url_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let nowhere = Location::Postgres("postgres://readtrack:secret@127.0.0.1:1/readtrack".into());
    let config = config_for(dir.path(), "nowhere", &nowhere);
    let file = dir.path().join("any.export");
    let out = cli(&config, &["export", "--to", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.starts_with(
            "readtrack: cannot open the store postgres://readtrack@127.0.0.1:1/readtrack: "
        ),
        "{said}"
    );
    assert!(!said.contains("secret"), "the password was printed: {said}");
    assert!(!file.exists());
}

#[test]
fn import_of_a_file_that_is_not_an_export_creates_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let config = config_for(dir.path(), "target", &Location::Sled(target.clone()));
    let out = cli(&config, &["import", "--from", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "readtrack: {} is not a readtrack export (no export header)\n",
            config.display()
        )
    );
    assert!(!target.exists(), "a refused import created the store");
}

// ---- the same through the library, without a service ----

/// A store the engine wrote: two users, two devices, acked and unacked messages (receipt
/// timers armed), a sent message.
fn engine_store(location: &Location) {
    let store = Store::open_location(location, &StoreOptions::default()).unwrap();
    let mut config = EngineConfig::new("example.com");
    config.dialect = Dialect::Seed;
    config.policy = ReceiptPolicy::All;
    let mut engine = Engine::new(store, config).unwrap();
    let t0 = 1_700_000_000_000u64;
    for device in ["phone", "laptop"] {
        engine
            .handle(
                Input::Available {
                    jid: jid(&format!("bob@example.com/{device}")),
                    device_id: None,
                    session_id: None,
                },
                Millis(t0),
            )
            .unwrap();
    }
    for i in 1..=200u64 {
        let mut m = Message::new(MessageType::Chat);
        m.id = Some(format!("m{i}"));
        m.from = Some(jid("alice@example.com/Spark"));
        m.to = Some(jid("bob@example.com"));
        m.body = Some(format!("message {i}"));
        engine
            .handle(
                Input::routed(
                    m,
                    jid("bob@example.com"),
                    vec![jid("bob@example.com/phone")],
                    None,
                    false,
                ),
                Millis(t0 + i),
            )
            .unwrap();
        if i % 3 == 0 {
            let mut ack = Message::new(MessageType::Crs);
            ack.id = Some(format!("m{i}"));
            ack.from = Some(jid("bob@example.com/phone"));
            ack.to = Some(jid("example.com"));
            ack.receipt = Some(Receipt::SeedReceived {
                id: format!("m{i}"),
                status: "200".into(),
            });
            engine.handle(Input::sent(ack), Millis(t0 + i)).unwrap();
        }
        if i % 64 == 0 {
            engine.commit().unwrap();
        }
    }
    engine.close().unwrap();
}

fn export_of(location: &Location, to: &Path) -> transfer::Summary {
    let store = Store::open_location(location, &StoreOptions::default()).unwrap();
    transfer::export(&store, to, |_| {}).unwrap()
}

fn import_into(location: &Location, from: &Path) -> Result<transfer::Summary, TransferError> {
    let store = Store::open_location(location, &StoreOptions::default()).unwrap();
    transfer::import(&store, from, |_| {})
}

#[test]
fn an_engine_store_goes_to_postgres_and_back_to_sled_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let source = Location::Sled(dir.path().join("source"));
    let middle = fresh_postgres();
    let back = Location::Sled(dir.path().join("back"));
    engine_store(&source);

    let first = dir.path().join("first.export");
    let exported = export_of(&source, &first);
    assert!(
        exported
            .trees
            .iter()
            .any(|(tree, n)| *tree == "userseq_message" && *n == 200),
        "{exported:?}"
    );
    assert!(
        exported
            .trees
            .iter()
            .any(|(tree, n)| *tree == "deadline_userseq" && *n > 0),
        "receipt timers were copied: {exported:?}"
    );
    let imported = import_into(&middle, &first).unwrap();
    assert_eq!(imported, exported);

    let second = dir.path().join("second.export");
    assert_eq!(export_of(&middle, &second), exported);
    assert_eq!(import_into(&back, &second).unwrap(), exported);
    let third = dir.path().join("third.export");
    assert_eq!(export_of(&back, &third), exported);

    let first_bytes = std::fs::read(&first).unwrap();
    assert_eq!(std::fs::read(&second).unwrap(), first_bytes);
    assert_eq!(std::fs::read(&third).unwrap(), first_bytes);

    // And the engine reads the copy as it read the original.
    let original = Store::open_location(&source, &StoreOptions::default()).unwrap();
    let copy = Store::open_location(&back, &StoreOptions::default()).unwrap();
    let bob = |s: &Store| s.user_id("bob@example.com").unwrap().unwrap();
    assert_eq!(
        format!("{:?}", original.devices(bob(&original)).unwrap()),
        format!("{:?}", copy.devices(bob(&copy)).unwrap())
    );
}

#[test]
fn an_import_into_a_store_with_records_is_refused_on_either_backend() {
    let dir = tempfile::tempdir().unwrap();
    let sled = Location::Sled(dir.path().join("sled"));
    let postgres = fresh_postgres();
    engine_store(&sled);
    engine_store(&postgres);
    let file = dir.path().join("sled.export");
    export_of(&sled, &file);
    for target in [&sled, &postgres] {
        let err = import_into(target, &file).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the target store is not empty (tree jid_userid has records): import only into a new, empty store",
            "{target:?}"
        );
    }
}

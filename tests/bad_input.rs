//! The bad-input corpus (issue 6, item 3): every kind of hostile or broken input readtrack can
//! receive, each with the exact error it produces and proof that nothing changed.
//!
//! Levels: the framer (bytes from the component stream), the engine (hook events through the same
//! parse steps as `readtrack serve`, on a real sled store whose every tree is compared byte for
//! byte before and after), Prosody (the module), and the real binary (secret, config).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use readtrack::engine::{Engine, EngineError};
use readtrack::service::FromServer;
use readtrack::stanza::{Frame, FrameError, Framer, Limits};
use readtrack::store::{Counters, Store, StoreOptions};
use readtrack::time::Millis;

// ---------------------------------------------------------------- framer level

/// Feeds `input` in one push and then again one byte per push (the two must agree); returns the
/// stanzas framed before the error and the error.
fn frame_err(input: &[u8]) -> (Vec<String>, FrameError) {
    let run = |chunks: Vec<&[u8]>| {
        let mut framer = Framer::new(Limits::default());
        let mut stanzas = Vec::new();
        for chunk in chunks {
            framer.push(chunk);
            loop {
                match framer.next_frame() {
                    Ok(Some(Frame::Stanza(s))) => stanzas.push(s),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        // Refused for good: a valid stanza after the bad one is not framed,
                        // because the stream position after broken XML cannot be trusted.
                        framer.push(b"<message><body>after</body></message>");
                        assert_eq!(framer.next_frame(), Err(e.clone()));
                        return (stanzas, e);
                    }
                }
            }
        }
        panic!("no error for {:?}", String::from_utf8_lossy(input));
    };
    let whole = run(vec![input]);
    let bytewise = run(input.chunks(1).collect());
    assert_eq!(whole, bytewise, "chunking changed the outcome");
    whole
}

const GOOD: &str = "<message id='ok'><body>fine</body></message>";

/// Feeds `input` in one push and then again one byte per push (the two must agree); returns
/// every frame, and the most the framer held at once.
fn frame_ok(input: &[u8]) -> (Vec<Frame>, usize) {
    let run = |chunks: Vec<&[u8]>| {
        let mut framer = Framer::new(Limits::default());
        let mut frames = Vec::new();
        let mut held = 0;
        for chunk in chunks {
            framer.push(chunk);
            held = held.max(framer.buffered());
            loop {
                match framer.next_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => panic!("{e} for {:?}", String::from_utf8_lossy(&input[..200])),
                }
            }
        }
        (frames, held)
    };
    let (whole, _) = run(vec![input]);
    let (bytewise, held) = run(input.chunks(1).collect());
    assert_eq!(whole, bytewise, "chunking changed the outcome");
    (whole, held)
}

#[test]
fn stanza_over_the_size_limit_is_skipped_and_the_stream_goes_on() {
    let body = "x".repeat(2_000_000);
    let big = format!("<message><body>{body}</body></message>");
    let input = format!("{GOOD}{big}{GOOD}");
    let (frames, held) = frame_ok(input.as_bytes());
    assert_eq!(
        frames,
        vec![
            Frame::Stanza(GOOD.into()),
            Frame::Skipped {
                bytes: big.len(),
                depth: 2
            },
            Frame::Stanza(GOOD.into()),
        ]
    );
    // Counted while scanning, not buffered: the framer never held much more than the limit.
    assert!(
        held <= Limits::default().max_stanza_bytes + 1,
        "held {held}"
    );
}

#[test]
fn stanza_nested_too_deep_is_skipped_and_the_stream_goes_on() {
    let deep = format!("{}{}", "<a>".repeat(33), "</a>".repeat(33));
    let input = format!("{GOOD}{deep}{GOOD}");
    let (frames, _) = frame_ok(input.as_bytes());
    assert_eq!(
        frames,
        vec![
            Frame::Stanza(GOOD.into()),
            Frame::Skipped {
                bytes: deep.len(),
                depth: 33
            },
            Frame::Stanza(GOOD.into()),
        ]
    );
    // 32 is allowed: the limit is not off by one.
    let ok = format!("{}{}", "<a>".repeat(32), "</a>".repeat(32));
    let mut framer = Framer::new(Limits::default());
    framer.push(ok.as_bytes());
    assert_eq!(framer.next_frame(), Ok(Some(Frame::Stanza(ok))));
}

#[test]
fn a_million_open_elements_are_counted_not_kept() {
    let n = 1_000_000;
    let deep = format!("<m>{}{}</m>", "<a>".repeat(n), "</a>".repeat(n));
    let (frames, held) = frame_ok(format!("{deep}{GOOD}").as_bytes());
    assert_eq!(
        frames,
        vec![
            Frame::Skipped {
                bytes: deep.len(),
                depth: n + 1
            },
            Frame::Stanza(GOOD.into()),
        ]
    );
    assert!(held < 1024, "held {held}");
}

#[test]
fn broken_xml_inside_a_skipped_stanza_still_breaks_the_stream() {
    // Skipping is no way around the stream's rules: a DOCTYPE or an undefined entity deep
    // inside an oversized stanza is as fatal as anywhere else.
    let deep = "<a>".repeat(40);
    let (before, err) = frame_err(format!("{GOOD}{deep}&xxe;").as_bytes());
    assert_eq!(before, vec![GOOD.to_string()]);
    assert_eq!(
        err.to_string(),
        format!(
            "undefined entity &xxe; (at byte {})",
            GOOD.len() + deep.len()
        )
    );
    let (_, err) = frame_err(format!("{deep}<!DOCTYPE x>").as_bytes());
    assert_eq!(
        err.to_string(),
        format!("DOCTYPE is not allowed (at byte {})", deep.len())
    );
}

#[test]
fn stream_header_over_the_size_limit_ends_the_stream() {
    let header = format!(
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' x='{}'>",
        "y".repeat(1_100_000)
    );
    let (before, err) = frame_err(header.as_bytes());
    assert!(before.is_empty());
    assert_eq!(err.to_string(), "stanza exceeds 1048576 bytes");
}

#[test]
fn doctype_is_refused() {
    // The billion-laughs shape: refused at the DOCTYPE, before any entity is declared.
    let input = "<!DOCTYPE lolz [<!ENTITY lol \"lol\">]><message><body>&lol;</body></message>";
    let (before, err) = frame_err(input.as_bytes());
    assert!(before.is_empty());
    assert_eq!(err.to_string(), "DOCTYPE is not allowed (at byte 0)");
}

#[test]
fn undefined_entity_is_refused() {
    let input = format!("{GOOD}<message><body>&xxe;</body></message>");
    let (before, err) = frame_err(input.as_bytes());
    assert_eq!(before, vec![GOOD.to_string()]);
    // 44 bytes of GOOD, then `<message><body>` (15): the `&` is at byte 59.
    assert_eq!(err.to_string(), "undefined entity &xxe; (at byte 59)");
}

#[test]
fn mismatched_end_tag_is_refused() {
    let input = format!("{GOOD}<message><body>hi</bdy></message>");
    let (before, err) = frame_err(input.as_bytes());
    assert_eq!(before, vec![GOOD.to_string()]);
    // The offset is the `<` of the end tag: 44 + 15 + 2.
    assert_eq!(
        err.to_string(),
        "end tag </bdy> does not match <body> (at byte 61)"
    );
}

#[test]
fn invalid_utf8_is_refused() {
    let mut input = GOOD.as_bytes().to_vec();
    input.extend_from_slice(b"<message><body>caf\xc3</body></message>");
    let (before, err) = frame_err(&input);
    assert_eq!(before, vec![GOOD.to_string()]);
    // `caf` starts at 59; the truncated sequence at 62.
    assert_eq!(err.to_string(), "invalid UTF-8 (at byte 62)");
}

// ---------------------------------------------------------------- engine level

const T0: u64 = 1_700_000_000_000;
const HOOK: &str = "urn:readtrack:hook:0";

/// Every tree of a sled database, key and value bytes: the whole state, nothing summarised.
type Dump = BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;

/// Opens the folder with sled directly (not through readtrack) and reads everything. sled
/// releases its lock asynchronously after the last handle is dropped, hence the retry.
fn dump(path: &Path) -> Dump {
    let deadline = Instant::now() + Duration::from_secs(5);
    let db = loop {
        match sled::open(path) {
            Ok(db) => break db,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open {} with sled: {e}", path.display()),
        }
    };
    let mut out = Dump::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        let kvs = tree
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        out.insert(name.to_vec(), kvs);
    }
    out
}

/// An engine on a real store with some history: bob sent alice `m1` (logged, waiting for a
/// receipt), alice's phone is online, carol is a known user with a message of her own.
struct World {
    dir: tempfile::TempDir,
    engine: Option<Engine>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut w = World { dir, engine: None };
        w.open();
        for event in [
            available("alice@localhost/phone"),
            routed(
                "alice@localhost",
                &["alice@localhost/phone"],
                &chat("bob@localhost/pc", "alice@localhost", "m1"),
            ),
            routed(
                "carol@localhost",
                &[],
                &chat("bob@localhost/pc", "carol@localhost", "c1"),
            ),
        ] {
            w.apply(&event).unwrap();
        }
        w
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    fn open(&mut self) {
        let store = Store::open(self.path(), &StoreOptions::default()).unwrap();
        self.engine = Some(Engine::new(store, seed_config()).unwrap());
    }

    /// What `readtrack serve` does with one stanza from the server: hook event, inner message,
    /// engine input, commit. An error says at which step it was refused.
    fn apply(&mut self, stanza: &str) -> Result<(), String> {
        // The very code `serve` runs for a stanza from the server.
        let input = match readtrack::service::from_server(stanza, "localhost")? {
            FromServer::Input(input, _) => *input,
            FromServer::Done(ids) => {
                return Err(format!("a <done id={ids:?}> is not an engine input"))
            }
            FromServer::SnapshotPage { page, sessions } if page.number == 1 && page.last => {
                readtrack::engine::Input::Snapshot { sessions }
            }
            FromServer::SnapshotPage { .. } => {
                return Err("one page of a snapshot is not an engine input".into())
            }
            FromServer::GiveBack { why, .. } => return Err(format!("handed back: {why}")),
        };
        let engine = self.engine.as_mut().unwrap();
        let result = engine.handle(input, Millis(T0 + 1000));
        engine.commit().unwrap();
        match result {
            Ok(_) => Ok(()),
            Err(EngineError::Rejected(why)) => Err(format!("rejected input: {why}")),
            Err(e) => panic!("store failure: {e}"),
        }
    }

    /// Closes the engine (it flushes) and dumps the store from disk, then reopens.
    fn state(&mut self) -> (Dump, Counters) {
        let engine = self.engine.take().unwrap();
        let counters = engine.counters().clone();
        drop(engine.close().unwrap());
        let dump = dump(&self.path());
        self.open();
        (dump, counters)
    }

    /// Applies a bad stanza and checks the store did not change at all, except the counters
    /// record when `counted` (then exactly `receipts_rejected` went up by one).
    fn refuse(&mut self, stanza: &str, counted: bool) -> Result<(), String> {
        let (before, counters_before) = self.state();
        let result = self.apply(stanza);
        let (mut after, counters_after) = self.state();
        let mut want = counters_before.clone();
        if counted {
            want.receipts_rejected += 1;
        }
        assert_eq!(counters_after, want);
        if counted {
            // The counters live in the meta tree; everything else must be byte-identical.
            let strip = |d: &mut Dump| {
                for kv in d.get_mut(b"meta".as_slice()).unwrap() {
                    if kv.0 == b"counters" {
                        kv.1.clear();
                    }
                }
            };
            let mut before = before;
            strip(&mut before);
            strip(&mut after);
            assert_eq!(before, after, "store changed");
        } else {
            assert_eq!(before, after, "store changed");
        }
        result
    }
}

fn chat(from: &str, to: &str, id: &str) -> String {
    format!("<message xmlns='jabber:client' type='chat' id='{id}' from='{from}' to='{to}'><body>hi</body></message>")
}

fn available(jid: &str) -> String {
    format!("<message from='localhost' to='readtrack.localhost'><available xmlns='{HOOK}' jid='{jid}'/></message>")
}

fn routed(to: &str, sessions: &[&str], message: &str) -> String {
    let sessions: String = sessions
        .iter()
        .map(|s| format!("<session jid='{s}'/>"))
        .collect();
    format!(
        "<message from='localhost' to='readtrack.localhost'><routed xmlns='{HOOK}' to='{to}'>{sessions}\
         <forwarded xmlns='urn:xmpp:forward:0'>{message}</forwarded></routed></message>"
    )
}

fn sent(message: &str) -> String {
    format!(
        "<message from='localhost' to='readtrack.localhost'><sent xmlns='{HOOK}'>\
         <forwarded xmlns='urn:xmpp:forward:0'>{message}</forwarded></sent></message>"
    )
}

/// Seed receipt as a client sends it to the server (docs/protocol.md).
fn seed_receipt(from: &str, id: Option<&str>) -> String {
    let id = id.map(|i| format!(" id='{i}'")).unwrap_or_default();
    format!("<message xmlns='jabber:client' type='crs'{id} from='{from}' to='localhost'><received xmlns='urn:xmpp:receipts'>200</received></message>")
}

#[test]
fn world_is_what_the_tests_assume() {
    // Guards the premise of the tests below: m1 is logged for alice and a good receipt is
    // accepted (so a refused one is refused for its own reason).
    let mut w = World::new();
    let (_, c) = w.state();
    assert_eq!(
        (c.messages_logged, c.receipts_accepted, c.receipts_rejected),
        (2, 0, 0)
    );
    w.apply(&sent(&seed_receipt("alice@localhost/phone", Some("m1"))))
        .unwrap();
    let (_, c) = w.state();
    assert_eq!((c.receipts_accepted, c.receipts_rejected), (1, 0));
}

#[test]
fn jid_that_is_not_a_jid() {
    let mut w = World::new();
    // In a hook event attribute: refused by the hook parser.
    let err = w.refuse(&available("alice@localhost/"), false).unwrap_err();
    assert_eq!(
        err,
        "<available jid>: JID \"alice@localhost/\" has an empty resource after '/'"
    );
    // In the forwarded client message: refused by the stanza parser.
    let err = w
        .refuse(
            &sent(&seed_receipt("alice@@localhost/phone", Some("m1"))),
            false,
        )
        .unwrap_err();
    assert_eq!(
        err,
        "client message: invalid JID in attribute \"from\": JID \"alice@@localhost/phone\" contains a forbidden character"
    );
    // A JID, but not a device of a user of this domain: refused by the engine.
    let err = w
        .refuse(&sent(&seed_receipt("localhost/phone", Some("m1"))), false)
        .unwrap_err();
    assert_eq!(
        err,
        "rejected input: client localhost/phone is not a user of localhost"
    );
}

#[test]
fn receipt_with_no_id() {
    let mut w = World::new();
    let err = w
        .refuse(&sent(&seed_receipt("alice@localhost/phone", None)), false)
        .unwrap_err();
    assert_eq!(err, "client message: message has a receipt but no id");
}

#[test]
fn receipt_for_an_unknown_id() {
    let mut w = World::new();
    w.refuse(
        &sent(&seed_receipt("alice@localhost/phone", Some("nope"))),
        true,
    )
    .unwrap();
}

#[test]
fn receipt_from_a_user_who_is_not_the_recipient() {
    let mut w = World::new();
    // carol is a user with a log of her own, but m1 is in alice's log: carol's seed receipt...
    w.refuse(
        &sent(&seed_receipt("carol@localhost/laptop", Some("m1"))),
        true,
    )
    .unwrap();
    // ...and her XEP-0184 receipt addressed to bob, the sender, both ack nothing.
    let xep = "<message xmlns='jabber:client' from='carol@localhost/laptop' to='bob@localhost/pc'>\
               <received xmlns='urn:xmpp:receipts' id='m1'/></message>";
    w.refuse(&sent(xep), true).unwrap();
    // A user readtrack has never seen is refused the same way, and is not created.
    w.refuse(
        &sent(&seed_receipt("mallory@localhost/x", Some("m1"))),
        true,
    )
    .unwrap();
}

// ---------------------------------------------------------------- Prosody level

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_command_from_a_client_is_ignored() {
    // tests/prosody_module.rs covers a forged <deliver>; a forged <send> would let a client
    // route anything as the server itself (a fake 10013 ack, a fake bounce).
    use common::*;
    let p = Prosody::start(ProsodyOpts::default());
    p.register("alice", "pw");
    p.register("bob", "pw");
    let mut comp = p.connect_component().await;
    comp.drain(QUIET).await;
    let mut alice = p.client("alice", "pw", "phone").await;
    alice.send_presence().await;
    let mut bob = p.client("bob", "pw", "phone").await;
    bob.send_presence().await;
    bob.sync().await;
    alice
        .send_raw(&format!(
            "<message to='{DOMAIN}'><send xmlns='{HOOK}'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' id='fake-ack' type='crs' from='{DOMAIN}' to='bob@localhost/phone'>\
             <body>{{\"time\":1,\"msgType\":\"10013\"}}</body></message></forwarded></send></message>"
        ))
        .await;
    assert_eq!(bob.messages_within(QUIET).await, Vec::<String>::new());
    assert!(
        p.log()
            .contains("Ignoring readtrack <send> from alice@localhost/phone (c2s)"),
        "no log line for the refused command:\n{}",
        p.log()
    );
}

// ---------------------------------------------------------------- the real binary

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_readtrack"))
}

/// Runs `readtrack serve` with `config` in a temp dir; fails the test if it does not exit within
/// `within`. Returns (status code, stderr).
fn serve(dir: &Path, config: &str, within: Duration) -> (Option<i32>, String) {
    let path = dir.join("readtrack.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("READTRACK_SECRET")
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "readtrack serve still running after {within:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn wrong_component_secret_exits_promptly_without_the_secret() {
    let p = common::Prosody::start(common::ProsodyOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not-the-secret-7f3a";
    let config = format!(
        "[xmpp]\ndomain = \"localhost\"\ncomponent = \"readtrack.localhost\"\n\
         connect = \"127.0.0.1:{}\"\nsecret = \"{wrong}\"\n[store]\npath = \"data\"\n",
        p.component_port
    );
    let started = Instant::now();
    let (status, output) = serve(dir.path(), &config, Duration::from_secs(15));
    assert_eq!(status, Some(1), "{output}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let want = format!(
        "readtrack: the server at 127.0.0.1:{} refused the secret for component readtrack.localhost (stream error not-authorized)",
        p.component_port
    );
    assert!(
        output.lines().any(|l| l == want),
        "no `{want}` in:\n{output}"
    );
    assert!(
        !output.contains(wrong),
        "the secret leaked into the output:\n{output}"
    );
    assert!(!output.contains(common::SECRET));
}

#[test]
fn config_with_an_unknown_key_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (status, output) = serve(
        dir.path(),
        "[xmpp]\ndomain = \"localhost\"\nsecret = \"s\"\n\n[store]\npth = \"data\"\n",
        Duration::from_secs(10),
    );
    assert_eq!(status, Some(2), "{output}");
    let first = output.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "readtrack: config {}: line 6: unknown field `pth`, expected one of `backend`, `path`, `cache_mb`, `url`, `lease_seconds`",
            dir.path().join("readtrack.toml").display()
        )),
        "{output}"
    );
    // Refused before anything was created.
    assert!(!dir.path().join("data").exists());
    assert!(!dir.path().join("readtrack-data").exists());
}

#[test]
fn config_with_a_bad_duration_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (status, output) = serve(
        dir.path(),
        "[xmpp]\nsecret = \"s\"\n\n[receipts]\ndialect = \"seed\"\ntimeout = \"10 secs please\"\n",
        Duration::from_secs(10),
    );
    assert_eq!(status, Some(2), "{output}");
    assert_eq!(
        output.lines().next().unwrap_or_default(),
        format!(
            "readtrack: config {}: line 6: [receipts] timeout: bad duration \"10 secs please\": expected number at 8 (write e.g. \"10s\", \"500ms\", \"30d\")",
            dir.path().join("readtrack.toml").display()
        ),
        "{output}"
    );
    assert!(!dir.path().join("readtrack-data").exists());
}

/// The engine's defaults in the seed dialect (server acks to every client), which these tests
/// exercise.
fn seed_config() -> readtrack::engine::EngineConfig {
    let mut config = readtrack::engine::EngineConfig::new("localhost");
    config.dialect = readtrack::engine::Dialect::Seed;
    config
}

/// A message the server accepted whose children are not as the XEPs write them (a
/// `<stanza-id>` without `by`, a `<delay>` no clock can read) is still logged, as it was sent:
/// readtrack reads only its top element then. Nothing the server accepted is handed back.
#[test]
fn a_routed_message_with_odd_children_is_logged_as_it_was_sent() {
    let mut w = World::new();
    let odd = "<message xmlns='jabber:client' id='o1' type='chat' from='alice@localhost/phone' \
               to='bob@localhost'><body>odd</body><stanza-id xmlns='urn:xmpp:sid:0' id='x'/>\
               <delay xmlns='urn:xmpp:delay' stamp='yesterday'/></message>";
    w.apply(&routed("bob@localhost", &[], odd)).unwrap();
    let engine = w.engine.as_mut().unwrap();
    let store = engine.store();
    let bob = store
        .user_id("bob@localhost")
        .unwrap()
        .expect("bob is logged");
    let logged: Vec<_> = store.messages_after(bob, 0).map(|m| m.unwrap()).collect();
    assert_eq!(logged.len(), 1);
    assert!(logged[0]
        .stanza
        .contains("<delay xmlns='urn:xmpp:delay' stamp='yesterday'/>"));
    assert_eq!(engine.counters().given_back, 0);
}

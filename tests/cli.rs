//! The operator CLI (`cursors`, `unread`, `log`, `forget`, `stats`) driven through the real
//! binary: against a running `readtrack serve` beside a real Prosody (answers come over the admin
//! socket) and against the same store once the service is stopped (the CLI opens it directly).
//! Every command in both output forms, exact values; operator errors; the socket's permissions;
//! junk on the socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use common::daemon::{binary, Readtrack, ReadtrackOpts};
use common::*;

fn server() -> Prosody {
    server_with(&["alice", "bob", "carol"])
}

fn has_id(s: &str, id: &str) -> bool {
    attr(s, "id").as_deref() == Some(id)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("CLI output is UTF-8")
}

/// Runs a command that must succeed quietly; returns its stdout.
fn ok(rt: &Readtrack, args: &[&str]) -> String {
    let out = rt.cli(args);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "readtrack {args:?}: {}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn ok_json(rt: &Readtrack, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = ok(rt, &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Asserts an operator-facing failure: exit `status`, nothing on stdout, exactly one line on
/// stderr starting with `readtrack: ` and no panic or backtrace text. Returns that line.
fn failure(out: &Output, status: i32, what: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(status),
        "{what}: exit status; stderr: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: stdout {:?}",
        text(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr: {stderr:?}");
    assert!(lines[0].starts_with("readtrack: "), "{what}: {stderr:?}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "unwrap"] {
        assert!(!stderr.contains(bad), "{what}: {stderr:?}");
    }
    lines[0].to_string()
}

fn fails(rt: &Readtrack, args: &[&str], status: i32) -> String {
    failure(&rt.cli(args), status, &format!("readtrack {args:?}"))
}

/// `2026-11-25T08:36:18.847Z`: what `Millis::rfc3339` writes (RFC 3339, UTC, milliseconds).
fn is_rfc3339(s: &str) -> bool {
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    s.len() == shape.len()
        && s.chars().zip(shape.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            p => c == p,
        })
}

fn time_of(v: &Value) -> String {
    let t = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(is_rfc3339(t), "not an RFC 3339 time: {t}");
    t.to_string()
}

fn device_names(cursors: &Value) -> Vec<String> {
    cursors["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_string())
        .collect()
}

const LONG_BODY: &str =
    "a long message body that goes on and on, well past the sixty characters the CLI shows";
/// The first 60 characters and an ellipsis: what `unread` and `log` show of `LONG_BODY`.
const LONG_SHORT: &str = "a long message body that goes on and on, well past the sixty…";

/// Read-only answers of the scenario, captured live and compared with the stopped store's.
struct Views {
    cursors_json: String,
    cursors_table: String,
    unread_laptop_json: String,
    unread_laptop_table: String,
    unread_phone_json: String,
    unread_phone_table: String,
    log_json: String,
    log_table: String,
}

/// Checks every read-only view of bob against the scenario's exact values; returns them as text.
fn check_views(rt: &Readtrack) -> Views {
    // cursors --json: the shape docs/cli.md documents, key for key, in that order. What the devices
    // acked: phone acked m1 and m2 and holds m3 unacked; laptop acked m1 and went away.
    let cursors_json = ok(rt, &["cursors", "bob@localhost", "--json"]);
    let c: Value = serde_json::from_str(&cursors_json).unwrap();
    let phone_seen = time_of(&c["devices"][0]["last_seen"]);
    let laptop_seen = time_of(&c["devices"][1]["last_seen"]);
    let conversation_time = time_of(&c["conversations"][0]["last_time"]);
    // The documented shape, extended (never renamed) with unread per conversation.
    assert_eq!(
        c,
        json!({"user": "bob@localhost", "head": 3, "devices": [
            {"device": "phone", "resource": "phone", "acked_upto": 2, "unread": 1, "pending": 1,
             "online": true, "last_seen": phone_seen},
            {"device": "laptop", "resource": "laptop", "acked_upto": 1, "unread": 2, "pending": 0,
             "online": false, "last_seen": laptop_seen},
        ], "conversations": [
            {"peer": "alice@localhost", "unread": 3, "read_upto": 0, "last_seq": 3, "last_time": conversation_time},
        ]})
    );
    assert_eq!(
        cursors_json,
        format!(
            r#"{{
  "user": "bob@localhost",
  "head": 3,
  "devices": [
    {{
      "device": "phone",
      "resource": "phone",
      "acked_upto": 2,
      "unread": 1,
      "pending": 1,
      "online": true,
      "last_seen": "{phone_seen}"
    }},
    {{
      "device": "laptop",
      "resource": "laptop",
      "acked_upto": 1,
      "unread": 2,
      "pending": 0,
      "online": false,
      "last_seen": "{laptop_seen}"
    }}
  ],
  "conversations": [
    {{
      "peer": "alice@localhost",
      "unread": 3,
      "read_upto": 0,
      "last_seq": 3,
      "last_time": "{conversation_time}"
    }}
  ]
}}
"#
        ),
        "cursors --json prints the keys in the order docs/cli.md documents"
    );
    let cursors_table = ok(rt, &["cursors", "bob@localhost"]);
    assert_eq!(
        cursors_table,
        format!(
            "user bob@localhost  head 3\n\
             DEVICE  RESOURCE  ACKED_UPTO  UNREAD  PENDING  ONLINE  LAST_SEEN\n\
             phone   phone     2           1       1        yes     {phone_seen}\n\
             laptop  laptop    1           2       0        no      {laptop_seen}\n\
             \n\
             PEER             UNREAD  READ_UPTO  LAST_SEQ  LAST_TIME\n\
             alice@localhost  3       0          3         {conversation_time}\n"
        )
    );

    // log: each message's receipt and each device's state; m3 still waits (60 s timeout).
    let log_json = ok(rt, &["log", "bob@localhost", "--json"]);
    let log: Value = serde_json::from_str(&log_json).unwrap();
    let t: Vec<String> = (0..3)
        .map(|i| time_of(&log["messages"][i]["time"]))
        .collect();
    let from = "alice@localhost/Spark";
    assert_eq!(
        log,
        json!({"user": "bob@localhost", "head": 3, "messages": [
            {"seq": 1, "time": t[0], "from": from, "id": "m1", "body": "hello bob",
             "receipt": "acked",
             "devices": [{"device": "phone", "state": "acked"}, {"device": "laptop", "state": "acked"}]},
            {"seq": 2, "time": t[1], "from": from, "id": "m2", "body": "are you there?",
             "receipt": "acked",
             "devices": [{"device": "phone", "state": "acked"}, {"device": "laptop", "state": "unread"}]},
            {"seq": 3, "time": t[2], "from": from, "id": "m3", "body": LONG_SHORT,
             "receipt": "waiting",
             "devices": [{"device": "phone", "state": "pending"}, {"device": "laptop", "state": "unread"}]},
        ]})
    );
    assert!(t[0] <= t[1] && t[1] <= t[2], "log times in order: {t:?}");
    let log_table = ok(rt, &["log", "bob@localhost"]);
    assert_eq!(
        log_table,
        format!(
            "user bob@localhost  head 3\n\
             SEQ  TIME                      FROM                   ID  RECEIPT  DEVICES                      BODY\n\
             1    {}  alice@localhost/Spark  m1  acked    phone=acked laptop=acked     hello bob\n\
             2    {}  alice@localhost/Spark  m2  acked    phone=acked laptop=unread    are you there?\n\
             3    {}  alice@localhost/Spark  m3  waiting  phone=pending laptop=unread  {LONG_SHORT}\n",
            t[0], t[1], t[2]
        )
    );
    // --after and --limit select a window of the log.
    let window = ok_json(
        rt,
        &["log", "bob@localhost", "--after", "1", "--limit", "1"],
    );
    assert_eq!(window["head"], 3);
    assert_eq!(window["messages"].as_array().unwrap().len(), 1, "{window}");
    assert_eq!(window["messages"][0]["id"], "m2");
    assert_eq!(
        ok_json(rt, &["log", "bob@localhost", "--after", "3"])["messages"],
        json!([])
    );

    // unread: the laptop missed m2 and m3; the phone has m3 (delivered, not acked).
    let m2 = json!({"seq": 2, "time": t[1], "from": from, "id": "m2", "body": "are you there?"});
    let m3 = json!({"seq": 3, "time": t[2], "from": from, "id": "m3", "body": LONG_SHORT});
    let unread_laptop_json = ok(rt, &["unread", "bob@localhost", "laptop", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&unread_laptop_json).unwrap(),
        json!({"user": "bob@localhost", "device": "laptop", "unread": 2, "messages": [m2, m3]})
    );
    let unread_laptop_table = ok(rt, &["unread", "bob@localhost", "laptop"]);
    assert_eq!(
        unread_laptop_table,
        format!(
            "user bob@localhost  device laptop  unread 2\n\
             SEQ  TIME                      FROM                   ID  BODY\n\
             2    {}  alice@localhost/Spark  m2  are you there?\n\
             3    {}  alice@localhost/Spark  m3  {LONG_SHORT}\n",
            t[1], t[2]
        )
    );
    // --limit caps the list, not the count.
    assert_eq!(
        ok_json(rt, &["unread", "bob@localhost", "laptop", "--limit", "1"]),
        json!({"user": "bob@localhost", "device": "laptop", "unread": 2, "messages": [m2]})
    );
    let unread_phone_json = ok(rt, &["unread", "bob@localhost", "phone", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&unread_phone_json).unwrap(),
        json!({"user": "bob@localhost", "device": "phone", "unread": 1, "messages": [m3]})
    );
    let unread_phone_table = ok(rt, &["unread", "bob@localhost", "phone"]);
    assert_eq!(
        unread_phone_table,
        format!(
            "user bob@localhost  device phone  unread 1\n\
             SEQ  TIME                      FROM                   ID  BODY\n\
             3    {}  alice@localhost/Spark  m3  {LONG_SHORT}\n",
            t[2]
        )
    );

    Views {
        cursors_json,
        cursors_table,
        unread_laptop_json,
        unread_laptop_table,
        unread_phone_json,
        unread_phone_table,
        log_json,
        log_table,
    }
}

/// `stats` in both forms. `devices` is what is left after the `forget`s so far.
fn check_stats(rt: &Readtrack, running: bool, devices: u64) {
    let s = ok_json(rt, &["stats"]);
    let store_bytes = s["store_bytes"].as_u64().expect("store_bytes");
    assert!(store_bytes > 0, "{s}");
    let uptime = if running {
        json!(s["uptime_secs"].as_u64().expect("uptime while running"))
    } else {
        Value::Null
    };
    // The live counters: the link's and the rate limiter's while running, null otherwise.
    let (skipped, suppressed, warnings) = if running {
        let warnings = s["warnings"].clone();
        let kinds = warnings.as_object().expect("warnings by kind");
        assert_eq!(kinds.len(), 10, "{warnings}");
        for (kind, counts) in kinds {
            assert!(counts["seen"].is_u64(), "{kind}: {counts}");
            assert_eq!(counts["suppressed"], 0, "{kind}: {counts}");
        }
        (json!(0), json!(0), warnings)
    } else {
        (Value::Null, Value::Null, Value::Null)
    };
    assert_eq!(
        s,
        json!({"service_running": running, "uptime_secs": uptime, "users": 3, "devices": devices,
               "messages": 6, "pending_timers": 1, "logged": 6, "replays": 0, "bounces": 0,
               "receipts_accepted": 3, "receipts_duplicate": 0, "receipts_rejected": 0,
               "messages_deleted": 0, "devices_expired": 0, "replays_truncated": 0,
               "timers_refused": 0, "given_back": 0, "device_key_merges": 0, "users_purged": 0,
               "devices_evicted": 0, "log_limit_given_back": 0, "sent_not_logged": 0,
               "store_bytes": store_bytes, "stanzas_skipped": skipped,
               "warnings_suppressed": suppressed, "warnings": warnings})
    );
    let table = ok(rt, &["stats"]);
    let lines: Vec<&str> = table.lines().collect();
    // Uptime and size change between two calls: matched by shape, the rest exactly.
    let (yes_no, uptime_ok): (&str, fn(&str) -> bool) = if running {
        ("yes", |v| v.parse::<u64>().is_ok())
    } else {
        ("no", |v| v == "-")
    };
    assert_eq!(lines.len(), 26, "{table}");
    assert_eq!(lines[0], "STAT                  VALUE");
    assert_eq!(lines[1], format!("service_running       {yes_no}"));
    let uptime_cell = lines[2]
        .strip_prefix("uptime_secs           ")
        .unwrap_or("?");
    assert!(uptime_ok(uptime_cell), "uptime: {table}");
    assert_eq!(
        lines[3..23],
        [
            "users                 3".to_string(),
            format!("devices               {devices}"),
            "messages              6".to_string(),
            "pending_timers        1".to_string(),
            "logged                6".to_string(),
            "replays               0".to_string(),
            "bounces               0".to_string(),
            "receipts_accepted     3".to_string(),
            "receipts_duplicate    0".to_string(),
            "receipts_rejected     0".to_string(),
            "messages_deleted      0".to_string(),
            "devices_expired       0".to_string(),
            "replays_truncated     0".to_string(),
            "timers_refused        0".to_string(),
            "given_back            0".to_string(),
            "device_key_merges     0".to_string(),
            "users_purged          0".to_string(),
            "devices_evicted       0".to_string(),
            "log_limit_given_back  0".to_string(),
            "sent_not_logged       0".to_string(),
        ]
    );
    let size_cell = lines[23]
        .strip_prefix("store_bytes           ")
        .unwrap_or("?");
    assert!(size_cell.parse::<u64>().is_ok(), "store_bytes: {table}");
    let live = if running { "0" } else { "-" };
    assert_eq!(
        lines[24..],
        [
            format!("stanzas_skipped       {live}"),
            format!("warnings_suppressed   {live}"),
        ]
    );
}

/// A malformed JID, a full JID, an unknown user and an unknown device: status 2, one line.
fn check_operator_errors(rt: &Readtrack) {
    assert_eq!(
        fails(rt, &["cursors", "bad jid@@"], 2),
        r#"readtrack: "bad jid@@" is not a JID: JID "bad jid@@" cannot be prepared (stringprep): prohibited character ` `"#
    );
    assert_eq!(
        fails(rt, &["log", "bob@localhost/phone", "--json"], 2),
        "readtrack: bob@localhost/phone is not a bare user JID (user@domain)"
    );
    assert_eq!(
        fails(rt, &["cursors", "localhost"], 2),
        "readtrack: localhost is not a bare user JID (user@domain)"
    );
    assert_eq!(
        fails(rt, &["cursors", "mallory@localhost"], 2),
        "readtrack: unknown user mallory@localhost"
    );
    assert_eq!(
        fails(rt, &["unread", "mallory@localhost", "phone", "--json"], 2),
        "readtrack: unknown user mallory@localhost"
    );
    assert_eq!(
        fails(rt, &["unread", "bob@localhost", "tablet"], 2),
        r#"readtrack: user bob@localhost has no device "tablet" (devices: phone, laptop)"#
    );
    assert_eq!(
        fails(rt, &["forget", "bob@localhost", "tablet", "--json"], 2),
        r#"readtrack: user bob@localhost has no device "tablet" (devices: phone, laptop)"#
    );
}

/// Forgets `device` of carol in table or JSON form, then checks it is gone and that forgetting
/// it again is an operator error naming the devices left.
fn check_forget(rt: &Readtrack, device: &str, json_form: bool, left: &[&str]) {
    if json_form {
        assert_eq!(
            ok(rt, &["forget", "carol@localhost", device, "--json"]),
            format!(
                "{{\n  \"user\": \"carol@localhost\",\n  \"device\": \"{device}\",\n  \"forgotten\": true\n}}\n"
            )
        );
    } else {
        assert_eq!(
            ok(rt, &["forget", "carol@localhost", device]),
            format!("forgot device {device} of carol@localhost\n")
        );
    }
    assert_eq!(
        device_names(&ok_json(rt, &["cursors", "carol@localhost"])),
        left
    );
    let again = fails(rt, &["forget", "carol@localhost", device], 2);
    assert_eq!(
        again,
        format!(
            "readtrack: user carol@localhost has no device {device:?} (devices: {})",
            if left.is_empty() {
                "none".to_string()
            } else {
                left.join(", ")
            }
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_live_and_on_the_stopped_store() {
    let p = server();
    // A long receipt timeout keeps m3 "waiting" (no bounce) for the whole test.
    let mut rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            timeout: "60s",
            ..ReadtrackOpts::default()
        },
    );
    // carol's four devices exist only to be forgotten (two live, two on the stopped store).
    for r in ["c1", "c2", "c3", "c4"] {
        let mut c = online(&p, "carol", r).await;
        c.close().await;
    }
    let mut phone = online(&p, "bob", "phone").await;
    let mut laptop = online(&p, "bob", "laptop").await;
    let mut alice = online(&p, "alice", "Spark").await;

    // m1 reaches both devices; both ack it.
    alice
        .send_raw(&chat("m1", "bob@localhost", "hello bob"))
        .await;
    phone.expect_message(WAIT, |s| has_id(s, "m1")).await;
    laptop.expect_message(WAIT, |s| has_id(s, "m1")).await;
    phone.send_raw(&crs_receipt("m1")).await;
    laptop.send_raw(&crs_receipt("m1")).await;
    rt.wait_acked("bob@localhost", "phone", 1);
    rt.wait_acked("bob@localhost", "laptop", 1);
    // The laptop goes away: m2 and m3 stay unread for it.
    laptop.close().await;
    alice
        .send_raw(&chat("m2", "bob@localhost", "are you there?"))
        .await;
    phone.expect_message(WAIT, |s| has_id(s, "m2")).await;
    phone.send_raw(&crs_receipt("m2")).await;
    rt.wait_acked("bob@localhost", "phone", 2);
    // m3 is written to the phone, which does not ack it: pending.
    alice
        .send_raw(&chat("m3", "bob@localhost", LONG_BODY))
        .await;
    phone.expect_message(WAIT, |s| has_id(s, "m3")).await;
    alice.expect_message(WAIT, |s| has_id(s, "m3")).await; // its 10013: m3 is logged

    // ---- live, through the admin socket ----
    let live = check_views(&rt);
    check_stats(&rt, true, 7);
    check_operator_errors(&rt);
    check_forget(&rt, "c1", false, &["c2", "c3", "c4"]);
    check_forget(&rt, "c2", true, &["c3", "c4"]);
    check_stats(&rt, true, 5);

    // ---- stopped: the CLI opens the store directly ----
    let status = rt.stop();
    assert!(status.success(), "clean stop: {status}");
    assert!(
        !rt.socket_path().exists(),
        "the admin socket is removed on a clean exit"
    );
    let stopped = check_views(&rt);
    // The stopped store answers exactly what the service answered.
    assert_eq!(stopped.cursors_json, live.cursors_json);
    assert_eq!(stopped.cursors_table, live.cursors_table);
    assert_eq!(stopped.unread_laptop_json, live.unread_laptop_json);
    assert_eq!(stopped.unread_laptop_table, live.unread_laptop_table);
    assert_eq!(stopped.unread_phone_json, live.unread_phone_json);
    assert_eq!(stopped.unread_phone_table, live.unread_phone_table);
    assert_eq!(stopped.log_json, live.log_json);
    assert_eq!(stopped.log_table, live.log_table);
    check_stats(&rt, false, 5);
    check_operator_errors(&rt);
    check_forget(&rt, "c3", false, &["c4"]);
    check_forget(&rt, "c4", true, &[]);
    assert_eq!(
        ok(&rt, &["cursors", "carol@localhost"]),
        "user carol@localhost  head 0\n\
         DEVICE  RESOURCE  ACKED_UPTO  UNREAD  PENDING  ONLINE  LAST_SEEN\n"
    );
    check_stats(&rt, false, 3);
    // purge on the stopped store: carol (no device left, no message) goes entirely.
    assert_eq!(
        ok(&rt, &["purge", "carol@localhost"]),
        "purged carol@localhost: 0 messages, 0 devices, 0 timers\n"
    );
    failure(
        &rt.cli(&["cursors", "carol@localhost"]),
        2,
        "cursors of a purged user",
    );

    // What was forgotten on the stopped store stays forgotten when the service comes back.
    rt.start_again();
    failure(
        &rt.cli(&["cursors", "carol@localhost"]),
        2,
        "cursors of a user purged on the stopped store",
    );
    assert_eq!(ok_json(&rt, &["stats"])["service_running"], true);
    // purge live: bob's log (m1..m3), both devices and m3's receipt timer go, durably.
    let purged = ok_json(&rt, &["purge", "Bob@LocalHost"]);
    assert_eq!(
        purged,
        serde_json::json!({"user": "bob@localhost", "purged": true, "messages": 3, "devices": 2, "timers": 1})
    );
    failure(
        &rt.cli(&["log", "bob@localhost"]),
        2,
        "log of a purged user",
    );
    assert_eq!(ok_json(&rt, &["stats"])["users_purged"], 2);
    let status = rt.stop();
    assert!(status.success(), "clean stop: {status}");
    failure(
        &rt.cli(&["log", "bob@localhost"]),
        2,
        "log of a purged user, after a restart",
    );
}

/// A config whose socket and store do not exist: the error names both paths.
#[test]
fn neither_socket_nor_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("readtrack.toml");
    std::fs::write(
        &config,
        "[xmpp]\ndomain = \"localhost\"\ncomponent = \"readtrack.localhost\"\nsecret = \"x\"\n\n\
         [store]\npath = \"no-such-store\"\n\n[admin]\nsocket = \"no-such.sock\"\n",
    )
    .unwrap();
    let socket = dir.path().join("no-such.sock");
    let store = dir.path().join("no-such-store");
    for args in [
        &["cursors", "bob@localhost"][..],
        &["unread", "bob@localhost", "phone", "--json"],
        &["log", "bob@localhost"],
        &["forget", "bob@localhost", "phone"],
        &["stats", "--json"],
    ] {
        let out = Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let line = failure(&out, 1, &format!("{args:?}"));
        assert!(
            line.contains(&socket.display().to_string())
                && line.contains(&store.display().to_string()),
            "{args:?}: names the socket and the store tried: {line}"
        );
    }
    assert!(!store.exists(), "a missing store is not created by the CLI");
    // A config that cannot be read is an operator error too.
    let out = Command::new(binary())
        .args(["stats", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    let line = failure(&out, 2, "missing config");
    assert!(line.contains("missing.toml"), "{line}");
}

/// Sends raw bytes on the admin socket and returns whatever comes back before the service closes
/// the connection. A write error is fine: the service may close after reading its limit.
fn raw_exchange(socket: &std::path::Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).expect("connect to the admin socket");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    // Then end our side, so an unterminated request reaches the service as complete.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    // ECONNRESET after an unread oversize line counts as a closed connection.
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn assert_malformed(answer: &str, what: &str) {
    let v: Value = serde_json::from_str(answer.trim())
        .unwrap_or_else(|e| panic!("{what}: answer is not JSON ({e}): {answer:?}"));
    assert_eq!(v["status"], 2, "{what}: {v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("malformed request")),
        "{what}: {v}"
    );
    assert_eq!(v.as_object().unwrap().len(), 2, "{what}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_is_private_and_survives_junk() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions and only reads the process's credentials.
        unsafe { libc::geteuid() },
        0,
        "this test runs the CLI as `nobody` through runuser and must run as root (as in CI)"
    );
    let p = server();
    let rt = Readtrack::start(&p, ReadtrackOpts::default());
    let socket = rt.socket_path();

    // ---- mode 0600 ----
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "{socket:?} is a socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");

    // ---- another user of the machine cannot use it ----
    // Everything but the socket is opened up to `nobody`: the directory is traversable and a
    // copy of the config readable, so what stops nobody is the socket's own mode.
    let dir = socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("nobody.toml");
    std::fs::copy(rt.config_path(), &config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(binary())
        .args(["stats", "--config"])
        .arg(&config)
        .output()
        .expect("run runuser");
    let line = failure(&out, 1, "stats as nobody");
    assert!(
        line == format!(
            "readtrack: permission denied on the admin socket {} (Permission denied (os error 13)): \
             run the CLI as the user that runs `readtrack serve`",
            socket.display()
        ),
        "nobody is refused by the socket's mode: {line}"
    );
    // Same config as root: the refusal above was about the user, not the config.
    let root = Command::new(binary())
        .args(["stats", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(root.status.success(), "{}", text(&root.stderr));

    // ---- junk on the socket ----
    assert_malformed(&raw_exchange(&socket, b"hello\n"), "not JSON");
    assert_malformed(&raw_exchange(&socket, b"\xff\xfe\x00junk\n"), "not UTF-8");
    assert_malformed(
        &raw_exchange(&socket, b"{\"cmd\":\"drop_everything\"}\n"),
        "unknown command",
    );
    assert_malformed(
        &raw_exchange(
            &socket,
            b"{\"cmd\":\"cursors\",\"jid\":\"bob@localhost\",\"extra\":1}\n",
        ),
        "unknown field",
    );
    assert_malformed(&raw_exchange(&socket, b""), "empty request");
    // Over 64 KiB without a newline: a malformed-request answer or a closed connection.
    let oversize = vec![b'x'; 200 * 1024];
    let answer = raw_exchange(&socket, &oversize);
    if !answer.is_empty() {
        assert_malformed(&answer, "oversize line");
    }
    // An oversize line that is valid JSON up to the limit is cut there, never executed.
    let mut big_json = b"{\"cmd\":\"stats\",\"pad\":\"".to_vec();
    big_json.extend(vec![b'y'; 100 * 1024]);
    big_json.extend(b"\"}\n");
    let answer = raw_exchange(&socket, &big_json);
    if !answer.is_empty() {
        assert_malformed(&answer, "oversize JSON");
    }

    // The service still answers a proper request, on the socket and through the CLI.
    let answer = raw_exchange(&socket, b"{\"cmd\":\"stats\"}\n");
    let v: Value = serde_json::from_str(answer.trim()).expect("stats answer");
    assert_eq!(v["ok"]["service_running"], true, "{v}");
    assert_eq!(ok_json(&rt, &["stats"])["service_running"], true);
}

/// The admin socket's path names a file that is not a socket (a typo in the config, someone
/// else's file): `serve` refuses to start rather than delete it.
#[test]
fn serve_refuses_to_remove_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("readtrack.toml");
    std::fs::write(
        &config,
        "[xmpp]\ndomain = \"localhost\"\ncomponent = \"readtrack.localhost\"\nsecret = \"x\"\n\
         connect = \"127.0.0.1:9\"\n\n[store]\npath = \"data\"\n\n[admin]\nsocket = \"precious.txt\"\n",
    )
    .unwrap();
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "not yours").unwrap();
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    // `serve` logs to stderr before it fails; its error is the last line.
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        format!(
            "readtrack: admin socket path {} exists and is not a socket; refusing to remove it",
            precious.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "not yours");
}

/// The CLI on a stopped store may create files in it (sled writes a new snapshot when the
/// store is closed): they are as private as those the service creates, whatever the
/// operator's umask.
#[test]
fn cli_on_a_stopped_store_creates_only_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("readtrack.toml");
    std::fs::write(
        &config,
        "[xmpp]\ndomain = \"localhost\"\ncomponent = \"readtrack.localhost\"\nsecret = \"x\"\n\n\
         [store]\npath = \"data\"\n\n[admin]\nsocket = \"readtrack.sock\"\n",
    )
    .unwrap();
    let store = dir.path().join("data");
    // Made by this test process (umask 022 or so), not by readtrack.
    drop(
        readtrack::store::Store::open(&store, &readtrack::store::StoreOptions::default()).unwrap(),
    );
    let before: std::collections::BTreeSet<_> = walk(&store).into_iter().collect();
    for args in [
        &["forget", "bob@localhost", "phone"][..],
        &["stats", "--json"],
    ] {
        let _ = Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
    }
    let created: Vec<_> = walk(&store)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(
        !created.is_empty(),
        "the CLI created nothing: the test proves nothing"
    );
    for path in created {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

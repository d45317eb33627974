//! Interop: readtrack as the users of a maintained XMPP client library see it. Each test starts
//! a real Prosody with the modules an operator of modern clients runs (mod_mam, mod_carbons,
//! mod_smacks, mod_blocklist) and mod_readtrack, the real `readtrack` binary with its default
//! dialect, and runs a scenario of tests/interop/scenarios.py: slixmpp clients (pinned in
//! tests/interop/requirements.txt) on plain TCP to loopback. The scenario checks what the
//! clients receive and prints one JSON object per line; this side does what needs the server
//! (deleting an account, stopping readtrack, reading readtrack's log) and fails with the
//! scenario's report when it fails.
//!
//! `scripts/test` creates the virtualenv and exports `READTRACK_INTEROP_PYTHON`; without it
//! these tests fail and say so.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::daemon::{Readtrack, ReadtrackOpts};
use common::{Prosody, ProsodyOpts};

const PYTHON_VAR: &str = "READTRACK_INTEROP_PYTHON";
const SETUP_HINT: &str = "run scripts/test: it creates target/interop-venv with the slixmpp \
     pinned in tests/interop/requirements.txt and exports READTRACK_INTEROP_PYTHON (or set that \
     variable to such a virtualenv's python yourself)";
const PASSWORD: &str = "pw";
/// A scenario budgets 40 s for itself (tests/interop/harness.py); this is the backstop.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);
/// Matches the receipt timeout readtrack is configured with here.
const RECEIPT_TIMEOUT_S: u64 = 2;

fn python() -> PathBuf {
    let path = std::env::var_os(PYTHON_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{PYTHON_VAR} is not set: {SETUP_HINT}"));
    assert!(
        path.is_file(),
        "{PYTHON_VAR}={} does not exist: {SETUP_HINT}",
        path.display()
    );
    path
}

fn scenarios_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/scenarios.py")
}

/// A Prosody with the modules of a modern deployment and the usual accounts.
fn server() -> Prosody {
    let p = Prosody::start(ProsodyOpts::modern());
    for user in ["alice", "bob", "carol", "mallory"] {
        p.register(user, PASSWORD);
    }
    p
}

/// readtrack as an operator starts it: default dialect, a short receipt timeout.
fn readtrack_opts() -> ReadtrackOpts {
    ReadtrackOpts {
        dialect: "",
        timeout: "2s",
        ..ReadtrackOpts::default()
    }
}

fn readtrack(p: &Prosody) -> Readtrack {
    Readtrack::start(p, readtrack_opts())
}

/// Runs scenario `name` against `p` and returns its JSON lines; panics with its whole report
/// unless it exits 0 having passed at least one check.
#[track_caller]
fn scenario(p: &Prosody, name: &str, params: Value) -> Vec<Value> {
    match run_scenario(p, name, params) {
        Ok(lines) => lines,
        Err(report) => panic!("{report}"),
    }
}

/// Runs scenario `name`: its JSON lines when it passed, else its whole report.
fn run_scenario(p: &Prosody, name: &str, params: Value) -> Result<Vec<Value>, String> {
    let python = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(&python)
        .arg(scenarios_py())
        .arg(name)
        .env("INTEROP_HOST", "127.0.0.1")
        .env("INTEROP_PORT", p.c2s_port.to_string())
        .env("INTEROP_DOMAIN", p.domain())
        .env("INTEROP_PASSWORD", PASSWORD)
        .env("INTEROP_PARAMS", params.to_string())
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("run {} ({e}): {SETUP_HINT}", python.display()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SCENARIO_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({"event": "text", "text": l})))
        .collect();
    let verdict = lines
        .iter()
        .rev()
        .find(|l| matches!(l["event"].as_str(), Some("pass" | "fail" | "setup-error")));
    // Shown with --nocapture (and by the test runner for a failing test).
    eprintln!(
        "--- scenario {name} ({:.1} s) ---\n{stdout}{stderr}",
        started.elapsed().as_secs_f64()
    );
    let passed = status.is_some_and(|s| s.success())
        && verdict.is_some_and(|v| v["event"] == "pass" && v["checks"].as_u64() > Some(0));
    if !passed {
        let summary = match verdict {
            Some(v) if v["event"] == "setup-error" => {
                v["error"].as_str().unwrap_or_default().to_string()
            }
            Some(v) => serde_json::to_string_pretty(v).unwrap(),
            None => "no verdict".to_string(),
        };
        let status = status.map_or(format!("killed after {SCENARIO_LIMIT:?}"), |s| {
            s.to_string()
        });
        return Err(format!(
            "interop scenario {name:?} failed ({status}, {:.1} s)\n{summary}\n\
             --- scenario stdout ---\n{stdout}\n--- scenario stderr ---\n{stderr}",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(lines)
}

/// The `id`s of the messages readtrack's log holds for `user` (`readtrack log USER --json`).
fn logged_ids(rt: &Readtrack, user: &str) -> Vec<String> {
    let out = rt.cli(&["log", user, "--json"]);
    assert!(
        out.status.success(),
        "readtrack log {user}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let log: Value = serde_json::from_slice(&out.stdout).expect("log --json is JSON");
    log["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {log}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The message path (issue 12)

#[test]
fn a_chat_to_an_offline_user_reaches_each_of_his_devices_once_with_a_delay() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "offline-chat-two-devices", json!({}));
}

#[test]
fn encrypted_file_link_marker_and_origin_id_reach_both_devices_of_an_offline_user_intact() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "rich-offline", json!({}));
}

#[test]
fn encrypted_file_link_marker_and_origin_id_delivered_live_reach_a_later_device_intact() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "rich-live", json!({}));
}

#[test]
fn a_reaction_without_a_body_reaches_both_devices_of_an_offline_user() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "reaction-offline", json!({}));
}

#[test]
fn a_replay_carries_the_id_a_mam_query_returns_for_the_same_message() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "mam-id", json!({}));
}

#[test]
fn a_message_a_device_had_as_a_received_carbon_is_not_replayed_to_it() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "carbon-received", json!({}));
}

#[test]
fn a_message_a_device_had_as_a_sent_carbon_is_not_replayed_to_it_and_a_new_device_gets_it() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "carbon-sent", json!({}));
}

#[test]
fn a_device_that_resumes_its_stream_gets_each_message_once_and_nothing_from_offline_storage() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "smacks-resume", json!({}));
}

#[test]
fn a_device_whose_hibernation_times_out_gets_its_unacked_messages_once_at_the_next_login() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(
        &p,
        "smacks-timeout",
        json!({"hibernation": p.opts.smacks_hibernation_time}),
    );
}

#[test]
fn the_first_device_after_an_absence_gets_every_message_not_only_the_history_window() {
    let p = server();
    let _rt = Readtrack::start(
        &p,
        ReadtrackOpts {
            history: 5,
            ..readtrack_opts()
        },
    );
    scenario(&p, "first-device-after-absence", json!({"count": 20}));
}

#[test]
fn a_standard_client_gets_no_seed_ack_and_no_bounce_with_the_default_dialect() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(
        &p,
        "standard-sender",
        json!({"receipt_timeout": RECEIPT_TIMEOUT_S}),
    );
}

// ---------------------------------------------------------------------------------------------
// The server's policies (issue 13)

#[test]
fn a_message_from_a_blocked_sender_is_neither_logged_nor_replayed() {
    let p = server();
    let rt = readtrack(&p);
    // The log is checked whatever bob's devices saw, so a failure reports both.
    let outcome = run_scenario(&p, "block-then-message", json!({}));
    let ids = logged_ids(&rt, "bob@localhost");
    assert!(
        ids.contains(&"ctl-1".to_string()),
        "alice's message is logged: {ids:?}"
    );
    assert!(
        !ids.contains(&"blk-1".to_string()),
        "mallory's message, which mod_blocklist refused, is in readtrack's log: {ids:?}\n{}",
        outcome.as_ref().err().map_or("", String::as_str)
    );
    if let Err(report) = outcome {
        panic!("{report}");
    }
}

#[test]
fn a_message_logged_before_its_sender_was_blocked_is_not_replayed() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "message-then-block", json!({}));
}

#[test]
fn a_message_after_the_sender_is_unblocked_is_delivered() {
    let p = server();
    let _rt = readtrack(&p);
    scenario(&p, "unblock-then-message", json!({}));
}

/// Old bob had old-1 (seen live) and old-2 (offline); `prosodyctl deluser` and a new `bob`.
fn delete_and_register_again(readtrack_running: bool) {
    let p = server();
    let mut rt = readtrack(&p);
    scenario(&p, "deletion-before", json!({}));
    let ids = logged_ids(&rt, "bob@localhost");
    assert!(
        ids.contains(&"old-1".to_string()) && ids.contains(&"old-2".to_string()),
        "the old account's messages are logged before the deletion: {ids:?}"
    );
    if !readtrack_running {
        rt.stop();
    }
    p.deluser("bob");
    p.register("bob", PASSWORD);
    if !readtrack_running {
        rt.start_again();
    }
    scenario(&p, "deletion-after", json!({}));
}

#[test]
fn an_account_deleted_while_readtrack_runs_and_registered_again_gets_none_of_the_old_messages() {
    delete_and_register_again(true);
}

#[test]
fn an_account_deleted_while_readtrack_is_stopped_and_registered_again_gets_none_of_the_old_messages(
) {
    delete_and_register_again(false);
}

/// Account names as typed at registration; Prosody's nodeprep makes each the account noted
/// beside it.
const NAMES: [&str; 8] = [
    "ÖSTEN",    // östen: case folded
    "Straße",   // strasse: ß folds to ss (Unicode lowercasing keeps ß)
    "ｆｕｌｌ", // full: fullwidth forms, NFKC
    "ΟΔΟΣ",     // οδοσ: stringprep folds Σ to σ even at the end, not to ς
    "λόγος",    // λόγοσ: a final sigma folds to σ
    "İnci",     // i̇nci: U+0130 folds to i + U+0307
    "ǅemal",    // džemal: titlecase ǅ folds to ǆ, which NFKC splits
    "Ꭰcher",    // kept: stringprep (Unicode 3.2) does not fold Cherokee, Unicode 8 lowercases it
];

fn server_with_names() -> Prosody {
    let p = server();
    for name in NAMES {
        p.register(name, PASSWORD);
    }
    p
}

#[test]
fn accounts_whose_names_stringprep_keeps_or_folds_get_their_replays() {
    let p = server_with_names();
    let _rt = readtrack(&p);
    scenario(&p, "unusual-names", json!({ "names": NAMES }));
}

#[test]
fn the_cli_finds_each_account_by_its_name_as_typed() {
    let p = server_with_names();
    let rt = readtrack(&p);
    scenario(&p, "send-to-names", json!({ "names": NAMES }));
    let mut wrong = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let jid = format!("{name}@{}", p.domain());
        let out = rt.cli(&["log", &jid, "--json"]);
        let found = out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|log| {
                log["messages"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["id"] == format!("name-{i}")))
            });
        if !found {
            wrong.push(format!(
                "readtrack log {jid:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the CLI prepares a JID as the server does (nodeprep), so each account is found by \
         its name as typed:\n{}",
        wrong.join("\n")
    );
}

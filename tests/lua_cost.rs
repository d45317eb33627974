//! The Lua cost benches of benches/prosody (`chat_cost.lua`, `event_cost.lua`, `ack_cost.lua`,
//! `deliver_cost.lua`)
//! load the real contrib/prosody/mod_readtrack.lua under `stub_prosody.lua`, so a module change
//! is measured as it is, never a copy of it; this runs them, small, on both Prosody lines, so a
//! module change that breaks them (or the stub) fails here. Their own assertions check what they
//! measure: one `<routed>` per delivered message, the same event either way, the acks and bounces
//! written, the compact acks written once per sender and command message, and every replay
//! written, the compact ones once per command message.

mod common;

use std::path::{Path, PathBuf};

fn run(script: &str, sources: &Path, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("lua5.4")
        .arg(root.join("benches/prosody").join(script))
        .arg(sources)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("lua5.4 ({e}): apt-get install -y lua5.4 (Prosody's Lua)"));
    assert!(
        out.status.success(),
        "{script} on {}: {}",
        sources.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn lines() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        PathBuf::from("/usr/bin/prosody"),
        root.join("target/prosody13/usr/bin/prosody"),
    ]
    .iter()
    .map(|launcher| common::prosody_sources(launcher))
    .collect()
}

#[test]
fn the_lua_cost_benches_run_the_real_module_on_both_lines() {
    for sources in lines() {
        let events = run("event_cost.lua", &sources, &["64"]);
        assert_eq!(events.lines().count(), 2, "{events}");
        let acks = run("ack_cost.lua", &sources, &["256"]);
        assert!(acks.contains("compact <ack> 8 "), "{acks}");
        let replays = run("deliver_cost.lua", &sources, &["600"]);
        assert!(
            replays.contains("compact <deliver-bytes> 5 (one per command message, 5)"),
            "{replays}"
        );
    }
}

/// The load bench's chat flow through the module (a chat message asking for a receipt, the
/// XEP-0184 receipt back, the seed ack): one `<routed>` per message and per receipt, one compact
/// `<signal>` per receipt, and no whole `<sent>` (a message asking for a receipt is reported by
/// its `<routed sent='true'>` alone). The events of one turn of Prosody's loop (here eight
/// stanzas) go to readtrack in one write: 100 messages and 100 receipts are 26 writes, not 300.
#[test]
fn the_load_benchs_chat_flow_sends_no_whole_sent_event() {
    for sources in lines() {
        for dialect in ["seed", "xep"] {
            let out = run("chat_cost.lua", &sources, &["100", dialect]);
            let events = out
                .split("events: ")
                .nth(1)
                .unwrap_or_else(|| panic!("{out}"))
                .trim();
            assert_eq!(events, "account 2, routed 200, signal 100", "{out}");
            assert!(out.contains("; 26 writes to readtrack;"), "{out}");
        }
    }
}

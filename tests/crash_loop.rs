//! Crash loop: the real `readtrack serve` beside a real Prosody under a steady message load, killed
//! with SIGKILL at seeded random moments and started again, many times. At the end the run is
//! judged from the clients' side against the promise of the 10013 ack (`at-least-once` and
//! `bounce-on-timeout` in docs/rules.md):
//!
//! - every message whose sender got a 10013 ack reached every device of its recipient at least
//!   once, live or replayed, somewhere in the run;
//! - no device cursor (`acked_upto`) and no user head ever moved backwards, sampled through
//!   `readtrack cursors --json` while the service runs;
//! - no receipt timer was lost: a "late" message (one no device acks before its bounce) that got
//!   a 10013 bounced exactly once; no message bounced twice.
//!
//! Load: senders `s0..s2` send to recipients `r0..r2`; each recipient has two devices (`d0`,
//! `d1`) that come and go (a clean close, or a dropped connection that loses what was in
//! flight) and ack what they receive. A quarter of the messages are "late": devices withhold
//! their ack until the sender has seen the bounce, so the 1 s receipt timers must fire, across
//! restarts too. Senders stay online for the whole run (checked every cycle), because a bounce
//! written to a sender that is offline is not stored anywhere a test could count it.
//!
//! On PostgreSQL (`READTRACK_TEST_BACKEND=postgres`, the cluster of `scripts/postgres`), every
//! fifth cycle also restarts PostgreSQL itself (`pg_ctl restart -m fast`) in the middle of the
//! load, with readtrack running: readtrack must wait for it and carry on (an exit is counted, the
//! loop starts it again as after a crash, and the run fails); nothing acked may be lost, and
//! messages must be acked again after the restart.
//!
//! CI runs 20 cycles. The long run, with the figures printed:
//!
//! ```sh
//! READTRACK_CRASH_CYCLES=1000 cargo test --release --test crash_loop -- --nocapture
//! ```
//!
//! `READTRACK_CRASH_SEED=<u64>` replays a schedule: the seed fixes every choice (who sends to
//! whom, which device toggles, how long each cycle runs before the kill); the timing of the two
//! real processes still varies from run to run.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use common::daemon::{Readtrack, ReadtrackOpts};
use common::*;

const SENDERS: usize = 3;
const RECIPIENTS: usize = 3;
const DEVICES: [&str; 2] = ["d0", "d1"];
const SENDER_RESOURCE: &str = "load";
const PASSWORD: &str = "pw";
const DEFAULT_CYCLES: usize = 20;
/// readtrack's receipt timeout: short, so timers fire (and straddle kills) many times per run.
const RECEIPT_TIMEOUT: &str = "1s";
const RECEIPT_TIMEOUT_MS: u64 = 1000;
/// Share of messages whose ack every device withholds until the sender saw the bounce.
const LATE_PERCENT: u64 = 25;
/// The load phase of a cycle lasts a random time below this; the kill ends it.
const MAX_RUN: Duration = Duration::from_millis(800);
/// After the kill, load goes on (Prosody's fallback) for a random time below this.
const MAX_DOWN: Duration = Duration::from_millis(150);
/// Pause between two load steps: roughly 100 steps a second, most of them a message.
const STEP_PAUSE: Duration = Duration::from_millis(4);
/// Bound on the final phase (collecting replays and bounces after the last restart).
const FINAL_DEADLINE: Duration = Duration::from_secs(30);
/// On PostgreSQL, cycles `n` with `n % PG_RESTART_EVERY == PG_RESTART_AT` restart the database.
const PG_RESTART_EVERY: usize = 5;
const PG_RESTART_AT: usize = 3;
/// After restarting PostgreSQL, the load goes on this long before the cycle's kill: time for
/// readtrack to notice, reconnect or exit, and ack again.
const AFTER_PG_RESTART: Duration = Duration::from_millis(1500);

/// splitmix64: a seeded generator whose sequence cannot change under us with a dependency
/// upgrade, so a printed seed keeps meaning the same schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn duration_below(&mut self, limit: Duration) -> Duration {
        Duration::from_millis(self.below(limit.as_millis() as u64))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}"))
    })
}

fn sender_name(i: usize) -> String {
    format!("s{i}")
}

fn recipient_name(i: usize) -> String {
    format!("r{i}")
}

fn bare(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

fn is_server_ack(s: &str) -> bool {
    attr(s, "type").as_deref() == Some("crs")
        && attr(s, "from").as_deref() == Some(DOMAIN)
        && s.contains("10013")
}

fn is_bounce(s: &str) -> bool {
    attr(s, "type").as_deref() == Some("error")
        && s.contains("urn:xmpp:delay")
        && s.contains(">501</delay>")
}

struct Sent {
    sender: usize,
    recipient: usize,
    /// No device acks it before its bounce has reached the sender.
    late: bool,
}

struct Device {
    recipient: usize,
    resource: &'static str,
    client: Option<Client>,
    /// Every message id this device received, live or replayed, over the whole run.
    seen: HashSet<String>,
    /// Late ids received in the current session and not acked yet (their bounce is still due).
    withheld: HashSet<String>,
}

#[derive(Debug, Default)]
struct Figures {
    cycles: usize,
    sent: u64,
    sent_while_down: u64,
    server_acks: u64,
    server_ack_duplicates: u64,
    late_acked: u64,
    live_stanzas: u64,
    replay_stanzas: u64,
    device_acks: u64,
    bounces: u64,
    bounces_without_server_ack: u64,
    sender_errors: u64,
    device_errors: u64,
    device_sessions: u64,
    dropped_connections: u64,
    cursor_samples: u64,
    /// (device, acked message) pairs the check demanded, and how many were seen.
    deliveries_due: u64,
    deliveries_seen: u64,
    losses: u64,
    /// PostgreSQL restarts, and how often readtrack exited on its own after one.
    pg_restarts: u64,
    exits_after_pg_restart: u64,
    /// 10013 acks for messages sent after the latest PostgreSQL restart.
    acked_after_pg_restart: u64,
}

/// The PostgreSQL cluster this run's store lives in, when it is PostgreSQL: its port tells
/// `scripts/postgres` which cluster to restart.
fn postgres_port() -> Option<u16> {
    if !common::backend::on_postgres() {
        return None;
    }
    let url = std::env::var("READTRACK_TEST_PG_URL").expect(
        "READTRACK_TEST_BACKEND=postgres needs READTRACK_TEST_PG_URL: eval \"$(scripts/postgres start)\"",
    );
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("READTRACK_TEST_PG_URL={url:?} is not a postgres:// URL"));
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("READTRACK_TEST_PG_URL={url:?} names no port"));
    Some(port)
}

/// `pg_ctl restart -m fast` of the cluster `scripts/postgres` runs on `port`: every connection
/// is cut, the server shuts down cleanly and comes back.
fn restart_postgres(port: u16) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres");
    let out = std::process::Command::new(&script)
        .arg("restart")
        .env("READTRACK_PG_PORT", port.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/postgres restart (port {port}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct CrashLoop {
    seed: u64,
    /// `Some(port)` when the store is PostgreSQL.
    pg_port: Option<u16>,
    /// Message ids sent after the latest PostgreSQL restart.
    sent_after_pg_restart: HashSet<String>,
    rng: Rng,
    prosody: Prosody,
    readtrack: Readtrack,
    readtrack_up: bool,
    cycle: usize,
    senders: Vec<Client>,
    devices: Vec<Device>,
    next_id: u64,
    sent: BTreeMap<String, Sent>,
    server_acked: BTreeSet<String>,
    bounces: BTreeMap<String, u32>,
    /// Highest `acked_upto` sampled per (user, device), and highest head per user.
    cursor_high: BTreeMap<(String, String), u64>,
    head_high: BTreeMap<String, u64>,
    violations: Vec<String>,
    fig: Figures,
}

impl CrashLoop {
    async fn setup(seed: u64) -> CrashLoop {
        let prosody = Prosody::start(ProsodyOpts::default());
        for i in 0..SENDERS {
            prosody.register(&sender_name(i), PASSWORD);
        }
        for i in 0..RECIPIENTS {
            prosody.register(&recipient_name(i), PASSWORD);
        }
        let readtrack = Readtrack::start(
            &prosody,
            ReadtrackOpts {
                timeout: RECEIPT_TIMEOUT,
                ..ReadtrackOpts::default()
            },
        );
        let mut senders = Vec::new();
        for i in 0..SENDERS {
            let mut c = prosody
                .client(&sender_name(i), PASSWORD, SENDER_RESOURCE)
                .await;
            c.send_presence().await;
            c.sync().await;
            senders.push(c);
        }
        let mut run = CrashLoop {
            seed,
            pg_port: postgres_port(),
            sent_after_pg_restart: HashSet::new(),
            rng: Rng(seed),
            prosody,
            readtrack,
            readtrack_up: true,
            cycle: 0,
            senders,
            devices: Vec::new(),
            next_id: 0,
            sent: BTreeMap::new(),
            server_acked: BTreeSet::new(),
            bounces: BTreeMap::new(),
            cursor_high: BTreeMap::new(),
            head_high: BTreeMap::new(),
            violations: Vec::new(),
            fig: Figures::default(),
        };
        for recipient in 0..RECIPIENTS {
            for resource in DEVICES {
                run.devices.push(Device {
                    recipient,
                    resource,
                    client: None,
                    seen: HashSet::new(),
                    withheld: HashSet::new(),
                });
                let d = run.devices.len() - 1;
                run.connect(d).await;
            }
        }
        // Every device must be known before the first message: a device seen for the first time
        // later would start from the history window (`new-device-start`), not from the beginning.
        let deadline = Instant::now() + WAIT;
        for r in 0..RECIPIENTS {
            let user = bare(&recipient_name(r));
            loop {
                let known = run
                    .readtrack
                    .cursors_once_known(&user)
                    .map_or(0, |c| c["devices"].as_array().map_or(0, Vec::len));
                if known == DEVICES.len() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "devices of {user} not registered ({known} of them known)"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        run
    }

    fn violation(&mut self, what: String) {
        eprintln!("VIOLATION (cycle {}): {what}", self.cycle);
        self.violations.push(what);
    }

    async fn connect(&mut self, d: usize) {
        let device = &self.devices[d];
        let mut c = self
            .prosody
            .client(&recipient_name(device.recipient), PASSWORD, device.resource)
            .await;
        c.send_presence().await;
        self.devices[d].client = Some(c);
        self.fig.device_sessions += 1;
    }

    /// Takes a device offline: usually a clean close that reads everything the server wrote
    /// before its own close; sometimes a dropped connection, losing whatever was in flight, which
    /// readtrack believes delivered in that session and must replay in the next.
    async fn disconnect(&mut self, d: usize) {
        self.pump_device(d).await;
        let Some(mut c) = self.devices[d].client.take() else {
            return;
        };
        self.devices[d].withheld.clear();
        if self.rng.below(4) == 0 {
            self.fig.dropped_connections += 1;
            drop(c);
            return;
        }
        c.send_raw("</stream:stream>").await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match c.conn.next_item(left).await {
                // Whatever ack it owes is moot: the stream is closing; a replay will ask again.
                Some(Item::Stanza(s)) => {
                    let _owed = self.on_device_stanza(d, &s);
                }
                Some(Item::Close) | None => break,
                Some(Item::Open(o)) => panic!("unexpected stream restart: {o}"),
            }
        }
    }

    async fn toggle(&mut self, d: usize) {
        if self.devices[d].client.is_some() {
            self.disconnect(d).await;
        } else {
            self.connect(d).await;
        }
    }

    async fn send(&mut self) {
        let sender = self.rng.below(SENDERS as u64) as usize;
        let recipient = self.rng.below(RECIPIENTS as u64) as usize;
        let late = self.rng.below(100) < LATE_PERCENT;
        self.next_id += 1;
        let id = format!(
            "c{}-{}{}",
            self.cycle,
            self.next_id,
            if late { "-late" } else { "" }
        );
        let to = bare(&recipient_name(recipient));
        self.senders[sender]
            .send_raw(&chat(&id, &to, &format!("crash loop {id}")))
            .await;
        self.fig.sent += 1;
        if !self.readtrack_up {
            self.fig.sent_while_down += 1;
        }
        if self.fig.pg_restarts > 0 {
            self.sent_after_pg_restart.insert(id.clone());
        }
        self.sent.insert(
            id,
            Sent {
                sender,
                recipient,
                late,
            },
        );
    }

    /// Handles everything already received by every client, without waiting.
    async fn pump(&mut self) {
        for i in 0..SENDERS {
            while let Some(s) = self.senders[i].next_stanza(Duration::ZERO).await {
                self.on_sender_stanza(i, &s).await;
            }
        }
        for d in 0..self.devices.len() {
            self.pump_device(d).await;
        }
    }

    async fn pump_device(&mut self, d: usize) {
        loop {
            let Some(c) = self.devices[d].client.as_mut() else {
                return;
            };
            let Some(s) = c.next_stanza(Duration::ZERO).await else {
                return;
            };
            if let Some(ack) = self.on_device_stanza(d, &s) {
                self.devices[d]
                    .client
                    .as_mut()
                    .unwrap()
                    .send_raw(&ack)
                    .await;
                self.fig.device_acks += 1;
            }
        }
    }

    async fn on_sender_stanza(&mut self, i: usize, s: &str) {
        if name(s) != "message" {
            return;
        }
        let Some(id) = attr(s, "id") else { return };
        let Some(sent) = self.sent.get(&id) else {
            self.violation(format!(
                "sender s{i} got a message naming no id it sent: {s}"
            ));
            return;
        };
        if sent.sender != i {
            self.violation(format!(
                "s{i} got a stanza about another sender's message: {s}"
            ));
            return;
        }
        if is_server_ack(s) {
            if self.sent_after_pg_restart.contains(&id) && !self.server_acked.contains(&id) {
                self.fig.acked_after_pg_restart += 1;
            }
            if self.server_acked.insert(id) {
                self.fig.server_acks += 1;
            } else {
                self.fig.server_ack_duplicates += 1;
            }
        } else if is_bounce(s) {
            self.fig.bounces += 1;
            let n = self.bounces.entry(id.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                let n = *n;
                self.violation(format!("{id} bounced {n} times: {s}"));
            }
            self.release_withheld(&id).await;
        } else if attr(s, "type").as_deref() == Some("error") {
            // Prosody's own errors (e.g. while readtrack is down); not readtrack's bounce.
            self.fig.sender_errors += 1;
        }
    }

    /// The bounce of a late message reached its sender: the devices holding it ack it now.
    async fn release_withheld(&mut self, id: &str) {
        for d in 0..self.devices.len() {
            if !self.devices[d].withheld.remove(id) {
                continue;
            }
            if let Some(c) = self.devices[d].client.as_mut() {
                c.send_raw(&crs_receipt(id)).await;
                self.fig.device_acks += 1;
            }
        }
    }

    /// Records what device `d` received; returns the ack it owes, if any.
    fn on_device_stanza(&mut self, d: usize, s: &str) -> Option<String> {
        if name(s) != "message" {
            return None;
        }
        let id = attr(s, "id")?;
        let Some(sent) = self.sent.get(&id) else {
            return None; // not a load message (nothing else is sent to devices in this test)
        };
        let kind = attr(s, "type");
        if kind.as_deref() == Some("error") {
            // Prosody answering a device's receipt while readtrack was down.
            self.fig.device_errors += 1;
            return None;
        }
        let late = sent.late;
        let want_from = format!("{}/{SENDER_RESOURCE}", bare(&sender_name(sent.sender)));
        let device = &self.devices[d];
        if sent.recipient != device.recipient
            || kind.as_deref() != Some("chat")
            || attr(s, "from").as_deref() != Some(want_from.as_str())
        {
            let who = format!("{}/{}", recipient_name(device.recipient), device.resource);
            self.violation(format!(
                "{who} got a wrong copy of {id} (want type chat from {want_from}): {s}"
            ));
            return None;
        }
        let replay = s.contains("urn:xmpp:offline");
        if replay {
            self.fig.replay_stanzas += 1;
        } else {
            self.fig.live_stanzas += 1;
        }
        self.devices[d].seen.insert(id.clone());
        if late && !self.bounces.contains_key(&id) {
            self.devices[d].withheld.insert(id);
            return None;
        }
        Some(if replay {
            crs_offline_ack(&id)
        } else {
            crs_receipt(&id)
        })
    }

    /// Runs the load for `duration`; takes a cursor sample at `sample_at` if given.
    async fn load(&mut self, duration: Duration, mut sample_at: Option<Duration>) {
        let start = Instant::now();
        while start.elapsed() < duration {
            match self.rng.below(100) {
                0..=59 => self.send().await,
                60..=67 => {
                    let d = self.rng.below(self.devices.len() as u64) as usize;
                    self.toggle(d).await;
                }
                _ => {}
            }
            self.pump().await;
            if sample_at.is_some_and(|at| start.elapsed() >= at) {
                sample_at = None;
                self.sample_cursors();
            }
            tokio::time::sleep(STEP_PAUSE).await;
        }
    }

    /// Samples `cursors --json` for every recipient and checks nothing moved backwards since
    /// any earlier sample. The admin socket answers between two batches of the service loop,
    /// after the batch's flush, so a sample only ever shows durable state: a SIGKILL after it
    /// cannot legitimately take it back.
    fn sample_cursors(&mut self) {
        self.assert_running();
        for r in 0..RECIPIENTS {
            let user = bare(&recipient_name(r));
            let c = tokio::task::block_in_place(|| self.readtrack.cursors(&user));
            let head = c["head"].as_u64().unwrap_or_else(|| panic!("no head: {c}"));
            let high = self.head_high.entry(user.clone()).or_insert(0);
            if head < *high {
                let was = *high;
                self.violation(format!("{user}: head went back from {was} to {head}: {c}"));
            } else {
                *high = head;
            }
            let devices = c["devices"]
                .as_array()
                .unwrap_or_else(|| panic!("no devices: {c}"));
            let mut present = HashSet::new();
            for dev in devices {
                let key = dev["device"].as_str().expect("device key").to_string();
                let acked_upto = dev["acked_upto"].as_u64().expect("acked_upto");
                present.insert(key.clone());
                let high = self
                    .cursor_high
                    .entry((user.clone(), key.clone()))
                    .or_insert(0);
                if acked_upto < *high {
                    let was = *high;
                    self.violation(format!(
                        "{user}/{key}: acked_upto went back from {was} to {acked_upto}: {c}"
                    ));
                } else {
                    *high = acked_upto;
                }
            }
            for resource in DEVICES {
                if !present.contains(resource) {
                    self.violation(format!("{user}/{resource} disappeared from cursors: {c}"));
                }
            }
        }
        self.fig.cursor_samples += 1;
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.readtrack.exited() {
            panic!(
                "seed {}: readtrack exited on its own ({status}) in cycle {}",
                self.seed, self.cycle
            );
        }
    }

    /// Ping round trips: every sender (and online device) is still connected. A sender that
    /// lost its session would silently miss its bounces, and the bounce check would mean nothing.
    async fn sync_all(&mut self) {
        for c in &mut self.senders {
            c.sync().await;
        }
        for device in &mut self.devices {
            if let Some(c) = device.client.as_mut() {
                c.sync().await;
            }
        }
    }

    async fn cycle(&mut self) {
        self.assert_running();
        self.sync_all().await;
        self.sample_cursors();
        let run_for = self.rng.duration_below(MAX_RUN);
        let sample_at = self.rng.duration_below(MAX_RUN);
        self.load(run_for, Some(sample_at).filter(|at| *at < run_for))
            .await;
        self.assert_running();
        if let Some(port) = self
            .pg_port
            .filter(|_| self.cycle % PG_RESTART_EVERY == PG_RESTART_AT)
        {
            self.restart_postgres_under_load(port).await;
        }
        tokio::task::block_in_place(|| self.readtrack.kill());
        self.readtrack_up = false;
        let down_for = self.rng.duration_below(MAX_DOWN);
        self.load(down_for, None).await;
        tokio::task::block_in_place(|| self.readtrack.start_again());
        self.readtrack_up = true;
        self.fig.cycles += 1;
    }

    /// Restarts PostgreSQL with readtrack running and the load going on. readtrack must wait for
    /// it and carry on; an exit is counted (the run fails on it) and readtrack started again
    /// here, like after a crash, so the other checks still judge the run. It may not hang: it
    /// must ack new messages before the run ends (checked at the end).
    async fn restart_postgres_under_load(&mut self, port: u16) {
        self.sent_after_pg_restart.clear();
        self.fig.acked_after_pg_restart = 0;
        tokio::task::block_in_place(|| restart_postgres(port));
        self.fig.pg_restarts += 1;
        for _ in 0..2 {
            self.load(AFTER_PG_RESTART, None).await;
            if let Some(status) = self.readtrack.exited() {
                let log = self.readtrack.log();
                let said = log
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("readtrack: ") || l.contains("ERROR"))
                    .unwrap_or("(nothing)");
                println!(
                    "  cycle {}: readtrack exited ({status}) after the PostgreSQL restart, saying {said}; starting it again",
                    self.cycle
                );
                self.fig.exits_after_pg_restart += 1;
                self.readtrack_up = false;
                tokio::task::block_in_place(|| self.readtrack.kill());
                tokio::task::block_in_place(|| self.readtrack.start_again());
                self.readtrack_up = true;
            }
        }
    }

    /// Everything the checks are waiting for has arrived.
    fn settled(&self) -> bool {
        let bounces_in = self
            .server_acked
            .iter()
            .filter(|id| self.sent[*id].late)
            .all(|id| self.bounces.contains_key(id));
        bounces_in
            && self.server_acked.iter().all(|id| {
                let r = self.sent[id].recipient;
                self.devices
                    .iter()
                    .filter(|d| d.recipient == r)
                    .all(|d| d.seen.contains(id))
            })
    }

    /// After the last restart: every device online, collect replays and bounces until the run is
    /// settled (bounded), then listen past one more receipt timeout for duplicate bounces.
    async fn finish(&mut self) {
        self.assert_running();
        for d in 0..self.devices.len() {
            if self.devices[d].client.is_none() {
                self.connect(d).await;
            }
        }
        let deadline = Instant::now() + FINAL_DEADLINE;
        while !self.settled() && Instant::now() < deadline {
            self.pump().await;
            tokio::time::sleep(STEP_PAUSE).await;
        }
        let quiet_until = Instant::now() + Duration::from_millis(2 * RECEIPT_TIMEOUT_MS);
        while Instant::now() < quiet_until {
            self.pump().await;
            tokio::time::sleep(STEP_PAUSE).await;
        }
        self.sync_all().await;
        self.pump().await;
        self.sample_cursors();
    }

    fn judge(&mut self) {
        let mut found = Vec::new();
        for id in &self.server_acked {
            let sent = &self.sent[id];
            if sent.late {
                self.fig.late_acked += 1;
                let n = self.bounces.get(id).copied().unwrap_or(0);
                if n != 1 {
                    let stored = self.stored_receipt(sent.recipient, id);
                    found.push(format!(
                        "late message {id} was acked (10013) and never acked by a device, but bounced {n} times (want exactly 1); the store says its receipt is {stored:?}"
                    ));
                }
            }
            for device in self
                .devices
                .iter()
                .filter(|d| d.recipient == sent.recipient)
            {
                self.fig.deliveries_due += 1;
                if device.seen.contains(id) {
                    self.fig.deliveries_seen += 1;
                } else {
                    self.fig.losses += 1;
                    found.push(format!(
                        "LOST: {id} (10013-acked to {}) never reached {}/{}",
                        sender_name(sent.sender),
                        recipient_name(device.recipient),
                        device.resource
                    ));
                }
            }
        }
        self.fig.bounces_without_server_ack = self
            .bounces
            .keys()
            .filter(|id| !self.server_acked.contains(*id))
            .count() as u64;
        for v in found {
            self.violation(v);
        }
    }

    /// The stored receipt state of message `id` (`waiting`, `bounced`...), from `readtrack log`:
    /// it tells a timer that never fired (`waiting`) from a bounce that was settled durably
    /// but never reached the sender (`bounced`).
    fn stored_receipt(&self, recipient: usize, id: &str) -> String {
        let user = bare(&recipient_name(recipient));
        let out = tokio::task::block_in_place(|| {
            self.readtrack
                .cli(&["log", &user, "--limit", "1000000", "--json"])
        });
        assert!(
            out.status.success(),
            "log {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("log --json is JSON");
        log["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == id))
            .map_or("not in the log".to_string(), |m| {
                m["receipt"].as_str().unwrap_or("missing").to_string()
            })
    }

    fn report(&self) -> String {
        let f = &self.fig;
        format!(
            "crash loop figures (seed {seed}):\n\
             \x20 cycles (SIGKILL + restart)      {cycles}\n\
             \x20 messages sent                   {sent} ({down} while readtrack was down)\n\
             \x20 acked to senders (10013)        {acked} (+{dup} duplicate acks)\n\
             \x20   of which late (must bounce)   {late}\n\
             \x20 deliveries due / seen           {due} / {seen} (device x acked message)\n\
             \x20 stanzas at devices              {live} live, {replay} replays\n\
             \x20 device acks sent                {dacks}\n\
             \x20 bounces (501)                   {bounces} ({nack} for messages whose 10013 was lost in a crash)\n\
             \x20 device sessions                 {sessions} ({dropped} dropped without close)\n\
             \x20 cursor samples                  {samples}\n\
             \x20 Prosody errors (readtrack down) {serr} at senders, {derr} at devices\n\
             \x20 PostgreSQL restarts             {pg_restarts} (readtrack exited after {pg_exits}; {pg_acked} acks after the latest)\n\
             \x20 losses                          {losses}\n\
             \x20 violations                      {violations}",
            seed = self.seed,
            cycles = f.cycles,
            sent = f.sent,
            down = f.sent_while_down,
            acked = f.server_acks,
            dup = f.server_ack_duplicates,
            late = f.late_acked,
            due = f.deliveries_due,
            seen = f.deliveries_seen,
            live = f.live_stanzas,
            replay = f.replay_stanzas,
            dacks = f.device_acks,
            bounces = f.bounces,
            nack = f.bounces_without_server_ack,
            sessions = f.device_sessions,
            dropped = f.dropped_connections,
            samples = f.cursor_samples,
            serr = f.sender_errors,
            derr = f.device_errors,
            losses = f.losses,
            pg_restarts = f.pg_restarts,
            pg_exits = f.exits_after_pg_restart,
            pg_acked = f.acked_after_pg_restart,
            violations = self.violations.len(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_keeps_every_acked_message_and_timer() {
    let cycles = env_u64("READTRACK_CRASH_CYCLES").map_or(DEFAULT_CYCLES, |n| n as usize);
    assert!(cycles > 0, "READTRACK_CRASH_CYCLES must be at least 1");
    let seed = env_u64("READTRACK_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("crash loop: seed {seed} ({cycles} cycles; READTRACK_CRASH_SEED={seed} replays it)");

    let mut run = CrashLoop::setup(seed).await;
    for cycle in 1..=cycles {
        run.cycle = cycle;
        run.cycle().await;
        if cycle % 50 == 0 {
            println!(
                "  cycle {cycle}: {} sent, {} acked, {} bounces",
                run.fig.sent, run.fig.server_acks, run.fig.bounces
            );
        }
    }
    run.finish().await;
    run.judge();
    let report = run.report();
    println!("{report}");

    if !run.violations.is_empty() {
        // The temp dirs go with the processes; keep the whole logs as evidence.
        let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let rt_log = keep.join(format!("crash_loop-{seed}-readtrack.log"));
        let prosody_log = keep.join(format!("crash_loop-{seed}-prosody.log"));
        std::fs::write(&rt_log, run.readtrack.log()).unwrap();
        std::fs::write(&prosody_log, run.prosody.log()).unwrap();
        println!("logs kept: {} {}", rt_log.display(), prosody_log.display());
    }
    assert!(
        run.violations.is_empty(),
        "seed {seed}: {} violations:\n{}\n{report}",
        run.violations.len(),
        run.violations.join("\n")
    );
    // A run that exercised nothing proves nothing: demand that every path was taken.
    let f = &run.fig;
    assert_eq!(f.cycles, cycles, "{report}");
    assert!(f.server_acks > 0, "no message was acked: {report}");
    assert!(f.late_acked > 0, "no late message was acked: {report}");
    assert!(f.replay_stanzas > 0, "no replay happened: {report}");
    assert!(f.device_acks > 0, "no device acked: {report}");
    assert_eq!(f.losses, 0, "{report}");
    assert_eq!(f.deliveries_seen, f.deliveries_due, "{report}");
    if run.pg_port.is_some() {
        let want = (cycles + PG_RESTART_EVERY - PG_RESTART_AT) / PG_RESTART_EVERY;
        assert_eq!(
            f.pg_restarts as usize, want,
            "PostgreSQL restarts: {report}"
        );
        assert_eq!(
            f.exits_after_pg_restart, 0,
            "readtrack waits for PostgreSQL to come back instead of exiting: {report}"
        );
        if want > 0 {
            assert!(
                f.acked_after_pg_restart > 0,
                "no message was acked after the latest PostgreSQL restart: {report}"
            );
        }
    }
}

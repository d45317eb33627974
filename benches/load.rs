//! End-to-end load runner of issue 5: real Prosody on loopback (127.0.0.1 only), real clients.
//!
//! Two Prosody instances of the same build and config run side by side: "alone" (mod_offline, no
//! readtrack) and "readtrack" (the same plus mod_readtrack and a `readtrack serve` attached).
//! The same clients drive both, alternately, in the same run:
//!
//! - chat: `PAIRS` sender/receiver pairs (2 × PAIRS connections), each sender sends `MSGS`
//!   messages to its receiver with at most `WINDOW` awaiting the receiver's XEP-0184 receipt;
//!   throughput = messages / wall time; latency = send to arrival at the receiver. With
//!   readtrack a sender also waits for the server ack (seed crs 10013) of each of its messages
//!   before the round ends, so the round's time covers the work readtrack causes.
//! - replay: a device logs out, `REPLAY` messages are sent to its user, it logs in again; the
//!   time from the start of its login until all of them arrived (mod_offline vs readtrack),
//!   `REPLAY_ROUNDS` times each, alternately; medians are compared.
//! - memory: `readtrack serve` RSS after opening (and serving the reconnect snapshot of) a store
//!   built with the store API, at two sizes, extrapolated linearly to 100k users / 300k devices
//!   / 10M messages (the peak is extrapolated from the two largest points; a point of 10M
//!   messages or more, `LOAD_MEM=100000:3:10000000`, is reported as measured).
//!
//! Every loop is bounded in count and time. Prints a table, writes `target/readtrack-load.json`.
//! Run: `cargo bench --bench load` (as root: Prosody is started as the `prosody` user).
//! `LOAD_MEMORY_ONLY=1` runs only the memory points. Sizes: `LOAD_PAIRS`, `LOAD_MSGS`,
//! `LOAD_WINDOW`, `LOAD_ROUNDS`, `LOAD_REPLAY`, `LOAD_REPLAY_ROUNDS` (3), `LOAD_MEM`
//! (`users:devices_per_user:messages` pairs separated by `,`; default `1000:3:100000,10000:3:1000000`).
//! `LOAD_DIALECT=xep` runs readtrack without the seed server ack. `LOAD_BACKEND=postgres` keeps
//! readtrack's store in a fresh database on `READTRACK_BENCH_PG_URL` (an admin URL, such as
//! `scripts/postgres start` prints) instead of sled; the memory points, which measure sled's
//! page table, are then not run. Profiling: `LOAD_LUA_PROFILE=1`
//! (Prosody's Lua, see `benches/prosody/mod_lprof.lua`), `LOAD_PAUSE_S=N` (time to attach
//! `perf record -p` to the pids it prints).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{attr, name, Client, Prosody, ProsodyOpts};
use readtrack::store::{
    DeliveryRecord, DeviceRecord, MessageRecord, ReceiptState, Store, StoreOptions,
};
use serde_json::json;

const PASS: &str = "pw";
/// Upper bound of any one phase; a phase that takes longer fails the run rather than hang.
const PHASE_LIMIT: Duration = Duration::from_secs(180);

/// `LOAD_DIALECT`: readtrack's receipt dialect, `seed` (default: a server ack per message) or
/// `xep` (XEP-0184 only: no server ack, no bounce).
fn dialect() -> String {
    std::env::var("LOAD_DIALECT").unwrap_or_else(|_| "seed".into())
}

/// `LOAD_BACKEND`: `sled` (default) or `postgres`, the `[store]` section of the daemon's config.
fn store_section(cache_mb: u64) -> String {
    match std::env::var("LOAD_BACKEND").as_deref() {
        Err(_) | Ok("sled") => format!("path = \"data\"\ncache_mb = {cache_mb}"),
        Ok("postgres") => {
            let admin = std::env::var("READTRACK_BENCH_PG_URL").expect(
                "LOAD_BACKEND=postgres needs READTRACK_BENCH_PG_URL (eval \"$(scripts/postgres start)\"; READTRACK_BENCH_PG_URL=$READTRACK_TEST_PG_URL)",
            );
            let database = format!("readtrack_load_{}", std::process::id());
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)
                .unwrap_or_else(|e| panic!("READTRACK_BENCH_PG_URL={admin}: {e}"));
            client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}"
                ))
                .unwrap();
            let (server, _) = admin.rsplit_once('/').expect("an URL ending in /DATABASE");
            format!("backend = \"postgres\"\nurl = \"{server}/{database}\"")
        }
        Ok(other) => panic!("LOAD_BACKEND is sled or postgres, not {other:?}"),
    }
}

fn postgres_backend() -> bool {
    std::env::var("LOAD_BACKEND").as_deref() == Ok("postgres")
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `readtrack serve` beside a Prosody, with production logging (`RUST_LOG=info`).
struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    fn new(p: &Prosody, cache_mb: u64) -> Daemon {
        let dir = tempfile::tempdir_in(scratch_base()).unwrap();
        let config = format!(
            "[xmpp]\ndomain = \"{}\"\ncomponent = \"{}\"\nconnect = \"127.0.0.1:{}\"\nsecret = \"{}\"\n\n\
             [store]\n{}\n\n[admin]\nsocket = \"readtrack.sock\"\n\n\
             [receipts]\ndialect = \"{}\"\ntimeout = \"1h\"\nrequire = \"all\"\n",
            p.domain(),
            p.component_domain(),
            p.component_port,
            p.secret(),
            store_section(cache_mb),
            dialect()
        );
        std::fs::write(dir.path().join("readtrack.toml"), config).unwrap();
        Daemon { dir, child: None }
    }

    fn store_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("readtrack.log")).unwrap_or_default()
    }

    fn start(&mut self) {
        let before = self.log().matches("connected to the server").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("readtrack.log"))
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_readtrack"))
                .args(["serve", "--config"])
                .arg(self.dir.path().join("readtrack.toml"))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn readtrack"),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.log().matches("connected to the server").count() <= before {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("readtrack exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "readtrack did not connect:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `readtrack cursors USER --json` through the admin socket.
    fn head(&self, user: &str) -> u64 {
        let out = Command::new(env!("CARGO_BIN_EXE_readtrack"))
            .args(["cursors", user, "--json", "--config"])
            .arg(self.dir.path().join("readtrack.toml"))
            .output()
            .unwrap();
        if !out.status.success() {
            return 0; // user not known yet
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["head"]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn scratch_base() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("load-scratch");
    std::fs::create_dir_all(&base).unwrap();
    base
}

fn prosody(readtrack: bool, users: &[String]) -> Prosody {
    let mut extra_modules = vec!["offline".to_string()];
    let mut extra_global = String::new();
    // `LOAD_LUA_PROFILE=1`: mod_lprof samples each Prosody's Lua (see benches/prosody/).
    if std::env::var("LOAD_LUA_PROFILE").is_ok_and(|v| v == "1") {
        let bench_plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/prosody");
        // Prosody runs as the `prosody` user: it writes where anyone may.
        let out = lua_profile_path(readtrack);
        extra_modules.push("lprof".into());
        extra_global = format!(
            "plugin_paths = {{ {:?}, {:?} }}\nlprof_out = {:?}\n",
            common::plugin_dir().display().to_string(),
            bench_plugins.display().to_string(),
            out.display().to_string()
        );
    }
    let p = Prosody::start(ProsodyOpts {
        readtrack,
        extra_modules,
        extra_global,
        log_level: "info",
        ..ProsodyOpts::default()
    });
    for u in users {
        p.register(u, PASS);
    }
    p
}

fn lua_profile_path(readtrack: bool) -> PathBuf {
    std::env::temp_dir().join(if readtrack {
        "readtrack-lprof-readtrack.txt"
    } else {
        "readtrack-lprof-alone.txt"
    })
}

/// With `LOAD_LUA_PROFILE=1`: waits for mod_lprof's next report (every 2 s) and keeps a copy of
/// both servers' reports as `target/readtrack-lprof-{phase}-{alone,readtrack}.txt`. The
/// profiles are cumulative: a later phase's report includes the earlier phases.
fn keep_lua_profiles(phase: &str) {
    if !std::env::var("LOAD_LUA_PROFILE").is_ok_and(|v| v == "1") {
        return;
    }
    std::thread::sleep(Duration::from_millis(2500));
    for (readtrack, mode) in [(false, "alone"), (true, "readtrack")] {
        let to = scratch_base()
            .parent()
            .unwrap()
            .join(format!("readtrack-lprof-{phase}-{mode}.txt"));
        match std::fs::copy(lua_profile_path(readtrack), &to) {
            Ok(_) => println!("Lua profile: {}", to.display()),
            Err(e) => println!("Lua profile of {mode} missing: {e}"),
        }
    }
}

async fn online(p: &Prosody, user: &str, resource: &str) -> Client {
    let mut c = p.client(user, PASS, resource).await;
    c.send_presence().await;
    c.sync().await;
    c
}

fn nanos_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

struct ChatResult {
    msgs_per_s: f64,
    latencies_us: Vec<u64>,
}

/// One chat round: every pair at once; returns throughput and every message's latency.
async fn chat_round(
    p: &Prosody,
    pairs: u64,
    msgs: u64,
    window: u64,
    server_acks: bool,
) -> ChatResult {
    let base = Instant::now();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..pairs {
        // The same resources every round: known devices, so readtrack replays them no history.
        senders.push(online(p, &format!("s{i}"), "load").await);
        receivers.push(online(p, &format!("d{i}"), "load").await);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut tx, mut rx)) in senders.into_iter().zip(receivers).enumerate() {
        let to = rx.jid.clone();
        let recv = tokio::spawn(async move {
            let mut lat = Vec::with_capacity(msgs as usize);
            while (lat.len() as u64) < msgs {
                let s = rx
                    .next_stanza(Duration::from_secs(30))
                    .await
                    .expect("receiver timed out");
                // Live messages only: a replay (delay-stamped) belongs to an earlier round.
                if name(&s) != "message" || !s.contains("<body>") || s.contains("urn:xmpp:delay") {
                    continue;
                }
                let body = s.split("<body>").nth(1).unwrap();
                let sent: u64 = body[..body.find('<').unwrap()].parse().unwrap();
                lat.push(nanos_since(base).saturating_sub(sent) / 1000);
                let id = attr(&s, "id").unwrap();
                let from = attr(&s, "from").unwrap();
                rx.send_raw(&format!(
                    "<message id='rc-{id}' to='{from}'><received xmlns='urn:xmpp:receipts' id='{id}'/></message>"
                ))
                .await;
            }
            lat
        });
        let send = tokio::spawn(async move {
            let mut sent = 0u64;
            let mut receipts = 0u64;
            let mut acks = 0u64;
            let acks_due = if server_acks { msgs } else { 0 };
            // Done when every message has its receipt and, with readtrack, its server ack: the
            // round's time covers all the work it causes.
            while receipts < msgs || acks < acks_due {
                while sent < msgs && sent - receipts < window {
                    sent += 1;
                    tx.send_raw(&format!(
                        "<message id='p{i}m{sent}' type='chat' to='{to}'><request xmlns='urn:xmpp:receipts'/><body>{}</body></message>",
                        nanos_since(base)
                    ))
                    .await;
                }
                let s = tx
                    .next_stanza(Duration::from_secs(30))
                    .await
                    .expect("sender timed out waiting for receipts");
                if attr(&s, "id").is_some_and(|id| id.starts_with("rc-")) {
                    receipts += 1;
                } else if attr(&s, "type").as_deref() == Some("crs") {
                    acks += 1;
                }
            }
            tx
        });
        tasks.push((send, recv));
    }
    let mut latencies = Vec::new();
    let mut clients = Vec::new();
    for (send, recv) in tasks {
        latencies.extend(recv.await.unwrap());
        clients.push(send.await.unwrap());
    }
    let elapsed = start.elapsed();
    for mut c in clients {
        c.close().await;
    }
    ChatResult {
        msgs_per_s: (pairs * msgs) as f64 / elapsed.as_secs_f64(),
        latencies_us: latencies,
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Replay of `n` messages sent while the device was away. Returns seconds from the start of
/// the login to the last message.
async fn replay_round(p: &Prosody, rt: Option<&Daemon>, n: u64, sink: &str) -> f64 {
    // The device must be known (readtrack gives a first-seen device only recent history).
    let mut dev = online(p, sink, "phone").await;
    dev.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut src = online(p, "source", sink).await;
    for i in 1..=n {
        src.send_raw(&format!(
            "<message id='o{i}' type='chat' to='{sink}@localhost'><body>offline {i}</body></message>"
        ))
        .await;
        if i % 500 == 0 {
            src.sync().await;
        }
    }
    src.sync().await;
    let deadline = Instant::now() + PHASE_LIMIT;
    if let Some(rt) = rt {
        while rt.head(&format!("{sink}@localhost")) < n {
            assert!(
                Instant::now() < deadline,
                "readtrack did not log {n} messages"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    src.close().await;
    let start = Instant::now();
    let mut dev = p.client(sink, PASS, "phone").await;
    dev.send_presence().await;
    let mut got = 0u64;
    while got < n {
        let s = dev
            .next_stanza(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("replay stalled at {got}/{n}"));
        if name(&s) == "message" && s.contains("<body>offline ") {
            got += 1;
        }
    }
    let t = start.elapsed().as_secs_f64();
    dev.close().await;
    t
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0 // USER_HZ
}

/// The pid of the Prosody process (not its `runuser` parent) running with this config.
fn prosody_pid(p: &Prosody) -> u32 {
    let config = p.config_path().display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&config) && !cmd.starts_with("runuser") {
            return pid;
        }
    }
    panic!("no prosody process for {config}");
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |f: &str| {
        status
            .lines()
            .find(|l| l.starts_with(f))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Fills a store with `users` users of `devices` devices each and `messages` messages spread
/// evenly over them (flush every 1024), the way the engine writes them.
fn build_store(path: &Path, users: u64, devices: u64, messages: u64) {
    let store = Store::open(path, &StoreOptions::default()).unwrap();
    let mut ids = Vec::new();
    for u in 0..users {
        let id = store.ensure_user(&format!("m{u}@localhost")).unwrap();
        for d in 0..devices {
            let record = DeviceRecord {
                key: format!("dev{d}"),
                resource: format!("dev{d}"),
                acked_upto: 0,
                acked_above: Vec::new(),
                session: 1,
                online: false,
                first_seen: 1_700_000_000_000,
                last_seen: 1_700_000_000_000,
                replayed: Default::default(),
                session_id: None,
                speaks_seed: false,
            };
            store.put_device(id, None, &record).unwrap();
        }
        ids.push(id);
    }
    for i in 0..messages {
        let user = ids[(i % users) as usize];
        let m = MessageRecord {
            seq: 0,
            stanza_id: i as u128 | (1u128 << 100),
            msg_id: Some(format!("msg{i}")),
            from: "alice@localhost/Spark 2.6.3".into(),
            kind: Some("chat".into()),
            stanza: format!(
                "<message xmlns=\"jabber:client\" type=\"chat\"><body>{}</body></message>",
                (Some(format!(
                r#"{{"time":"2013-11-20T06:41:36.102Z","cnt":"hello {i}","msgTypec":"10000","mtype":"0"}}"#
            ))).map(|b: String| b.replace('&', "&amp;").replace('<', "&lt;")).unwrap_or_default()
            ),
            signal: false,
            asks_receipt: false,
            logged_at: 1_700_000_000_000 + i,
            system: false,
            receipt: ReceiptState::NotRequired,
            archive_id: None,
            sent: false,
            to: None,
        };
        let delivered: &[(u32, DeliveryRecord)] = &[];
        store.append_message(user, &m, delivered).unwrap();
        if i % 1024 == 0 {
            store.flush().unwrap();
        }
    }
    store.flush().unwrap();
}

/// RSS of `readtrack serve` on stores of each size: stop the daemon, fill a fresh store, start
/// it again on it. Returns the points and a linear extrapolation through the last two to 10M
/// messages.
fn measure_memory(
    daemon: &mut Daemon,
    mem_points: &[(u64, u64, u64)],
) -> (Vec<serde_json::Value>, Option<f64>) {
    let mut memory = Vec::new();
    if postgres_backend() {
        println!("memory: not measured with LOAD_BACKEND=postgres (the points measure sled)");
        return (memory, None);
    }
    for &(u, d, m) in mem_points {
        daemon.stop();
        let _ = std::fs::remove_dir_all(daemon.store_path());
        let built = Instant::now();
        build_store(&daemon.store_path(), u, d, m);
        let build_s = built.elapsed().as_secs_f64();
        daemon.start();
        std::thread::sleep(Duration::from_secs(2)); // let the reconnect snapshot settle
        let (rss, hwm) = rss_kib(daemon.pid());
        println!(
            "memory: {u} users / {} devices / {m} messages (built in {build_s:.0} s): RSS {} MiB, peak {} MiB",
            u * d,
            rss / 1024,
            hwm / 1024
        );
        memory.push(json!({"users": u, "devices": u * d, "messages": m,
            "rss_mib": rss as f64 / 1024.0, "peak_rss_mib": hwm as f64 / 1024.0, "build_s": build_s}));
    }
    let largest = memory.last().map(|p| {
        (
            p["messages"].as_f64().unwrap(),
            p["peak_rss_mib"].as_f64().unwrap(),
        )
    });
    let extrapolated = if let Some((m, peak)) = largest.filter(|(m, _)| *m >= 10_000_000.0) {
        // Measured at the target's size (or beyond): no extrapolation.
        println!("peak RSS measured at {m} messages: {peak:.0} MiB");
        Some(peak)
    } else if memory.len() >= 2 {
        let (a, b) = (&memory[memory.len() - 2], &memory[memory.len() - 1]);
        let (ma, mb) = (
            a["messages"].as_f64().unwrap(),
            b["messages"].as_f64().unwrap(),
        );
        let (ra, rb) = (
            a["peak_rss_mib"].as_f64().unwrap(),
            b["peak_rss_mib"].as_f64().unwrap(),
        );
        let slope = (rb - ra) / (mb - ma);
        Some(rb + slope * (10_000_000.0 - mb))
    } else {
        None
    };
    (memory, extrapolated)
}

fn main() {
    // `cargo bench` passes `--bench`; this runner takes its settings from the environment.
    let pairs = env_num("LOAD_PAIRS", 8);
    let msgs = env_num("LOAD_MSGS", 500);
    let window = env_num("LOAD_WINDOW", 8);
    let rounds = env_num("LOAD_ROUNDS", 2);
    let replay_n = env_num("LOAD_REPLAY", 10_000);
    let replay_rounds = env_num("LOAD_REPLAY_ROUNDS", 3).max(1);
    let mem_points: Vec<(u64, u64, u64)> = std::env::var("LOAD_MEM")
        .unwrap_or_else(|_| "1000:3:100000,10000:3:1000000".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let v: Vec<u64> = s.split(':').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1], v[2])
        })
        .collect();

    let mut users: Vec<String> = (0..pairs)
        .flat_map(|i| [format!("s{i}"), format!("d{i}")])
        .collect();
    users.push("source".into());
    for round in 0..replay_rounds {
        users.extend([format!("sinka{round}"), format!("sinkb{round}")]);
    }
    let alone = prosody(false, &users);
    let with_rt = prosody(true, &users);
    let mut daemon = Daemon::new(&with_rt, 64);
    daemon.start();
    // `LOAD_MEMORY_ONLY=1`: only the memory points, written to target/readtrack-load-memory.json.
    if std::env::var("LOAD_MEMORY_ONLY").is_ok_and(|v| v == "1") {
        let (memory, extrapolated) = measure_memory(&mut daemon, &mem_points);
        println!("RSS extrapolated to 10M messages: {extrapolated:?} MiB");
        let out = scratch_base()
            .parent()
            .unwrap()
            .join("readtrack-load-memory.json");
        let doc = json!({"memory": {"points": memory, "extrapolated_peak_rss_mib_10m_msgs": extrapolated}});
        std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("written {}", out.display());
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Chat, alternating the two servers so drift in the machine's load hits both.
    let mut results: [Vec<ChatResult>; 2] = [Vec::new(), Vec::new()];
    // CPU seconds per mode: [prosody, readtrack, this process (the clients)].
    let mut cpu = [[0.0f64; 3]; 2];
    let pids = [prosody_pid(&alone), prosody_pid(&with_rt)];
    println!(
        "pids: prosody alone {}, prosody with readtrack {}, readtrack {}",
        pids[0],
        pids[1],
        daemon.pid()
    );
    // `LOAD_PAUSE_S=N`: time to attach a profiler (perf record -p PID) before the chat rounds.
    std::thread::sleep(Duration::from_secs(env_num("LOAD_PAUSE_S", 0)));
    let me = std::process::id();
    let run_started = Instant::now();
    for round in 0..rounds {
        for (k, p) in [&alone, &with_rt].into_iter().enumerate() {
            let before = [cpu_s(pids[k]), cpu_s(daemon.pid()), cpu_s(me)];
            let r = rt.block_on(async {
                tokio::time::timeout(
                    PHASE_LIMIT,
                    chat_round(p, pairs, msgs, window, k == 1 && dialect() == "seed"),
                )
                .await
                .expect("chat round over its time limit")
            });
            println!(
                "chat round {round} {:<9} {:8.0} msg/s",
                ["alone", "readtrack"][k],
                r.msgs_per_s
            );
            let after = [cpu_s(pids[k]), cpu_s(daemon.pid()), cpu_s(me)];
            for i in 0..3 {
                // readtrack's CPU counts only while it is attached (mode 1).
                if i != 1 || k == 1 {
                    cpu[k][i] += after[i] - before[i];
                }
            }
            results[k].push(r);
        }
    }
    let chat_msgs = (rounds * pairs * msgs) as f64;
    let per_msg_us = |c: f64| c / chat_msgs * 1e6;
    let summarise = |rs: &[ChatResult]| {
        let mut all: Vec<u64> = rs.iter().flat_map(|r| r.latencies_us.clone()).collect();
        all.sort_unstable();
        let tput = rs.iter().map(|r| r.msgs_per_s).sum::<f64>() / rs.len() as f64;
        (tput, percentile(&all, 0.5), percentile(&all, 0.99))
    };
    let (tput_a, p50_a, p99_a) = summarise(&results[0]);
    let (tput_r, p50_r, p99_r) = summarise(&results[1]);
    println!(
        "chat phase took {:.1} s",
        run_started.elapsed().as_secs_f64()
    );
    keep_lua_profiles("chat");

    // Replay: mod_offline and readtrack alternately, `LOAD_REPLAY_ROUNDS` times each (a fresh
    // sink user per round, so every round replays exactly `replay_n`); the median of each side
    // is reported, since one round of either varies a lot on this machine.
    let mut replay_times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    // CPU seconds over all rounds (send + store + replay): [alone prosody, prosody, readtrack].
    let mut replay_cpu_total = [0.0f64; 3];
    for round in 0..replay_rounds {
        let before = cpu_s(pids[0]);
        let t = rt.block_on(async {
            tokio::time::timeout(
                PHASE_LIMIT,
                replay_round(&alone, None, replay_n, &format!("sinka{round}")),
            )
            .await
            .expect("replay over its time limit")
        });
        replay_cpu_total[0] += cpu_s(pids[0]) - before;
        println!("replay round {round}: {replay_n} via mod_offline: {t:.3} s");
        replay_times[0].push(t);
        let before = [cpu_s(pids[1]), cpu_s(daemon.pid())];
        let t = rt.block_on(async {
            tokio::time::timeout(
                PHASE_LIMIT,
                replay_round(&with_rt, Some(&daemon), replay_n, &format!("sinkb{round}")),
            )
            .await
            .expect("replay over its time limit")
        });
        replay_cpu_total[1] += cpu_s(pids[1]) - before[0];
        replay_cpu_total[2] += cpu_s(daemon.pid()) - before[1];
        println!("replay round {round}: {replay_n} via readtrack:   {t:.3} s");
        replay_times[1].push(t);
    }
    keep_lua_profiles("replay");
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (replay_alone, replay_rt) = (median(&replay_times[0]), median(&replay_times[1]));
    let per_round = |c: f64| c / replay_rounds as f64;
    let alone_replay_cpu = per_round(replay_cpu_total[0]);
    let replay_cpu = [
        per_round(replay_cpu_total[1]),
        per_round(replay_cpu_total[2]),
    ];
    println!(
        "replay CPU s per round (send + store + replay): prosody alone {alone_replay_cpu:.2}; with readtrack: prosody {:.2}, readtrack {:.2}",
        replay_cpu[0], replay_cpu[1]
    );
    let (rss_serving, _) = rss_kib(daemon.pid());

    let (memory, extrapolated) = measure_memory(&mut daemon, &mem_points);
    drop(daemon);

    let tput_ratio = tput_r / tput_a;
    let p99_added_ms = (p99_r as f64 - p99_a as f64) / 1000.0;
    let replay_ratio = replay_alone / replay_rt;
    println!(
        "\n{:<46} {:>12} {:>12} {:>10} {:>10}",
        "load (same run)", "alone", "readtrack", "ratio", "target"
    );
    println!(
        "{:<46} {:>12.0} {:>12.0} {:>10.3} {:>10}",
        "chat throughput (msg/s)",
        tput_a,
        tput_r,
        tput_ratio,
        if tput_ratio >= 0.9 {
            "≥0.9 met"
        } else {
            "≥0.9 MISSED"
        }
    );
    println!(
        "{:<46} {:>12.2} {:>12.2} {:>10} {:>10}",
        "chat p50 latency (ms)",
        p50_a as f64 / 1e3,
        p50_r as f64 / 1e3,
        "",
        ""
    );
    println!(
        "{:<46} {:>12.2} {:>12.2} {:>+10.2} {:>10}",
        "chat p99 latency (ms), added",
        p99_a as f64 / 1e3,
        p99_r as f64 / 1e3,
        p99_added_ms,
        if p99_added_ms <= 5.0 {
            "≤5 met"
        } else {
            "≤5 MISSED"
        }
    );
    println!(
        "{:<46} {:>12.3} {:>12.3} {:>10.3} {:>10}",
        format!("replay {replay_n} to one device (s, median), ratio"),
        replay_alone,
        replay_rt,
        replay_ratio,
        if replay_ratio >= 1.0 {
            "≥1 met"
        } else {
            "≥1 MISSED"
        }
    );
    println!(
        "{:<46} {:>12.1} {:>12.1} {:>10} {:>10}",
        "CPU µs/msg in Prosody (chat)",
        per_msg_us(cpu[0][0]),
        per_msg_us(cpu[1][0]),
        "",
        ""
    );
    println!(
        "{:<46} {:>12} {:>12.1} {:>10} {:>10}",
        "CPU µs/msg in readtrack serve (chat)",
        "",
        per_msg_us(cpu[1][1]),
        "",
        ""
    );
    println!(
        "{:<46} {:>12.1} {:>12.1} {:>10} {:>10}",
        "CPU µs/msg in the load clients (chat)",
        per_msg_us(cpu[0][2]),
        per_msg_us(cpu[1][2]),
        "",
        ""
    );
    if let Some(x) = extrapolated {
        println!(
            "{:<46} {:>12} {:>12.0} {:>10} {:>10}",
            "peak RSS at 10M msgs/100k users (MiB, extrap.)",
            "",
            x,
            "",
            if x <= 512.0 {
                "≤512 met"
            } else {
                "≤512 MISSED"
            }
        );
    }
    let doc = json!({
        "dialect": dialect(),
        "config": {"pairs": pairs, "connections": pairs * 2, "msgs_per_pair": msgs, "window": window, "rounds": rounds, "replay": replay_n, "replay_rounds": replay_rounds},
        "chat": {"alone": {"msgs_per_s": tput_a, "p50_ms": p50_a as f64 / 1e3, "p99_ms": p99_a as f64 / 1e3},
                 "readtrack": {"msgs_per_s": tput_r, "p50_ms": p50_r as f64 / 1e3, "p99_ms": p99_r as f64 / 1e3},
                 "throughput_ratio": tput_ratio, "p99_added_ms": p99_added_ms},
        "chat_cpu_us_per_msg": {"alone": {"prosody": per_msg_us(cpu[0][0]), "clients": per_msg_us(cpu[0][2])},
                                "readtrack": {"prosody": per_msg_us(cpu[1][0]), "readtrack": per_msg_us(cpu[1][1]), "clients": per_msg_us(cpu[1][2])}},
        "replay": {"mod_offline_s": replay_alone, "readtrack_s": replay_rt, "speed_ratio": replay_ratio,
                   "rounds": {"mod_offline_s": replay_times[0], "readtrack_s": replay_times[1]},
                   "cpu_s_send_log_and_replay_per_round": {"alone": {"prosody": alone_replay_cpu},
                                                  "readtrack": {"prosody": replay_cpu[0], "readtrack": replay_cpu[1]}}},
        "memory": {"rss_after_load_mib": rss_serving as f64 / 1024.0, "points": memory,
                   "extrapolated_peak_rss_mib_10m_msgs": extrapolated},
    });
    let out = scratch_base().parent().unwrap().join("readtrack-load.json");
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("written {}", out.display());
    let _ = std::fs::remove_dir_all(scratch_base());
}

//! Fairness (issue 14, item 4): how much one user flooding delays another user's server ack.
//!
//! One real Prosody on loopback with mod_readtrack and `readtrack serve` (production logging).
//! The probe user sends `FAIR_PROBES` messages one at a time, each only after the server ack
//! (seed crs 10013) of the one before, and the time from send to ack is recorded:
//!
//! 1. baseline: nothing else happens;
//! 2. flood: meanwhile another user writes messages to a third user as fast as its connection
//!    takes them (a raw socket: one task writes, one reads its acks);
//! 3. baseline again, so a drift of the machine shows.
//!
//! After each ack the probe also pings the server (XEP-0199): that round trip never reaches
//! readtrack, so it is Prosody's own share of the delay. readtrack's metrics endpoint gives the
//! service's side per phase: events per batch (one commit each), the mean commit time, and the
//! mean time from taking a message's event off the queue to handing its ack to the writer.
//!
//! Prints p50 / p99 / max of each phase and the flood's rate, and writes
//! `target/readtrack-fairness.json`. Run: `cargo bench --bench fairness` (as root: Prosody is
//! started as the `prosody` user). `FAIR_PROBES` (default 300) sets the probes per phase;
//! `READTRACK_PROSODY=13` runs against Prosody 13 as the tests do.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{attr, prosody_line, Client, Prosody, ProsodyOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASS: &str = "pw";
/// A phase that takes longer fails the run rather than hang.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

/// `readtrack serve` beside the Prosody, logging at `info` as in production; killed on drop.
struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
}

impl Daemon {
    fn start(p: &Prosody, metrics_port: u16) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        // The flood fills one user's log; room for it, so what is measured is the flow.
        let config = format!(
            "[xmpp]\ndomain = \"{}\"\ncomponent = \"{}\"\nconnect = \"127.0.0.1:{}\"\nsecret = \"{}\"\n\n\
             [store]\npath = \"data\"\n\n[admin]\nsocket = \"readtrack.sock\"\n\n\
             [receipts]\ndialect = \"seed\"\ntimeout = \"1h\"\nrequire = \"all\"\n\n\
             [limits]\nmax_log_messages_per_user = 10000000\nmax_log_bytes_per_user = 10000000000\n\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            p.domain(),
            p.component_domain(),
            p.component_port,
            p.secret(),
        );
        std::fs::write(dir.path().join("readtrack.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("readtrack.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_readtrack"))
            .args(["serve", "--config"])
            .arg(dir.path().join("readtrack.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn readtrack");
        let mut d = Daemon { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.log().contains("connected to the server") {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("readtrack exited ({status}):\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "readtrack did not connect:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("readtrack.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service's own figures from its metrics endpoint: events taken, commits (batches), the
/// time spent in commits and the readtrack-side ack latency (event taken off the queue to ack
/// handed to the writer), as running totals.
#[derive(Debug, Default, Clone, Copy)]
struct ServiceFigures {
    events: f64,
    commits: f64,
    commit_seconds: f64,
    acks: f64,
    ack_seconds: f64,
}

async fn scrape(port: u16) -> ServiceFigures {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut body))
        .await
        .expect("metrics answer")
        .unwrap();
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics:\n{body}"))
    };
    ServiceFigures {
        events: value("readtrack_events_total"),
        commits: value("readtrack_commits_total"),
        commit_seconds: value("readtrack_commit_duration_seconds_sum"),
        acks: value("readtrack_ack_latency_seconds_count"),
        ack_seconds: value("readtrack_ack_latency_seconds_sum"),
    }
}

impl std::ops::Sub for ServiceFigures {
    type Output = ServiceFigures;
    fn sub(self, o: ServiceFigures) -> ServiceFigures {
        ServiceFigures {
            events: self.events - o.events,
            commits: self.commits - o.commits,
            commit_seconds: self.commit_seconds - o.commit_seconds,
            acks: self.acks - o.acks,
            ack_seconds: self.ack_seconds - o.ack_seconds,
        }
    }
}

/// Reads until `needle` has arrived; drops what came before it.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &str) {
    loop {
        if let Some(at) = buf
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
        {
            buf.drain(..at + needle.len());
            return;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {needle} from the server"))
            .unwrap();
        assert!(n > 0, "closed while waiting for {needle}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A raw c2s connection logged in as `user`, bound and available.
async fn raw_login(c2s_port: u16, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", c2s_port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                  xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
    let mut buf = Vec::new();
    stream.write_all(header.as_bytes()).await.unwrap();
    read_until(&mut stream, &mut buf, "</stream:features>").await;
    let token = common::base64(format!("\0{user}\0{PASS}").as_bytes());
    stream
        .write_all(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    read_until(&mut stream, &mut buf, "<success").await;
    stream.write_all(header.as_bytes()).await.unwrap();
    read_until(&mut stream, &mut buf, "</stream:features>").await;
    stream
        .write_all(
            b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
              <resource>Spark flood</resource></bind></iq><presence/>",
        )
        .await
        .unwrap();
    read_until(&mut stream, &mut buf, "</iq>").await;
    stream
}

/// The flood: `flooder` writes chat messages to `sink` until `stop`, as fast as its connection
/// takes them; its acks are read (and counted) by a second task so its own buffer never fills.
/// Returns (messages written, acks received).
async fn flood(c2s_port: u16, stop: Arc<AtomicBool>) -> (u64, u64) {
    let stream = raw_login(c2s_port, "flooder").await;
    let (mut reader, mut writer) = stream.into_split();
    let acked = Arc::new(AtomicU64::new(0));
    let reading = {
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 64 * 1024];
            let mut tail = Vec::new();
            // The ack's body is JSON ({"msgType":"10013",...}), escaped; an id such as f10013
            // is not followed by an escaped quote.
            let needle = b"10013&quot;";
            loop {
                let n =
                    match tokio::time::timeout(Duration::from_millis(500), reader.read(&mut chunk))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => n,
                        Ok(_) => break,
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        Err(_) => continue,
                    };
                tail.extend_from_slice(&chunk[..n]);
                let found = tail.windows(needle.len()).filter(|w| w == needle).count();
                acked.fetch_add(found as u64, Ordering::Relaxed);
                let keep = tail.len().saturating_sub(needle.len() - 1);
                tail.drain(..keep);
            }
        })
    };
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut batch = String::new();
        for _ in 0..50 {
            batch.push_str(&format!(
                "<message id='f{written}' type='chat' to='sink@localhost'><body>flood {written}</body></message>"
            ));
            written += 1;
        }
        if writer.write_all(batch.as_bytes()).await.is_err() {
            break;
        }
    }
    // What was written is acked eventually; wait a little for the tail before counting.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < written && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reading.await;
    (written, acked.load(Ordering::Relaxed))
}

/// `count` messages from the probe to `peer`, one at a time: each one's send-to-ack time, and
/// after each a XEP-0199 ping to the server, whose round trip is Prosody's own share of a delay
/// (the ping never reaches readtrack).
async fn probe(client: &mut Client, phase: &str, count: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut acks = Vec::with_capacity(count);
    let mut pings = Vec::with_capacity(count);
    let limit = Instant::now() + PHASE_LIMIT;
    for i in 0..count {
        assert!(Instant::now() < limit, "{phase}: over {PHASE_LIMIT:?}");
        let id = format!("{phase}-{i}");
        let sent = Instant::now();
        client
            .send_raw(&format!(
                "<message id='{id}' type='chat' to='peer@localhost'><body>probe {i}</body></message>"
            ))
            .await;
        client
            .expect_message(Duration::from_secs(60), |s| {
                attr(s, "id").as_deref() == Some(id.as_str()) && s.contains("10013")
            })
            .await;
        acks.push(sent.elapsed());
        let sent = Instant::now();
        client.sync().await;
        pings.push(sent.elapsed());
    }
    (acks, pings)
}

#[derive(Debug)]
struct Summary {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn summary(mut took: Vec<Duration>) -> Summary {
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    Summary {
        p50_ms: ms(at(0.50)),
        p99_ms: ms(at(0.99)),
        max_ms: ms(*took.last().unwrap()),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not this bench's name skips it.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"fairness".contains(a.as_str()))
    {
        return;
    }
    let probes: usize = std::env::var("FAIR_PROBES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p = Prosody::start(ProsodyOpts {
        log_level: "info",
        ..ProsodyOpts::default()
    });
    for user in ["probe", "peer", "flooder", "sink"] {
        p.register(user, PASS);
    }
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let daemon = Daemon::start(&p, metrics_port);
    println!("fairness: {}, {probes} probes per phase", prosody_line());

    let (phases, flood_stats, flood_secs) = rt.block_on(async {
        let mut client = p.client("probe", PASS, "Spark probe").await;
        client.send_presence().await;
        client.sync().await;
        // Warm-up: the first messages create the users' records.
        probe(&mut client, "warm", 20).await;
        let mut phases = Vec::new();
        let before = scrape(metrics_port).await;
        let (acks, pings) = probe(&mut client, "base", probes).await;
        let after_base = scrape(metrics_port).await;
        phases.push(("baseline", acks, pings, after_base - before));

        let stop = Arc::new(AtomicBool::new(false));
        let flooding = tokio::spawn(flood(p.c2s_port, stop.clone()));
        // Let the flood reach its pace before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        let before = scrape(metrics_port).await;
        let (acks, pings) = probe(&mut client, "flood", probes).await;
        let after_flood = scrape(metrics_port).await;
        phases.push(("during flood", acks, pings, after_flood - before));
        let flood_secs = started.elapsed().as_secs_f64() + 2.0;
        stop.store(true, Ordering::Relaxed);
        let flood_stats = flooding.await.unwrap();

        let before = scrape(metrics_port).await;
        let (acks, pings) = probe(&mut client, "after", probes).await;
        let after = scrape(metrics_port).await;
        phases.push(("baseline after", acks, pings, after - before));
        (phases, flood_stats, flood_secs)
    });
    let (written, acked) = flood_stats;
    println!(
        "flood: {written} messages written, {acked} acked, {:.0} msg/s over {flood_secs:.1} s",
        written as f64 / flood_secs
    );
    println!(
        "{:<16} {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>12} {:>10} {:>10}",
        "probe",
        "ack p50",
        "ack p99",
        "ack max",
        "ping p50",
        "ping p99",
        "events/batch",
        "commit ms",
        "rt ack ms"
    );
    let mut rows = Vec::new();
    for (phase, acks, pings, figures) in phases {
        let (a, g) = (summary(acks), summary(pings));
        let per_batch = figures.events / figures.commits.max(1.0);
        let commit_ms = 1e3 * figures.commit_seconds / figures.commits.max(1.0);
        let rt_ack_ms = 1e3 * figures.ack_seconds / figures.acks.max(1.0);
        println!(
            "{phase:<16} {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>8.2} | {per_batch:>12.1} {commit_ms:>10.2} {rt_ack_ms:>10.2}",
            a.p50_ms, a.p99_ms, a.max_ms, g.p50_ms, g.p99_ms
        );
        rows.push(serde_json::json!({
            "phase": phase,
            "ack_ms": { "p50": a.p50_ms, "p99": a.p99_ms, "max": a.max_ms },
            "ping_ms": { "p50": g.p50_ms, "p99": g.p99_ms, "max": g.max_ms },
            "events_per_batch": per_batch,
            "commit_ms_mean": commit_ms,
            "readtrack_ack_ms_mean": rt_ack_ms,
        }));
    }
    let json = serde_json::json!({
        "prosody": prosody_line().version,
        "probes": probes,
        "flood": { "written": written, "acked": acked, "seconds": flood_secs },
        "phases": rows,
    });
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/readtrack-fairness.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("-> {}", out.display());
    assert!(
        !daemon.log().contains("disconnected from the server"),
        "the component link dropped during the run:\n{}",
        daemon.log()
    );
}

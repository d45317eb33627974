//! The real `readtrack` binary as a child process beside a test [`Prosody`](super::Prosody), on
//! the store backend the run selects ([`super::backend::test_location`]: sled, or a fresh
//! PostgreSQL database with `READTRACK_TEST_BACKEND=postgres`).

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use readtrack::store::Location;

use super::Prosody;

/// Settings written into the generated readtrack.toml.
#[derive(Debug, Clone)]
pub struct ReadtrackOpts {
    /// `receipts.dialect`; empty leaves the key out, so readtrack's own default applies.
    pub dialect: &'static str,
    pub timeout: &'static str,
    pub require: &'static str,
    pub history: u64,
    /// Raw TOML appended (whole sections).
    pub extra: String,
    /// Where the store lives; `None`: where the run's backend puts it
    /// ([`super::backend::test_location`]).
    pub store: Option<Location>,
}

impl Default for ReadtrackOpts {
    fn default() -> Self {
        ReadtrackOpts {
            dialect: "seed",
            timeout: "2s",
            require: "all",
            history: 100,
            extra: String::new(),
            store: None,
        }
    }
}

pub struct Readtrack {
    dir: tempfile::TempDir,
    location: Location,
    child: Option<Child>,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_readtrack"))
}

impl Readtrack {
    /// Writes a config for `prosody`, starts `readtrack serve` and waits until it is connected.
    pub fn start(prosody: &Prosody, opts: ReadtrackOpts) -> Readtrack {
        let dir = tempfile::tempdir().expect("temp dir");
        let location = opts
            .store
            .clone()
            .unwrap_or_else(|| super::backend::test_location(&dir.path().join("data")));
        let config = format!(
            "[xmpp]\ndomain = \"{domain}\"\ncomponent = \"{component}\"\nconnect = \"127.0.0.1:{port}\"\nsecret = \"{secret}\"\n\n\
             [store]\n{store}\n\n[admin]\nsocket = \"readtrack.sock\"\n\n\
             [receipts]\n{dialect}timeout = \"{timeout}\"\nrequire = \"{require}\"\n\n\
             [devices]\nhistory = {history}\n\n{extra}\n",
            domain = prosody.domain(),
            component = prosody.component_domain(),
            port = prosody.component_port,
            secret = prosody.secret(),
            store = store_section(&location),
            dialect = if opts.dialect.is_empty() {
                String::new()
            } else {
                format!("dialect = \"{}\"\n", opts.dialect)
            },
            timeout = opts.timeout,
            require = opts.require,
            history = opts.history,
            extra = opts.extra,
        );
        std::fs::write(dir.path().join("readtrack.toml"), config).unwrap();
        let mut r = Readtrack {
            dir,
            location,
            child: None,
        };
        r.spawn();
        r
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("readtrack.toml")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("readtrack.sock")
    }

    /// Where this instance's store lives (a sled folder, or a PostgreSQL database).
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("readtrack.log")
    }

    /// Everything readtrack logged, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The address readtrack logged for its metrics endpoint (configured on port 0).
    pub fn metrics_addr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if let Some(addr) = log
                .lines()
                .find_map(|l| l.split("metrics endpoint ready at http://").nth(1))
                .and_then(|rest| rest.split('/').next())
            {
                return addr.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no metrics endpoint in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn connections(&self) -> usize {
        self.log()
            .matches("connected to the server; waiting")
            .count()
    }

    fn spawn(&mut self) {
        let before = self.connections();
        // On PostgreSQL a process killed while it held the store keeps it for its lease (see
        // `store_section`): like a supervisor, start again until that lease has run out.
        let lease_ends = Instant::now() + PG_TEST_LEASE + Duration::from_secs(5);
        loop {
            let refusals = self.lease_refusals();
            self.start_process();
            match self.wait_started() {
                Ok(()) => break,
                Err(_) if self.lease_refusals() > refusals && Instant::now() < lease_ends => {
                    self.child = None;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(status) => panic!(
                    "readtrack exited ({status}) before connecting\n--- log ---\n{}",
                    self.log()
                ),
            }
        }
        self.wait_connected(before + 1);
    }

    fn start_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info,readtrack=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn readtrack");
        self.child = Some(child);
    }

    /// Waits until the process opened its store (it says "readtrack starting"), or returns its
    /// exit status when it exits first.
    fn wait_started(&mut self) -> Result<(), ExitStatus> {
        let starts = self.log().matches("readtrack starting").count();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                return Err(status);
            }
            if self.log().matches("readtrack starting").count() > starts
                || Instant::now() > deadline
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// How often a start was refused because another process held the PostgreSQL store.
    fn lease_refusals(&self) -> usize {
        self.log().matches("is in use by").count()
    }

    /// Waits until readtrack has connected to the server `n` times in all.
    pub fn wait_connected(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.connections() < n {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "readtrack exited ({status}) before connecting\n--- log ---\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "readtrack did not connect in 20 s\n--- log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        // The module sends its session snapshot right after the handshake; give it a moment
        // to be applied so tests do not race it.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// SIGKILL: no flush, no goodbye. A process that already exited (and was reaped by
    /// [`Readtrack::exited`]) is only reaped here.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
            }
            child.wait().unwrap();
        }
    }

    /// `Some(status)` when the process has exited on its own (a crash of its own, not one we
    /// caused); `None` while it runs or after [`Readtrack::kill`]/[`Readtrack::stop`] reaped it.
    /// A crash loop must tell "we killed it" from "it died": `kill` alone cannot, since
    /// SIGKILL to an exited but unreaped child still succeeds.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Process id of the running service, for messages that name the instance.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait: the clean shutdown path.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "readtrack did not stop in 10 s after SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// Runs a CLI command with this instance's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .expect("run readtrack CLI")
    }

    /// `readtrack cursors JID --json`, parsed; `None` while readtrack does not know the user
    /// yet (the service learns a user from the server's events, which may still be in flight).
    #[allow(dead_code)] // not every test binary waits for a user
    pub fn cursors_once_known(&self, user: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["cursors", user, "--json"]);
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown user") {
            return None;
        }
        Some(self.parse_cursors(user, out))
    }

    /// `readtrack cursors JID --json`, parsed.
    pub fn cursors(&self, user: &str) -> serde_json::Value {
        let out = self.cli(&["cursors", user, "--json"]);
        self.parse_cursors(user, out)
    }

    fn parse_cursors(&self, user: &str, out: Output) -> serde_json::Value {
        assert!(
            out.status.success(),
            "cursors {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cursors --json is JSON")
    }

    /// Polls `cursors` until `device`'s `acked_upto` is `want` (or fails after 5 s).
    pub fn wait_acked(&self, user: &str, device: &str, want: u64) {
        self.wait_device(user, device, &format!("acked_upto {want}"), |d| {
            d["acked_upto"].as_u64() == Some(want)
        });
    }

    /// Polls `cursors` until readtrack has `device` online (or fails after 5 s).
    pub fn wait_online(&self, user: &str, device: &str) {
        self.wait_device(user, device, "online", |d| d["online"] == true);
    }

    /// Polls `cursors` until `device`'s entry satisfies `pred` (or fails after 5 s, saying `want`).
    pub fn wait_device(
        &self,
        user: &str,
        device: &str,
        want: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let c = self.cursors(user);
            let found = c["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["device"] == device);
            if found.is_some_and(&pred) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{user}/{device}: want {want}, have {found:?}: {c}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The PostgreSQL lease of a test's service: short, because a test that kills the service
/// waits this long before the next one may take the store.
pub const PG_TEST_LEASE: Duration = Duration::from_secs(1);

/// The `[store]` section's keys for `location`.
pub fn store_section(location: &Location) -> String {
    match location {
        Location::Sled(path) => format!("path = \"{}\"", path.display()),
        Location::Postgres(url) => format!(
            "backend = \"postgres\"\nurl = \"{url}\"\nlease_seconds = {}",
            PG_TEST_LEASE.as_secs()
        ),
    }
}

impl Drop for Readtrack {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- readtrack log (last 60 lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

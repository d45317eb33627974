//! End-to-end harness: a throwaway Prosody on loopback, a minimal XMPP client and a raw XEP-0114
//! component connection. Real processes and real sockets; nothing here is mocked.
//!
//! Each [`Prosody`] lives in its own temp dir with its own free ports, so tests run in parallel.
//! The stanza splitter below is private to the harness on purpose: it must keep working while the
//! crate's own framer is being written, and a bug there must not hide behind a bug here.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod backend;
pub mod daemon;
pub mod xmltree;

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DOMAIN: &str = "localhost";
pub const COMPONENT: &str = "readtrack.localhost";
pub const SECRET: &str = "s3cret-for-tests";
/// Default wait for something that should happen promptly on loopback.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to listen when proving that something does *not* arrive.
pub const QUIET: Duration = Duration::from_millis(800);

const INSTALL_HINT: &str = "install Prosody: apt-get install -y prosody";

/// What to put in the generated Prosody config.
#[derive(Debug, Clone)]
pub struct ProsodyOpts {
    pub domain: String,
    pub component: String,
    pub secret: String,
    /// Load mod_readtrack on the VirtualHost.
    pub readtrack: bool,
    /// Extra global modules, e.g. `"mam"`, `"smacks"`, `"carbons"`.
    pub extra_modules: Vec<String>,
    /// Raw Lua appended to the global section (before the VirtualHost).
    pub extra_global: String,
    /// Raw Lua appended to the VirtualHost section.
    pub extra_host: String,
    /// Lowest level written to the log file (`prosody.log`): tests keep `debug` for their
    /// failure reports, the load bench runs with `info` as a production server would.
    pub log_level: &'static str,
    /// mod_mam (XEP-0313), archiving every chat by default and keeping it: what an operator of
    /// modern clients runs, and what lets a test compare a replay with the archive.
    pub mam: bool,
    /// mod_carbons (XEP-0280).
    pub carbons: bool,
    /// mod_smacks (XEP-0198).
    pub smacks: bool,
    /// mod_blocklist (XEP-0191).
    pub blocklist: bool,
    /// `smacks_hibernation_time` in seconds. Short by default, so a dropped connection unbinds
    /// its resource promptly; a test of resumption needs time to resume in.
    pub smacks_hibernation_time: u32,
}

impl ProsodyOpts {
    /// The defaults plus one of the test-only modules of `tests/prosody/` (a probe), loaded
    /// globally, with that folder beside mod_readtrack's on the plugin path.
    pub fn with_test_module(module: &str) -> ProsodyOpts {
        let probes = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/prosody");
        ProsodyOpts {
            extra_modules: vec![module.to_string()],
            extra_global: format!(
                "plugin_paths = {{ {:?}, {:?} }}\n",
                plugin_dir().display().to_string(),
                probes.display().to_string()
            ),
            ..ProsodyOpts::default()
        }
    }
}

impl Default for ProsodyOpts {
    fn default() -> Self {
        ProsodyOpts {
            domain: DOMAIN.to_string(),
            component: COMPONENT.to_string(),
            secret: SECRET.to_string(),
            readtrack: true,
            extra_modules: Vec::new(),
            extra_global: String::new(),
            extra_host: String::new(),
            log_level: "debug",
            mam: false,
            carbons: false,
            smacks: false,
            blocklist: false,
            smacks_hibernation_time: 1,
        }
    }
}

impl ProsodyOpts {
    /// The modules a server for today's clients runs: archive, carbons, stream management and
    /// blocking, with a hibernation long enough to resume in; and the admin shell, through which
    /// Prosody 13's prosodyctl manages accounts ([`Prosody::deluser`]).
    pub fn modern() -> ProsodyOpts {
        ProsodyOpts {
            mam: true,
            carbons: true,
            smacks: true,
            blocklist: true,
            smacks_hibernation_time: 5,
            extra_modules: vec!["admin_shell".into()],
            ..ProsodyOpts::default()
        }
    }

    /// The global modules these options ask for, besides `extra_modules`.
    fn optional_modules(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.mam, "mam"),
            (self.carbons, "carbons"),
            (self.smacks, "smacks"),
            (self.blocklist, "blocklist"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
    }
}

/// A running Prosody. Dropping it kills the process and removes its directory.
pub struct Prosody {
    pub opts: ProsodyOpts,
    pub c2s_port: u16,
    pub component_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A loopback port for a server the harness starts, never handed out twice by this process.
///
/// Asking the kernel for port 0 twice in a row can give the same port once the first listener is
/// closed (CI saw c2s and component collide that way), and any outgoing connection may take an
/// ephemeral port between the pick and the server's bind. So the ports come from below the
/// kernel's ephemeral range, from a cursor shared by every test thread and started at a place
/// that depends on the process, and each is checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    const LOW: u32 = 10_000;
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let high = ephemeral_low().clamp(LOW + 1_000, 65_535);
    let span = high - LOW;
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(97) % span));
    for _ in 0..span {
        let offset = next.fetch_add(1, Ordering::SeqCst) % span;
        let port = (LOW + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {high}");
}

/// The first port of the kernel's ephemeral range (Linux's default is 32768).
pub fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn require_binary(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` not found on PATH: {INSTALL_HINT}");
}

/// Selects the Prosody the tests run against. Unset (or `system`): `prosody` and `prosodyctl` on
/// PATH, Debian's 0.12. `13`: the copy `scripts/prosody13` unpacks into target/prosody13. Any
/// other value: the path of a `prosody` launcher with its `prosodyctl` beside it.
pub const PROSODY_ENV: &str = "READTRACK_PROSODY";

/// The Prosody every test of this process runs against, named in each test's output so that a
/// failure says which line it happened on.
#[derive(Debug)]
pub struct ProsodyLine {
    pub prosody: PathBuf,
    pub prosodyctl: PathBuf,
    /// As the launcher's source folder says (`prosody.version`), e.g. `0.12.3` or `13.0.1`.
    pub version: String,
}

impl std::fmt::Display for ProsodyLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prosody {} ({})", self.version, self.prosody.display())
    }
}

/// The selected line, resolved once per test binary. A selection that is not there panics in
/// every test that needs Prosody, with how to get it.
pub fn prosody_line() -> &'static ProsodyLine {
    static LINE: std::sync::OnceLock<ProsodyLine> = std::sync::OnceLock::new();
    LINE.get_or_init(|| ProsodyLine::resolve(&std::env::var(PROSODY_ENV).unwrap_or_default()))
}

impl ProsodyLine {
    /// The line a value of [`PROSODY_ENV`] selects; panics, saying how to get it, when it is not
    /// there.
    pub fn resolve(chosen: &str) -> ProsodyLine {
        let (prosody, prosodyctl) = match chosen {
            "" | "system" => (require_binary("prosody"), require_binary("prosodyctl")),
            other => {
                let prosody = if other == "13" {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/prosody13/usr/bin/prosody")
                } else {
                    PathBuf::from(other)
                };
                let prosodyctl = prosody.with_file_name("prosodyctl");
                for p in [&prosody, &prosodyctl] {
                    assert!(
                        p.is_file(),
                        "{PROSODY_ENV}={other}: {} is not there. Prosody 13 is unpacked into \
                         target/prosody13 by scripts/prosody13 (scripts/test runs it; it needs \
                         root or sudo once, to add Debian's bookworm-backports to apt)",
                        p.display()
                    );
                }
                (prosody, prosodyctl)
            }
        };
        let version = launcher_version(&prosody).unwrap_or_else(|| "(version unknown)".into());
        if chosen == "13" {
            assert!(
                version.starts_with("13."),
                "{PROSODY_ENV}=13 selects {}, which is Prosody {version}: rerun scripts/prosody13",
                prosody.display()
            );
        }
        ProsodyLine {
            prosody,
            prosodyctl,
            version,
        }
    }
}

/// Prosody's launcher is a Lua script that names its source folder (`CFG_SOURCEDIR='...'`), where
/// the package keeps `prosody.version`. Read rather than asked: 0.12's `prosody --version` starts
/// the server.
fn launcher_version(launcher: &Path) -> Option<String> {
    let script = std::fs::read_to_string(launcher).ok()?;
    let line = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("CFG_SOURCEDIR="))?;
    let dir = line
        .trim_end_matches(';')
        .trim_matches(|c| c == '\'' || c == '"');
    let version = std::fs::read_to_string(Path::new(dir).join("prosody.version")).ok()?;
    Some(version.trim().to_string())
}

fn lua_str(s: &str) -> String {
    format!("{s:?}") // Rust's escaping is a subset Lua accepts for the ASCII we generate
}

/// The folder of Prosody's Lua sources a launcher uses (its `CFG_SOURCEDIR`).
pub fn prosody_sources(launcher: &Path) -> PathBuf {
    let text = std::fs::read_to_string(launcher).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/test (it installs Prosody 0.12 and unpacks 13)",
            launcher.display()
        )
    });
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("CFG_SOURCEDIR"))
        .unwrap_or_else(|| panic!("{}: no CFG_SOURCEDIR", launcher.display()));
    let value = line.split_once('=').map(|(_, v)| v).unwrap_or("");
    let value = value.split("--").next().unwrap_or("").trim();
    let value = value
        .trim_end_matches(';')
        .trim()
        .trim_matches(|c| c == '\'' || c == '"');
    PathBuf::from(value)
}

/// Absolute path of contrib/prosody in this checkout.
pub fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prosody")
}

impl Prosody {
    /// Writes a config into a fresh temp dir and starts Prosody as the `prosody` user.
    pub fn start(opts: ProsodyOpts) -> Prosody {
        // Shown with the test's output when it fails: which Prosody line the failure is on.
        eprintln!("readtrack test harness: {}", prosody_line());
        let dir = tempfile::Builder::new()
            .prefix("readtrack-prosody-")
            .tempdir()
            .expect("temp dir");
        let mut p = Prosody {
            opts,
            c2s_port: free_port(),
            component_port: free_port(),
            dir,
            child: None,
        };
        for sub in ["data", "certs"] {
            std::fs::create_dir_all(p.dir.path().join(sub)).unwrap();
        }
        std::fs::write(p.config_path(), p.config_text()).unwrap();
        p.chown();
        p.spawn();
        p
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("prosody.cfg.lua")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prosody.log")
    }
    pub fn domain(&self) -> &str {
        &self.opts.domain
    }
    pub fn component_domain(&self) -> &str {
        &self.opts.component
    }
    pub fn secret(&self) -> &str {
        &self.opts.secret
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn config_text(&self) -> String {
        let d = self.dir.path().display().to_string();
        let mut modules = vec!["roster", "saslauth", "disco", "ping"];
        for m in self.opts.optional_modules() {
            modules.push(m);
        }
        modules.extend(self.opts.extra_modules.iter().map(String::as_str));
        let modules: Vec<String> = modules.iter().map(|m| lua_str(m)).collect();
        let mut c = String::new();
        let _ = write!(
            c,
            r#"-- generated by tests/common/mod.rs
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
certificates = "{d}/certs"
log = {{ {level} = "{d}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ }}
component_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {comp} }}
plugin_paths = {{ {plugins} }}
modules_enabled = {{ {modules} }}
modules_disabled = {{ "s2s", "tls" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
smacks_hibernation_time = {hibernation}
{mam}{extra_global}
VirtualHost {domain}
{readtrack}
{extra_host}
Component {component}
    component_secret = {secret}
"#,
            level = self.opts.log_level,
            c2s = self.c2s_port,
            comp = self.component_port,
            plugins = lua_str(&plugin_dir().display().to_string()),
            modules = modules.join(", "),
            hibernation = self.opts.smacks_hibernation_time,
            mam = if self.opts.mam {
                "archive_expires_after = \"never\"\ndefault_archive_policy = true\n"
            } else {
                ""
            },
            extra_global = self.opts.extra_global,
            domain = lua_str(&self.opts.domain),
            readtrack = if self.opts.readtrack {
                format!(
                    "    modules_enabled = {{ \"readtrack\" }}\n    readtrack_component = {}",
                    lua_str(&self.opts.component)
                )
            } else {
                String::new()
            },
            extra_host = self.opts.extra_host,
            component = lua_str(&self.opts.component),
            secret = lua_str(&self.opts.secret),
        );
        c
    }

    fn chown(&self) {
        let status = Command::new("chown")
            .args(["-R", "prosody:prosody"])
            .arg(self.dir.path())
            .status()
            .expect("run chown");
        assert!(status.success(), "chown prosody: {status}");
    }

    fn spawn(&mut self) {
        // Truncated per start so a restart's log is its own.
        let log_path = self.log_path();
        let _ = std::fs::remove_file(&log_path);
        let child = Command::new("runuser")
            .args(["-u", "prosody", "--"])
            .arg(&prosody_line().prosody)
            .args(["-F", "--config"])
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.path().join("stderr.txt")).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn prosody ({e}): {INSTALL_HINT}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited during start ({status})\n--- stderr ---\n{}\n--- log ---\n{}",
                    prosody_line(),
                    std::fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default(),
                    self.log()
                );
            }
            let up = [self.c2s_port, self.component_port]
                .iter()
                .all(|port| StdTcpStream::connect(("127.0.0.1", *port)).is_ok());
            // The component port opens after the hosts are configured, but modules log as they
            // load: wait for the readtrack module too, so no test races its hooks.
            let loaded = !self.opts.readtrack || self.log().contains("readtrack loaded");
            if up && loaded {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not come up in 20 s\n--- log ---\n{}",
                    prosody_line(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates an account with `prosodyctl register`; works while Prosody runs.
    pub fn register(&self, user: &str, pass: &str) {
        let out = Command::new("runuser")
            .args(["-u", "prosody", "--"])
            .arg(&prosody_line().prosodyctl)
            .arg("--config")
            .arg(self.config_path())
            .args(["register", user, &self.opts.domain, pass])
            .output()
            .unwrap_or_else(|e| panic!("run prosodyctl ({e}): {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "prosodyctl register {user} ({}): {}\n{}{}",
            prosody_line(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Deletes an account with `prosodyctl deluser`. Prosody 0.12's prosodyctl edits the
    /// storage from its own process: the running server hears nothing of it. Prosody 13's asks
    /// the running server through its admin shell (load `admin_shell`), which deletes the account
    /// itself.
    pub fn deluser(&self, user: &str) {
        let jid = format!("{user}@{}", self.opts.domain);
        let out = Command::new("runuser")
            .args(["-u", "prosody", "--"])
            .arg(&prosody_line().prosodyctl)
            .arg("--config")
            .arg(self.config_path())
            .args(["deluser", &jid])
            .output()
            .unwrap_or_else(|e| panic!("run prosodyctl ({e}): {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "prosodyctl deluser {jid} ({}): {}\n{}{}",
            prosody_line(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reloads `module` on the test host, as an operator does after replacing a module's file:
    /// `prosodyctl shell module reload MODULE HOST`, through the admin shell (load
    /// `admin_shell`). Returns the shell's output.
    pub fn reload_module(&self, module: &str) -> String {
        let out = Command::new("runuser")
            .args(["-u", "prosody", "--"])
            .arg(&prosody_line().prosodyctl)
            .arg("--config")
            .arg(self.config_path())
            .args(["shell", "module", "reload", module, &self.opts.domain])
            .output()
            .unwrap_or_else(|e| panic!("run prosodyctl ({e}): {INSTALL_HINT}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The shell's answer on success (mod_admin_shell, 0.12 and 13); otherwise "Last error".
        assert!(
            out.status.success() && text.contains("Module reloaded on 1 host"),
            "prosodyctl shell module reload {module} ({}): {}\n{text}",
            prosody_line(),
            out.status
        );
        text
    }

    /// Kills Prosody (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // runuser forwards SIGTERM to prosody, which shuts down cleanly.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops and starts again on the same ports, config and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Connects a client for `user` (password `pass`) with the given resource.
    pub async fn client(&self, user: &str, pass: &str, resource: &str) -> Client {
        Client::connect_to(self.c2s_port, &self.opts.domain, user, pass, resource).await
    }

    /// Connects and authenticates a raw component as this server's configured component.
    pub async fn connect_component(&self) -> RawComponent {
        RawComponent::connect(self.component_port, &self.opts.component, &self.opts.secret).await
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                prosody_line(),
                self.log_path().display(),
                tail(&self.log(), 200)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Stanza splitting

/// One top-level item of an XMPP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The `<stream:stream ...>` open tag, as text.
    Open(String),
    /// One complete stanza (or `<stream:features>`, `<handshake/>`...), as text.
    Stanza(String),
    Close,
}

/// Finds the end of the tag starting at `buf[0] == '<'`, skipping quoted attribute values.
fn tag_end(buf: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

/// Cuts one item off the front of `buf`. `Ok(None)` means: need more bytes.
pub fn split_item(buf: &[u8]) -> Result<Option<(Item, usize)>, String> {
    let start = match buf.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(s) => s,
        None => return Ok(None),
    };
    let rest = &buf[start..];
    if rest[0] != b'<' {
        return Err(format!(
            "text at stream level: {:?}",
            String::from_utf8_lossy(rest)
        ));
    }
    if rest.starts_with(b"<?") {
        // A declaration carries nothing a test needs: skip it and cut the next item.
        let Some(e) = find(rest, b"?>") else {
            return Ok(None);
        };
        let skip = start + e + 2;
        return Ok(split_item(&buf[skip..])?.map(|(item, n)| (item, skip + n)));
    }
    if rest.starts_with(b"</stream:stream") {
        return Ok(tag_end(rest).map(|e| (Item::Close, start + e + 1)));
    }
    if rest.starts_with(b"<stream:stream") {
        return Ok(tag_end(rest).map(|e| {
            (
                Item::Open(String::from_utf8_lossy(&rest[..=e]).into_owned()),
                start + e + 1,
            )
        }));
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < rest.len() {
        if rest[i] != b'<' {
            i += 1;
            continue;
        }
        let here = &rest[i..];
        if here.starts_with(b"<!--") {
            match find(here, b"-->") {
                Some(e) => i += e + 3,
                None => return Ok(None),
            }
            continue;
        }
        if here.starts_with(b"<![CDATA[") {
            match find(here, b"]]>") {
                Some(e) => i += e + 3,
                None => return Ok(None),
            }
            continue;
        }
        let Some(e) = tag_end(here) else {
            return Ok(None);
        };
        if here.get(1) == Some(&b'/') {
            depth = depth
                .checked_sub(1)
                .ok_or_else(|| "unbalanced close tag".to_string())?;
        } else if here[e - 1] != b'/' {
            depth += 1;
        }
        i += e + 1;
        if depth == 0 {
            let text = String::from_utf8_lossy(&rest[..i]).into_owned();
            return Ok(Some((Item::Stanza(text), start + i)));
        }
    }
    Ok(None)
}

/// A TCP connection carrying an XMPP stream, read item by item.
pub struct XmlConn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
    /// Stanzas read while looking for something else, handed out first by `next_stanza`.
    backlog: std::collections::VecDeque<String>,
    /// Cut a `<message>` holding several hook events into one message per event
    /// ([`unbatch`]); set by [`RawComponent::connect`].
    unbatch: bool,
    /// The events of a cut message after the first, handed out by `next_item` before it reads
    /// again: they arrived, in this order.
    arrived: std::collections::VecDeque<String>,
}

impl XmlConn {
    pub async fn connect(port: u16) -> XmlConn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        XmlConn {
            stream,
            buf: Vec::new(),
            closed: false,
            backlog: Default::default(),
            unbatch: false,
            arrived: Default::default(),
        }
    }

    pub async fn send_raw(&mut self, xml: &str) {
        self.stream
            .write_all(xml.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write {xml:?}: {e}"));
    }

    /// The next stream item, or `None` on timeout or end of stream.
    pub async fn next_item(&mut self, timeout: Duration) -> Option<Item> {
        if let Some(s) = self.arrived.pop_front() {
            return Some(Item::Stanza(s));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match split_item(&self.buf) {
                Ok(Some((Item::Stanza(s), used))) if self.unbatch => {
                    self.buf.drain(..used);
                    self.arrived.extend(unbatch(&s));
                    let first = self
                        .arrived
                        .pop_front()
                        .expect("a stanza is at least itself");
                    return Some(Item::Stanza(first));
                }
                Ok(Some((item, used))) => {
                    self.buf.drain(..used);
                    return Some(item);
                }
                Ok(None) => {}
                Err(e) => panic!(
                    "bad XML from server ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
            if self.closed {
                return None;
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next stanza, or `None` on timeout or end of stream. A stream close ends the stream.
    pub async fn next_stanza(&mut self, timeout: Duration) -> Option<String> {
        if let Some(s) = self.backlog.pop_front() {
            return Some(s);
        }
        match self.next_item(timeout).await? {
            Item::Stanza(s) => Some(s),
            Item::Close => {
                self.closed = true;
                None
            }
            Item::Open(o) => panic!("unexpected stream restart: {o}"),
        }
    }

    /// Waits for the first stanza matching `pred`; others are kept and handed out later by
    /// `next_stanza`. Panics on timeout, listing what did arrive.
    pub async fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut skipped = Vec::new();
        // Look through the backlog first, keeping the order of what stays.
        let mut kept = std::collections::VecDeque::new();
        let mut found = None;
        while let Some(s) = self.backlog.pop_front() {
            if found.is_none() && pred(&s) {
                found = Some(s);
            } else {
                kept.push_back(s);
            }
        }
        self.backlog = kept;
        if let Some(s) = found {
            return s;
        }
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let item = if left.is_zero() {
                None
            } else {
                self.next_item(left).await
            };
            match item {
                Some(Item::Stanza(s)) if pred(&s) => {
                    self.backlog.extend(skipped);
                    return s;
                }
                Some(Item::Stanza(s)) => skipped.push(s),
                Some(other) => panic!("waiting for {what}: unexpected {other:?}"),
                None => panic!(
                    "timed out after {timeout:?} waiting for {what}; received instead: {skipped:#?}"
                ),
            }
        }
    }

    /// Everything that arrives within `window` (plus the backlog).
    pub async fn drain(&mut self, window: Duration) -> Vec<String> {
        let mut out: Vec<String> = self.backlog.drain(..).collect();
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.next_item(left).await {
                Some(Item::Stanza(s)) => out.push(s),
                Some(Item::Close) | None => return out,
                Some(Item::Open(o)) => panic!("unexpected stream restart: {o}"),
            }
        }
    }

    /// Sends the stream close and waits (briefly) for the peer's.
    pub async fn close(&mut self) {
        if self.closed {
            return;
        }
        let _ = self.stream.write_all(b"</stream:stream>").await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.closed {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next_item(left).await {
                Some(Item::Close) | None => break,
                Some(_) => {}
            }
        }
        let _ = self.stream.shutdown().await;
        self.closed = true;
    }

    /// Reads the peer's stream header.
    async fn expect_open(&mut self) -> String {
        match self.next_item(WAIT).await {
            Some(Item::Open(o)) => o,
            other => panic!("expected a stream header, got {other:?}"),
        }
    }
}

/// The value of attribute `name` on the first tag of `xml` (no entity decoding beyond the five
/// predefined ones). Good enough for test assertions on server output.
pub fn attr(xml: &str, name: &str) -> Option<String> {
    let end = tag_end(xml.as_bytes())?;
    let tag = &xml[..end];
    for q in ['"', '\''] {
        let pat = format!(" {name}={q}");
        if let Some(i) = tag.find(&pat) {
            let v = &tag[i + pat.len()..];
            let v = &v[..v.find(q)?];
            return Some(unescape(v));
        }
    }
    None
}

/// The name of the first tag of `xml` (`message`, `iq`, `presence`...).
pub fn name(xml: &str) -> &str {
    let t = xml.trim_start().trim_start_matches('<');
    let end = t
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(t.len());
    &t[..end]
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Client

/// A minimal c2s client: SASL PLAIN over plain TCP, resource binding, raw stanzas.
pub struct Client {
    pub conn: XmlConn,
    /// The full JID the server bound.
    pub jid: String,
    sync_count: u32,
}

impl Client {
    /// `user` is a localpart on `localhost`, or `local@domain`.
    pub async fn connect(port: u16, user: &str, pass: &str, resource: &str) -> Client {
        match user.split_once('@') {
            Some((local, domain)) => Client::connect_to(port, domain, local, pass, resource).await,
            None => Client::connect_to(port, DOMAIN, user, pass, resource).await,
        }
    }

    pub async fn connect_to(
        port: u16,
        domain: &str,
        user: &str,
        pass: &str,
        resource: &str,
    ) -> Client {
        let (mut conn, _) = Client::authenticate(port, domain, user, pass).await;
        conn.send_raw(&format!(
            "<iq type='set' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{}</resource></bind></iq>",
            escape(resource)
        ))
        .await;
        let bound = conn
            .expect("bind result", WAIT, |s| {
                attr(s, "id").as_deref() == Some("bind-1")
            })
            .await;
        assert_eq!(
            attr(&bound, "type").as_deref(),
            Some("result"),
            "bind: {bound}"
        );
        let jid = bound
            .split_once("<jid>")
            .and_then(|(_, r)| r.split_once("</jid>"))
            .map(|(j, _)| unescape(j))
            .unwrap_or_else(|| panic!("no <jid> in bind result: {bound}"));
        Client {
            conn,
            jid,
            sync_count: 0,
        }
    }

    /// A new connection, authenticated (SASL PLAIN) and restarted, before any resource is
    /// bound (or a stream-management session resumed); with the features offered then.
    pub async fn authenticate(
        port: u16,
        domain: &str,
        user: &str,
        pass: &str,
    ) -> (XmlConn, String) {
        let mut conn = XmlConn::connect(port).await;
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
            escape(domain)
        );
        conn.send_raw(&header).await;
        conn.expect_open().await;
        let features = conn
            .expect("stream features", WAIT, |s| name(s) == "stream:features")
            .await;
        assert!(
            features.contains("PLAIN"),
            "server offers no SASL PLAIN: {features}"
        );
        let token = base64(format!("\0{user}\0{pass}").as_bytes());
        conn.send_raw(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        ))
        .await;
        let outcome = conn.next_stanza(WAIT).await.expect("SASL outcome");
        assert_eq!(
            name(&outcome),
            "success",
            "SASL PLAIN for {user}: {outcome}"
        );
        conn.send_raw(&header).await;
        conn.expect_open().await;
        let features = conn
            .expect("post-auth features", WAIT, |s| name(s) == "stream:features")
            .await;
        (conn, features)
    }

    /// Initial presence: the moment readtrack treats the device as available.
    pub async fn send_presence(&mut self) {
        self.conn.send_raw("<presence/>").await;
    }

    pub async fn send_raw(&mut self, xml: &str) {
        self.conn.send_raw(xml).await;
    }

    /// Round trip (XEP-0199 ping to the server): Prosody handles one session's stanzas in order,
    /// so everything sent before has been processed when this returns.
    pub async fn sync(&mut self) {
        self.sync_count += 1;
        let id = format!("sync-{}", self.sync_count);
        self.conn
            .send_raw(&format!(
                "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        let reply = self
            .conn
            .expect("ping reply", WAIT, |s| {
                attr(s, "id").as_deref() == Some(id.as_str())
            })
            .await;
        assert_eq!(attr(&reply, "type").as_deref(), Some("result"), "{reply}");
    }

    pub async fn next_stanza(&mut self, timeout: Duration) -> Option<String> {
        self.conn.next_stanza(timeout).await
    }

    /// The first `<message>` matching `pred`; other stanzas are kept for later.
    pub async fn expect_message(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.conn
            .expect("a matching <message>", timeout, |s| {
                name(s) == "message" && pred(s)
            })
            .await
    }

    /// Every `<message>` that arrives within `window` (presences and iqs are dropped).
    pub async fn messages_within(&mut self, window: Duration) -> Vec<String> {
        self.conn
            .drain(window)
            .await
            .into_iter()
            .filter(|s| name(s) == "message")
            .collect()
    }

    pub async fn close(&mut self) {
        self.conn.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Raw component

/// A bare XEP-0114 component connection, to drive and observe mod_readtrack without readtrack.
pub struct RawComponent {
    pub conn: XmlConn,
    pub domain: String,
}

/// The XEP-0114 handshake value: lowercase hex SHA-1 of stream id + secret.
pub fn handshake(stream_id: &str, secret: &str) -> String {
    let digest = Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl RawComponent {
    pub async fn connect(port: u16, domain: &str, secret: &str) -> RawComponent {
        let mut conn = XmlConn::connect(port).await;
        conn.send_raw(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
            escape(domain)
        ))
        .await;
        let open = conn.expect_open().await;
        let id = attr(&open, "id").unwrap_or_else(|| panic!("no stream id in {open}"));
        conn.send_raw(&format!(
            "<handshake>{}</handshake>",
            handshake(&id, secret)
        ))
        .await;
        let reply = conn.next_stanza(WAIT).await.expect("handshake reply");
        assert_eq!(reply.trim(), "<handshake/>", "component handshake refused");
        conn.unbatch = true;
        RawComponent {
            conn,
            domain: domain.to_string(),
        }
    }

    pub async fn send_raw(&mut self, xml: &str) {
        self.conn.send_raw(xml).await;
    }

    /// From now on, hands out the messages as the server wrote them, several hook events in
    /// one where it batched them, for a test of the batching itself. By default each event
    /// comes as a message of its own ([`unbatch`]), as a readtrack that does not say `batched`
    /// gets them, so the helpers that read one event per message work either way.
    pub fn keep_batches(&mut self) {
        self.conn.unbatch = false;
    }

    pub async fn next_stanza(&mut self, timeout: Duration) -> Option<String> {
        self.conn.next_stanza(timeout).await
    }

    pub async fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.conn.expect(what, timeout, pred).await
    }

    pub async fn drain(&mut self, window: Duration) -> Vec<String> {
        self.conn.drain(window).await
    }

    pub async fn close(&mut self) {
        self.conn.close().await;
    }

    /// Reads and drops everything until the stream ends: a sink that costs its server only the
    /// writes (the load bench's `LOAD_PROBE=1` component).
    pub async fn discard_all(mut self) {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = self.conn.stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// The namespace of mod_readtrack's events.
const NS_HOOK: &str = "urn:readtrack:hook:0";

/// A `<message>` as mod_readtrack writes it once readtrack said `batched` (several hook events
/// in one message), cut into the messages it writes otherwise: the same start tag around each
/// event, each event's text as it came. Anything else comes back whole. A message whose first
/// child is a hook event must hold hook events only, and nothing between them but whitespace:
/// anything else is a broken batch and fails the test.
pub fn unbatch(stanza: &str) -> Vec<String> {
    use quick_xml::events::Event;
    use quick_xml::name::ResolveResult;
    let whole = || vec![stanza.to_string()];
    let mut reader = quick_xml::NsReader::from_str(stanza);
    let mut depth = 0usize;
    let mut open_end = 0;
    // Each child of the message: where it starts and ends, and whether it is a hook event.
    let mut children: Vec<(usize, usize, bool)> = Vec::new();
    let mut text_between = false;
    loop {
        let before = reader.buffer_position() as usize;
        let (ns, event) = match reader.read_resolved_event() {
            Ok(read) => read,
            Err(e) => panic!("bad XML from the server ({e}): {stanza}"),
        };
        let hook = matches!(ns, ResolveResult::Bound(ns) if ns.as_ref() == NS_HOOK);
        let after = reader.buffer_position() as usize;
        match event {
            Event::Start(e) if depth == 0 => {
                if e.local_name().as_ref() != "message" {
                    return whole();
                }
                open_end = after;
                depth = 1;
            }
            Event::Start(_) => {
                if depth == 1 {
                    children.push((before, before, hook));
                }
                depth += 1;
            }
            Event::Empty(_) if depth == 0 => return whole(),
            Event::Empty(_) if depth == 1 => children.push((before, after, hook)),
            Event::End(_) => {
                depth -= 1;
                match (depth, children.last_mut()) {
                    (0, _) => break,
                    (1, Some(child)) => child.1 = after,
                    _ => {}
                }
            }
            Event::Text(t) if depth == 1 => {
                text_between |= !t.as_ref().bytes().all(|b| b.is_ascii_whitespace());
            }
            Event::Eof => panic!("a stanza that does not end: {stanza}"),
            _ => {}
        }
    }
    if children.len() < 2 || !children[0].2 {
        return whole();
    }
    assert!(
        !text_between && children.iter().all(|c| c.2),
        "a message that batches hook events holds something else too: {stanza}"
    );
    let open = stanza[..open_end].trim_start();
    children
        .into_iter()
        .map(|(from, to, _)| format!("{open}{}</message>", &stanza[from..to]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Shortcuts shared by the end-to-end tests.

/// A Prosody with `users` registered, each with the password `pw`.
pub fn server_with(users: &[&str]) -> Prosody {
    server_from(ProsodyOpts::default(), users)
}

/// A Prosody started with `opts`, with `users` registered, each with the password `pw`.
pub fn server_from(opts: ProsodyOpts, users: &[&str]) -> Prosody {
    let p = Prosody::start(opts);
    for u in users {
        p.register(u, "pw");
    }
    p
}

/// Options with Prosody's admin shell loaded, through which a test reloads a module
/// ([`Prosody::reload_module`]).
pub fn with_admin_shell() -> ProsodyOpts {
    ProsodyOpts {
        extra_modules: vec!["admin_shell".into()],
        ..ProsodyOpts::default()
    }
}

/// A client logged in as `user` (password `pw`) that sent its initial presence, processed.
pub async fn online(p: &Prosody, user: &str, resource: &str) -> Client {
    let mut c = p.client(user, "pw", resource).await;
    c.send_presence().await;
    c.sync().await;
    c
}

/// A chat message as a client sends it.
pub fn chat(id: &str, to: &str, body: &str) -> String {
    format!("<message id='{id}' type='chat' to='{to}'><body>{body}</body></message>")
}

/// A seed receipt (`type='crs'`, status 200) for `id`, addressed to the server.
pub fn crs_receipt(id: &str) -> String {
    format!("<message id='{id}' type='crs' to='localhost'><received xmlns='urn:xmpp:receipts'>200</received></message>")
}

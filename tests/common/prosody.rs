//! A throwaway Prosody on loopback: its config, accounts, modules and log.

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

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
            r#"-- generated by tests/common/prosody.rs
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

    /// Runs this server's `prosodyctl` (of the selected Prosody line, with its config) as the
    /// `prosody` user.
    fn prosodyctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("runuser")
            .args(["-u", "prosody", "--"])
            .arg(&prosody_line().prosodyctl)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run prosodyctl ({e}): {INSTALL_HINT}"))
    }

    /// Creates an account with `prosodyctl register`; works while Prosody runs.
    pub fn register(&self, user: &str, pass: &str) {
        let out = self.prosodyctl(&["register", user, &self.opts.domain, pass]);
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
        let out = self.prosodyctl(&["deluser", &jid]);
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
        let out = self.prosodyctl(&["shell", "module", "reload", module, &self.opts.domain]);
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

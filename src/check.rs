//! `readtrack check`: a pre-flight look at everything `serve` needs, one verdict per check. It
//! only asks: the config is parsed, the store inspected without being opened for use, the admin
//! socket asked, and the server's component port given one handshake (through [`component`] and
//! [`admin`], which own the sockets).
//!
//! While a service answers on the admin socket, the store and the component connection are its
//! own: the store is reported in use by it, and the handshake is not tried, because the server
//! would refuse a second connection of the component (Prosody's default) or drop the service's
//! (`component_conflict_resolve = "kick_old"`).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::admin::{self, AdminError, Request, Response};
use crate::component::{self, ComponentConfig, Secret};
use crate::config::Config;
use crate::store::{self, StoreError, StoreState};

/// How long the handshake may take, connect included.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest Unix socket path the kernel binds (`sun_path` is 108 bytes, NUL included).
const MAX_SOCKET_PATH: usize = 107;

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `config`, `store`, `socket` or `component`.
    pub check: &'static str,
    pub ok: bool,
    /// What was found, or why it fails.
    pub detail: String,
}

/// Every verdict, in order; `ok` when all are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    /// One line per check: `OK    name: detail` or `FAIL  name: detail`.
    pub fn text(&self) -> String {
        self.checks
            .iter()
            .map(|c| {
                let verdict = if c.ok { "OK" } else { "FAIL" };
                format!("{verdict:<4}  {}: {}\n", c.check, c.detail)
            })
            .collect()
    }
}

fn verdict(check: &'static str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            check,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            check,
            ok: false,
            detail,
        },
    }
}

/// What the admin socket said.
enum Service {
    /// A service answered `stats`.
    Running(Value),
    /// A socket is there but this user may not use it.
    Forbidden(io::Error),
    NotRunning,
}

async fn service(socket: &Path) -> Service {
    match admin::request(socket, &Request::Stats).await {
        Ok(Response::Ok { ok }) => Service::Running(ok),
        // A service that answers at all runs, even if its answer is an error.
        Ok(Response::Err(_)) | Err(AdminError::Protocol { .. }) => Service::Running(Value::Null),
        Err(AdminError::Unreachable { source, .. })
            if source.kind() == io::ErrorKind::PermissionDenied =>
        {
            Service::Forbidden(source)
        }
        Err(_) => Service::NotRunning,
    }
}

/// Runs every check of the config at `config_path`.
pub async fn run(config_path: &Path) -> Report {
    let mut checks = Vec::new();
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            checks.push(verdict("config", Err(e.to_string())));
            for check in ["store", "socket", "component"] {
                checks.push(verdict(
                    check,
                    Err("not checked: the config is invalid".into()),
                ));
            }
            return report(checks);
        }
    };
    let secret = config.secret();
    checks.push(verdict(
        "config",
        match &secret {
            Ok(_) => Ok(format!(
                "{}: domain {}, component {}, server {}",
                config_path.display(),
                config.xmpp.domain,
                config.component(),
                config.xmpp.connect
            )),
            Err(e) => Err(e.to_string()),
        },
    ));
    let socket = config.socket_path();
    let service = service(&socket).await;
    match config.store_location() {
        store::Location::Sled(path) => checks.push(verdict("store", check_store(&path, &service))),
        store::Location::Postgres(url) => {
            let (connection, schema) = check_postgres(&url, &service);
            checks.push(verdict("store", connection));
            checks.push(verdict("schema", schema));
        }
    }
    checks.push(verdict("socket", check_socket(&socket, &service)));
    let component = match (secret, &service) {
        (Err(_), _) => Err("not checked: no component secret".to_string()),
        (Ok(_), Service::Running(_)) => Ok(format!(
            "not probed: the running service holds the connection of {} (the server would refuse a second one, or drop the service's)",
            config.component()
        )),
        (Ok(secret), _) => check_component(&config, Secret::new(secret)).await,
    };
    checks.push(verdict("component", component));
    report(checks)
}

fn report(checks: Vec<Check>) -> Report {
    Report {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

fn check_store(path: &Path, service: &Service) -> Result<String, String> {
    if let Service::Running(stats) = service {
        return Ok(
            match (stats["messages"].as_u64(), stats["store_bytes"].as_u64()) {
                (Some(messages), Some(bytes)) => format!(
                    "{}: in use by the running service ({messages} messages, {bytes} bytes)",
                    path.display()
                ),
                _ => format!("{}: in use by the running service", path.display()),
            },
        );
    }
    match store::inspect(path) {
        Ok(StoreState::Absent) => {
            writable_folder(path).map(|()| format!("{}: none yet; serve creates it", path.display()))
        }
        Ok(StoreState::Empty) => Ok(format!(
            "{}: empty; serve initialises it",
            path.display()
        )),
        Ok(StoreState::Current) => Ok(format!(
            "{}: schema {}, not in use",
            path.display(),
            store::SCHEMA_VERSION
        )),
        Ok(StoreState::Upgradable { found }) => Ok(format!(
            "{}: schema {found}; serve upgrades it to {} at start, into a copy beside it (as much free disk again)",
            path.display(),
            store::SCHEMA_VERSION
        )),
        Err(StoreError::Locked { .. }) => Err(match service {
            Service::Forbidden(_) => format!(
                "{}: in use by another process (probably the running service, whose admin socket this user may not use)",
                path.display()
            ),
            _ => format!(
                "{}: in use by another process, and no service answers on the admin socket (another readtrack with another socket path?)",
                path.display()
            ),
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// A PostgreSQL store: whether it answers, and its schema and lease (two verdicts).
fn check_postgres(
    url: &str,
    service: &Service,
) -> (Result<String, String>, Result<String, String>) {
    let shown = store::redact_url(url);
    let state = match store::inspect_postgres(url) {
        Ok(state) => state,
        Err(e) => return (Err(e.to_string()), Err("not checked: no connection".into())),
    };
    let connection = Ok(format!("{shown}: PostgreSQL {} answers", state.server));
    let schema = match (state.schema, &state.holder) {
        (Some(v), _) if v > store::PG_SCHEMA_VERSION => Err(format!(
            "{shown}: schema {v}, newer than this readtrack's {}; serve refuses it",
            store::PG_SCHEMA_VERSION
        )),
        (None, _) => Ok(format!(
            "{shown}: no readtrack tables yet; serve creates them (schema {})",
            store::PG_SCHEMA_VERSION
        )),
        (Some(v), Some((holder, until))) => match service {
            Service::Running(_) => Ok(format!(
                "{shown}: schema {v}, in use by the running service ({holder})"
            )),
            _ => Err(format!(
                "{shown}: schema {v}, in use by {holder} (lease until {until}), and no service answers on the admin socket"
            )),
        },
        (Some(v), None) if v < store::PG_SCHEMA_VERSION => Ok(format!(
            "{shown}: schema {v}; serve migrates it to {} at start",
            store::PG_SCHEMA_VERSION
        )),
        (Some(v), None) => Ok(format!("{shown}: schema {v}, not in use")),
    };
    (connection, schema)
}

/// The folder that will hold `path` exists and this user may create files in it.
fn writable_folder(path: &Path) -> Result<(), String> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(format!("folder {} does not exist", folder.display()));
    }
    let c_path = std::ffi::CString::new(folder.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", folder.display()))?;
    // SAFETY: access() only reads the NUL-terminated path it is given.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(format!(
            "folder {} is not writable by this user: {}",
            folder.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn check_socket(path: &Path, service: &Service) -> Result<String, String> {
    match service {
        Service::Running(_) => {
            return Ok(format!("{}: the running service answers", path.display()))
        }
        Service::Forbidden(e) => {
            return Err(format!(
                "{}: {e}; run check as the user that runs serve",
                path.display()
            ))
        }
        Service::NotRunning => {}
    }
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(format!(
            "{}: {length} bytes long; a Unix socket path may have at most {MAX_SOCKET_PATH}",
            path.display()
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            writable_folder(path)?;
            Ok(format!(
                "{}: a socket nobody answers on (left by an earlier run); serve replaces it",
                path.display()
            ))
        }
        Ok(meta) => {
            let what = if meta.is_dir() {
                "a folder"
            } else if meta.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "a regular file"
            };
            Err(format!(
                "{}: {what} is in the way, not a socket; move it or set [admin] socket",
                path.display()
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            writable_folder(path)?;
            Ok(format!("{}: serve can create it", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

async fn check_component(config: &Config, secret: Secret) -> Result<String, String> {
    let mut link = ComponentConfig::new(config.xmpp.connect.clone(), config.component(), secret);
    link.connect_timeout = HANDSHAKE_TIMEOUT;
    component::probe(&link).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "the server at {} accepted the handshake of {}",
        config.xmpp.connect,
        config.component()
    ))
}

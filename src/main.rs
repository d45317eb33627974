//! `readtrack`: the service (`serve`) and the operator CLI.

/// mimalloc (the default feature) instead of the system allocator: with glibc's, a replay of the
/// same 10k messages took 4x longer among 1M logged than among 10k (docs/performance.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: readtrack::alloc::Allocator = readtrack::alloc::Allocator;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::sync::{mpsc, watch};

use readtrack::admin::{self, AdminError, AdminSocket, Origin, Request, Response};
use readtrack::component::{self, ComponentConfig, LinkCounters, Secret};
use readtrack::config::{Config, LogFormat};
use readtrack::engine::Engine;
use readtrack::metrics::{self, http::MetricsServer};
use readtrack::service::{Retention, Service};
use readtrack::store::transfer::{self, TransferError};
use readtrack::store::{Location, Store};

#[derive(Parser)]
#[command(
    name = "readtrack",
    version,
    about = "Multi-device read tracking and delivery receipts for XMPP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: connect to the XMPP server as a component and track cursors.
    Serve {
        /// Path of readtrack.toml.
        #[arg(long, short, default_value = "readtrack.toml")]
        config: PathBuf,
    },
    /// One row per device of a user: what it acked, what is unread and pending.
    Cursors {
        /// The user's bare JID.
        jid: String,
        #[command(flatten)]
        common: Common,
    },
    /// The messages one device has not acked.
    Unread {
        jid: String,
        /// Device key (or its last resource).
        device: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        common: Common,
    },
    /// A user's message log with each device's state.
    Log {
        jid: String,
        /// Only messages with a seq above this.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Drops a device's cursor and delivery log (a lost phone).
    Forget {
        jid: String,
        device: String,
        #[command(flatten)]
        common: Common,
    },
    /// Deletes everything readtrack keeps of a user: log, devices, timers, read state (as when
    /// the server deletes the account).
    Purge {
        jid: String,
        #[command(flatten)]
        common: Common,
    },
    /// Unread messages per conversation (peer) of a user, whichever device reads.
    Conversations {
        jid: String,
        #[command(flatten)]
        common: Common,
    },
    /// Counters of the store and the service.
    Stats {
        #[command(flatten)]
        common: Common,
    },
    /// Checks the config, the store, the admin socket path and the server's component port:
    /// one OK/FAIL line each; exits 1 if any fails.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Copies the whole store (the service stopped) into a new file, then compares the file with
    /// the store record by record. With `import`, moves a store between sled and PostgreSQL.
    Export {
        /// The file to write; an existing file is never overwritten.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Copies an export into the configured store, which must be empty (the service stopped),
    /// then compares the store with the file record by record.
    Import {
        /// A file `readtrack export` wrote.
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Path of readtrack.toml (finds the admin socket and the store).
    #[arg(long, short, default_value = "readtrack.toml")]
    config: PathBuf,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
}

/// A failure with the exit status it deserves: 2 for bad usage or input, 1 for everything else.
struct Failure {
    status: u8,
    message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            status: 1,
            message: e.to_string(),
        }
    }
}

fn usage(message: impl std::fmt::Display) -> Failure {
    Failure {
        status: 2,
        message: message.to_string(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Cursors { jid, common } => admin(common, Request::Cursors { jid }),
        Command::Unread {
            jid,
            device,
            limit,
            common,
        } => admin(common, Request::Unread { jid, device, limit }),
        Command::Log {
            jid,
            after,
            limit,
            common,
        } => admin(common, Request::Log { jid, after, limit }),
        Command::Forget {
            jid,
            device,
            common,
        } => admin(common, Request::Forget { jid, device }),
        Command::Purge { jid, common } => admin(common, Request::Purge { jid }),
        Command::Stats { common } => admin(common, Request::Stats),
        Command::Conversations { jid, common } => admin(common, Request::Conversations { jid }),
        Command::Check { common } => check(common),
        Command::Export { to, common } => export(common, to),
        Command::Import { from, common } => import(common, from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("readtrack: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Everything readtrack creates (store files, admin socket) is private to its user: the
/// service and the CLI (which may create or upgrade a stopped store) both set this first.
fn private_files() {
    // SAFETY: umask only changes the process's file creation mask; no memory is involved.
    unsafe { libc::umask(0o077) };
}

fn serve(config_path: PathBuf) -> Result<(), Failure> {
    private_files();
    let config = Config::load(&config_path).map_err(usage)?;
    init_logging(config.log.format);
    // Before the store is opened (its page table is most of the memory), after logging is up.
    readtrack::memory::no_transparent_huge_pages();
    let secret = Secret::new(config.secret().map_err(usage)?);
    let metrics_listen = config.metrics_listen().map_err(usage)?;
    let location = config.store_location();
    let store = Store::open_location(&location, &config.store_options())?;
    let engine = Engine::new(store, config.engine())?;
    release_freed_heap();
    tracing::info!(domain = %config.xmpp.domain, component = %config.component(), server = %config.xmpp.connect, store = %location, "readtrack starting");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            let _ = shutdown_tx.send(true);
        });
        let (event_tx, event_rx) = mpsc::channel(4096);
        let (command_tx, command_rx) = mpsc::channel(4096);
        let mut link_config =
            ComponentConfig::new(config.xmpp.connect.clone(), config.component(), secret);
        link_config.limits = config.stanza_limits();
        link_config.allow_remote = config.xmpp.allow_remote_connect;
        let link_counters = Arc::new(LinkCounters::default());
        let link = tokio::spawn(component::run_with_counters(
            link_config,
            event_tx,
            command_rx,
            shutdown_rx.clone(),
            link_counters.clone(),
        ));
        let (query_tx, query_rx) = mpsc::channel(64);
        let started = std::time::Instant::now();
        let socket = AdminSocket::bind(&config.socket_path()).await?;
        tracing::info!(socket = %config.socket_path().display(), "admin socket ready");
        tokio::spawn(socket.serve(
            query_tx.clone(),
            started,
            link_counters,
            shutdown_rx.clone(),
        ));
        let service = Service::new(engine, config.component(), command_tx)
            .with_retention(Retention {
                every: config.retention.every,
                batch: config.retention.batch,
            })
            .timed(metrics_listen.is_some());
        if let Some(addr) = metrics_listen {
            let server = MetricsServer::bind(addr).await?;
            let addr = server.local_addr()?;
            tracing::info!(%addr, "metrics endpoint ready at http://{addr}/metrics");
            let source = metrics::http::Source::new(service.stats(), query_tx, started);
            tokio::spawn(server.serve(source, shutdown_rx.clone()));
        }
        // The service ends on shutdown, or when the link gives up (its event sender is dropped).
        let engine = service.run(event_rx, query_rx, shutdown_rx).await?;
        engine.close()?;
        tracing::info!("store flushed");
        match link.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::from(e)),
            Err(e) => Err(Failure::from(format!("component task failed: {e}"))),
        }
    })
}

/// Opening a sled store reads its whole page-table snapshot into memory, builds the page table
/// from it and frees it; the allocator keeps part of that freed memory resident. Hand it back to
/// the kernel once, after the store is open (1M messages with mimalloc: RSS 172 -> 139 MiB;
/// 3M with glibc: 344 -> 324 MiB; the peak while opening is unchanged).
#[cfg(feature = "mimalloc")]
fn release_freed_heap() {
    // SAFETY: mi_collect only returns memory mimalloc holds unused (freed blocks, empty pages)
    // to the OS; nothing in use is touched.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
fn release_freed_heap() {
    // SAFETY: malloc_trim only returns free pages of glibc's own arenas to the kernel; memory
    // that is in use is not touched.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(any(all(target_os = "linux", target_env = "gnu"), feature = "mimalloc")))]
fn release_freed_heap() {}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// `readtrack check`: every verdict is printed; the status says whether all are OK.
fn check(common: Common) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(readtrack::check::run(&common.config));
    if common.json {
        let value = serde_json::to_value(&report).expect("the report serialises");
        print!("{}", admin::table::json(&value));
    } else {
        print!("{}", report.text());
    }
    if report.ok {
        Ok(())
    } else {
        // The lines said it all; `main` prints the message, so it is a summary only.
        Err(Failure {
            status: 1,
            message: "some checks failed".into(),
        })
    }
}

/// A copy is of a store nothing else writes to: refuse while a service answers on the admin
/// socket. Opening the store checks again (sled's lock, PostgreSQL's lease), for a service
/// whose socket is elsewhere.
fn refuse_if_served(config: &Config, what: &str) -> Result<(), Failure> {
    let socket = config.socket_path();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = match runtime.block_on(admin::request(&socket, &Request::Stats)) {
        Ok(_) => true,
        Err(AdminError::Unreachable { source, .. }) => {
            source.kind() == std::io::ErrorKind::PermissionDenied
        }
        Err(_) => true,
    };
    if served {
        return Err(Failure {
            status: 1,
            message: format!(
                "readtrack serve is running on this store (its admin socket {} is live): stop it first; {what} copies a store nothing else writes to",
                socket.display()
            ),
        });
    }
    Ok(())
}

/// The store a copy reads from or writes to, opened directly (never through a service).
fn open_for_transfer(config: &Config, must_exist: bool) -> Result<(Store, String), Failure> {
    let location = config.store_location();
    let name = location.to_string();
    if let Location::Sled(path) = &location {
        if must_exist && !path.exists() {
            return Err(Failure {
                status: 1,
                message: format!("there is no store at {}", path.display()),
            });
        }
    }
    // Opening may create the store (an import's target): as private as the service makes it.
    private_files();
    let store = Store::open_location(&location, &config.store_options()).map_err(|e| Failure {
        status: 1,
        message: format!("cannot open the store {name}: {e}"),
    })?;
    Ok((store, name))
}

/// Progress on stderr, a line every [`transfer::PROGRESS_EVERY`] records.
fn progress_line(progress: transfer::Progress) {
    eprintln!(
        "readtrack: {} {} records (now in {})",
        progress.phase, progress.records, progress.tree
    );
}

fn summary_output(json: bool, done: &str, summary: &transfer::Summary, from: &str, to: &str) {
    if json {
        let trees: serde_json::Map<String, serde_json::Value> = summary
            .trees
            .iter()
            .map(|(tree, n)| (tree.to_string(), (*n).into()))
            .collect();
        let value = serde_json::json!({
            "records": summary.records(),
            "bytes": summary.bytes,
            "trees": trees,
            "from": from,
            "to": to,
            "verified": true,
        });
        print!("{}", admin::table::json(&value));
    } else {
        let trees: Vec<String> = summary
            .trees
            .iter()
            .map(|(tree, n)| format!("{tree} {n}"))
            .collect();
        println!(
            "{done} {} records ({}) from {from} to {to}, {} bytes; every record compared",
            summary.records(),
            trees.join(", "),
            summary.bytes
        );
    }
}

fn export(common: Common, to: PathBuf) -> Result<(), Failure> {
    let config = Config::load(&common.config).map_err(usage)?;
    refuse_if_served(&config, "export")?;
    let (store, name) = open_for_transfer(&config, true)?;
    let summary = transfer::export(&store, &to, progress_line)?;
    store.flush()?;
    drop(store);
    summary_output(
        common.json,
        "exported",
        &summary,
        &name,
        &to.display().to_string(),
    );
    Ok(())
}

fn import(common: Common, from: PathBuf) -> Result<(), Failure> {
    let config = Config::load(&common.config).map_err(usage)?;
    refuse_if_served(&config, "import")?;
    // The file first: a file that is not an export, damaged or of another schema must not
    // even create the target store.
    transfer::check(&from, &mut |_| {}).map_err(|e| Failure {
        status: 2,
        message: e.to_string(),
    })?;
    let (store, name) = open_for_transfer(&config, false)?;
    let summary = transfer::import(&store, &from, progress_line).map_err(|e| match e {
        TransferError::NotEmpty { .. } => usage(e),
        e => e.into(),
    })?;
    store.flush()?;
    drop(store);
    summary_output(
        common.json,
        "imported",
        &summary,
        &from.display().to_string(),
        &name,
    );
    Ok(())
}

/// A CLI command: asks the running service over the admin socket; when no service answers, opens
/// the store directly (sled's lock guarantees no service is using it).
fn admin(common: Common, request: Request) -> Result<(), Failure> {
    let config = Config::load(&common.config).map_err(usage)?;
    let socket = config.socket_path();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = match runtime.block_on(admin::request(&socket, &request)) {
        Ok(response) => response,
        // The service is there but this user may not talk to it (the socket is 0600): say so
        // rather than fall back to a store that is locked by that service anyway.
        Err(AdminError::Unreachable { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return Err(Failure {
                status: 1,
                message: format!(
                    "permission denied on the admin socket {} ({source}): run the CLI as the user that runs `readtrack serve`",
                    socket.display()
                ),
            });
        }
        Err(AdminError::Unreachable {
            source: socket_error,
            ..
        }) => {
            let location = config.store_location();
            let store_path = config.store_path();
            if matches!(location, Location::Sled(_)) && !store_path.exists() {
                return Err(Failure {
                    status: 1,
                    message: format!(
                        "no service answers at {} ({socket_error}) and there is no store at {}",
                        socket.display(),
                        store_path.display()
                    ),
                });
            }
            // Opening may create files (sled's) or upgrade the store: they must be as private
            // as the service makes them.
            private_files();
            let store = Store::open_location(&location, &config.store_options()).map_err(|e| Failure {
                status: 1,
                message: format!("no service answers at {} ({socket_error}), and the store cannot be opened directly: {e}", socket.display()),
            })?;
            let mut engine = Engine::new(store, config.engine())?;
            let response = admin::execute(&mut engine, &request, Origin::StoppedStore);
            engine.close()?;
            response
        }
        Err(e) => return Err(e.into()),
    };
    match response {
        Response::Ok { ok } => {
            if common.json {
                print!("{}", admin::table::json(&ok));
            } else {
                print!("{}", admin::table::render(&request, &ok));
            }
            Ok(())
        }
        Response::Err(f) => Err(Failure {
            status: f.status,
            message: f.error,
        }),
    }
}

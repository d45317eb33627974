//! Which store backend a test runs on. `READTRACK_TEST_BACKEND=postgres` runs the store's and
//! the engine's tests on PostgreSQL: each test gets a fresh database (a unique name) on the
//! cluster named by `READTRACK_TEST_PG_URL`, an admin URL such as
//! `postgres://postgres@127.0.0.1:54329/postgres` (`scripts/postgres start` prints it). Without
//! the variable a test runs on sled in its temporary folder.
//!
//! Include it with `#[path = "common/backend.rs"] mod backend;` (it needs nothing else of the
//! harness).

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use readtrack::store::Location;

/// The backend the tests run on, from `READTRACK_TEST_BACKEND` (`sled`, the default, or
/// `postgres`).
pub fn on_postgres() -> bool {
    match std::env::var("READTRACK_TEST_BACKEND").as_deref() {
        Ok("postgres") => true,
        Ok("sled") | Ok("") | Err(_) => false,
        Ok(other) => panic!("READTRACK_TEST_BACKEND={other}: use sled or postgres"),
    }
}

const PG_HINT: &str = "READTRACK_TEST_BACKEND=postgres needs READTRACK_TEST_PG_URL, the admin URL \
    of a running PostgreSQL (e.g. postgres://postgres@127.0.0.1:54329/postgres): run \
    `scripts/postgres start` (it prints the URL), or install Debian's `postgresql` package \
    (apt-get install -y postgresql) and start a cluster";

/// Where a test's store lives: `dir/store` on sled, or a fresh PostgreSQL database.
pub fn test_location(dir: &Path) -> Location {
    if !on_postgres() {
        return Location::Sled(dir.join("store"));
    }
    Location::Postgres(fresh_database())
}

/// A second, separate store for a test that needs two (a copy, a reference).
pub fn test_location_named(dir: &Path, name: &str) -> Location {
    if !on_postgres() {
        return Location::Sled(dir.join(name));
    }
    Location::Postgres(fresh_database())
}

/// Creates an empty database with a name no other test (or test run) uses, and returns its URL.
pub fn fresh_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin = std::env::var("READTRACK_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("{PG_HINT}"));
    let name = format!(
        "readtrack_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    // postgres' sync client runs its own runtime: keep it off any test runtime's thread.
    let admin2 = admin.clone();
    let name2 = name.clone();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&admin2, postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {admin2}: {e}. {PG_HINT}"));
        client
            .batch_execute(&format!("CREATE DATABASE {name2}"))
            .unwrap_or_else(|e| panic!("cannot create database {name2}: {e}"));
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
    database_url(&admin, &name)
}

/// The admin URL with its database replaced by `name`.
pub fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Drops a test database (best effort: a leftover one costs disk, not correctness).
pub fn drop_location(location: &Location) {
    let Location::Postgres(url) = location else {
        return;
    };
    let Ok(admin) = std::env::var("READTRACK_TEST_PG_URL") else {
        return;
    };
    let Some(name) = url
        .rsplit('/')
        .next()
        .map(|n| n.split('?').next().unwrap_or(n).to_string())
    else {
        return;
    };
    let _ = std::thread::spawn(move || {
        if let Ok(mut client) = postgres::Client::connect(&admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    })
    .join();
}

/// Runs `VACUUM` on a PostgreSQL test database (deleted rows' space becomes reusable, as
/// autovacuum would make it); nothing on sled.
pub fn vacuum(location: &Location) {
    let Location::Postgres(url) = location else {
        return;
    };
    let url = url.clone();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        client.batch_execute("VACUUM").unwrap();
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

//! A database of a bench run's own on the bench's PostgreSQL server (`READTRACK_BENCH_PG_URL`, an
//! admin URL: one that may create databases), dropped when the run is done with it. Shared by
//! `core.rs` (one per PostgreSQL figure) and `load.rs` (`LOAD_BACKEND=postgres`).

/// The bench server's admin URL, when one is set.
pub fn pg_admin_url() -> Option<String> {
    std::env::var("READTRACK_BENCH_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// What a PostgreSQL figure says when there is no server to measure it on.
pub const PG_NOT_MEASURED: &str =
    "not measured: READTRACK_BENCH_PG_URL is unset (eval \"$(scripts/postgres start)\"; READTRACK_BENCH_PG_URL=$READTRACK_TEST_PG_URL)";

/// A fresh database named after the run (its process id) and `name`, dropped on drop.
pub struct PgScratch {
    admin: String,
    database: String,
}

impl PgScratch {
    pub fn create(admin: &str, name: &str) -> PgScratch {
        let database = format!("readtrack_bench_{}_{name}", std::process::id());
        let mut client = postgres::Client::connect(admin, postgres::NoTls)
            .unwrap_or_else(|e| panic!("READTRACK_BENCH_PG_URL={admin}: {e}"));
        // Two statements: a batch of several runs as one transaction, which DROP DATABASE and
        // CREATE DATABASE refuse.
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {database}"))
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
        PgScratch {
            admin: admin.to_string(),
            database,
        }
    }

    /// The scratch database's URL: the admin URL with its database replaced.
    pub fn url(&self) -> String {
        let (server, _) = self
            .admin
            .rsplit_once('/')
            .expect("READTRACK_BENCH_PG_URL ends with /DATABASE");
        format!("{server}/{}", self.database)
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }
}

impl Drop for PgScratch {
    /// Drops the database, closing any session still on it (a daemon that did not exit yet).
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ));
        }
    }
}

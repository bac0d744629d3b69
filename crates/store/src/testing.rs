//! Test fixtures for every crate's tests: a fresh, empty database per test — a new SQLite file, or a new PostgreSQL
//! database on the server named by `EVERSHELL_TEST_PG_URL`, else on a throwaway local cluster started once per
//! machine and shared by every test process (nextest runs each test in its own process), guarded by a file lock.
//!
//! With `CI` set, an unreachable PostgreSQL panics: the suite must fail there, never skip.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use sqlx::{Connection, Executor, PgConnection};

/// The admin connection URL of an existing PostgreSQL server (a superuser, on its `postgres` database).
pub const PG_URL_ENV: &str = "EVERSHELL_TEST_PG_URL";

const LOCAL_DIR: &str = "/tmp/evershell-test-pg";
const LOCAL_PORT: u16 = 54329;
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A URL for a new SQLite database file in `dir` (created on first connect).
pub fn fresh_sqlite_url(dir: &Path) -> String {
    let file = dir.join(format!("evershell-{}.db", uuid::Uuid::now_v7().simple()));
    format!("sqlite://{}", file.display())
}

/// A URL for a brand-new, empty PostgreSQL database. Panics when PostgreSQL cannot be reached or started.
pub async fn fresh_postgres_url() -> String {
    match create_database().await {
        Ok(url) => url,
        Err(e) => panic!("PostgreSQL is needed for this test and is unavailable: {e:#}"),
    }
}

/// Like `fresh_postgres_url`, but `None` (after saying why on stderr) when PostgreSQL is unavailable outside CI.
/// Under `CI` it panics instead, so a broken setup fails the suite rather than skipping it.
pub async fn try_fresh_postgres_url() -> Option<String> {
    match create_database().await {
        Ok(url) => Some(url),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but PostgreSQL is unavailable (set {PG_URL_ENV} or install PostgreSQL 15): {e:#}")
        }
        Err(e) => {
            eprintln!("SKIPPING PostgreSQL test: PostgreSQL is unavailable: {e:#}");
            None
        }
    }
}

async fn create_database() -> anyhow::Result<String> {
    let admin = match std::env::var(PG_URL_ENV) {
        Ok(url) => url,
        Err(_) => {
            tokio::task::spawn_blocking(ensure_local_cluster).await.context("starting the local cluster")??;
            format!("postgres://postgres@127.0.0.1:{LOCAL_PORT}/postgres")
        }
    };
    let mut conn = PgConnection::connect(&admin).await.with_context(|| format!("connecting to {admin}"))?;
    let name = format!("evershell_test_{}", uuid::Uuid::now_v7().simple());
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.context("creating a test database")?;
    conn.close().await.ok();
    Ok(with_database(&admin, &name))
}

/// `url` with its database (path) replaced by `db`, keeping any query string.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Drop the database a `fresh_postgres_url` made, terminating its connections (to test what happens when the
/// store goes away under a running server).
pub async fn drop_postgres_database(url: &str) {
    let name = url.rsplit('/').next().unwrap_or_default().split('?').next().unwrap_or_default().to_string();
    assert!(name.starts_with("evershell_test_"), "refusing to drop `{name}`: not a test database");
    let admin = with_database(url, "postgres");
    let mut conn = PgConnection::connect(&admin).await.expect("connecting to the admin database");
    conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .await
        .expect("dropping the test database");
    conn.close().await.ok();
}

fn ready() -> bool {
    Command::new(format!("{PG_BIN}/pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &LOCAL_PORT.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Start the machine's throwaway cluster unless it already runs. Blocking; serialised across processes by an
/// exclusive lock on `LOCAL_DIR/lock`.
fn ensure_local_cluster() -> anyhow::Result<()> {
    if ready() {
        return Ok(());
    }
    fs::create_dir_all(LOCAL_DIR).with_context(|| format!("creating {LOCAL_DIR}"))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{LOCAL_DIR}/lock"))
        .context("opening the cluster lock file")?;
    lock.lock().context("locking the cluster lock file")?;
    if ready() {
        return Ok(());
    }
    let as_root = fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if as_root {
        // PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
        run("chown", &["-R", "postgres:postgres", LOCAL_DIR], false)?;
    }
    let data = format!("{LOCAL_DIR}/data");
    if !Path::new(&data).join("PG_VERSION").exists() {
        // A half-made data directory from an interrupted initdb cannot be reused.
        let _ = fs::remove_dir_all(&data);
        let initdb = format!("{PG_BIN}/initdb");
        run(&initdb, &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"], as_root)?;
    }
    let options = format!(
        "-p {LOCAL_PORT} -k {LOCAL_DIR} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 \
         -c synchronous_commit=off -c full_page_writes=off"
    );
    let log = format!("{LOCAL_DIR}/log");
    let pg_ctl = format!("{PG_BIN}/pg_ctl");
    run(&pg_ctl, &["-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start"], as_root)?;
    if !ready() {
        bail!("the local cluster started but does not accept connections; see {log}");
    }
    Ok(())
}

/// Run `program`, as the `postgres` user when `as_postgres` (we are root).
fn run(program: &str, args: &[&str], as_postgres: bool) -> anyhow::Result<()> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(with_database("postgres://u@h:1/postgres", "x"), "postgres://u@h:1/x");
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}

//! The SQLite backend: one file in WAL mode (`synchronous=NORMAL`, foreign keys on, 5 s busy timeout), a write pool of
//! exactly one connection whose transactions start with `BEGIN IMMEDIATE` — so writers queue for the lock instead of
//! failing a read-to-write upgrade — and a read pool of several connections. Another process (the admin CLI) may
//! write the same file meanwhile: it waits on the same file lock, and `SQLITE_BUSY` that outlasts the timeout is
//! retried by `tx::run`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::api::Backend;

/// Connections in the read pool.
const READERS: u32 = 4;

/// A store on one SQLite file.
pub struct SqliteStore {
    pub(crate) read: SqlitePool,
    pub(crate) write: SqlitePool,
    pub(crate) feed: crate::feed::ActivityFeed,
}

impl SqliteStore {
    /// Open (creating it if missing) the database file at `path` and apply pending migrations.
    pub async fn open(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        Self::open_with(SqliteConnectOptions::new().filename(path.as_ref())).await
    }

    /// Open a `sqlite://…` URL or a plain file path.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            // The read and write pools must see one database; use a file in a temp dir instead.
            anyhow::bail!("in-memory SQLite is not supported (`{url}`): give a file path");
        }
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url).with_context(|| format!("invalid SQLite URL `{url}`"))?;
            Self::open_with(opts).await
        } else {
            Self::open(url).await
        }
    }

    async fn open_with(opts: SqliteConnectOptions) -> anyhow::Result<Self> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let file = opts.get_filename().display().to_string();
        create_private(opts.get_filename()).with_context(|| format!("creating SQLite database {file}"))?;
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .with_context(|| format!("opening SQLite database {file}"))?;
        crate::migrations::migrator(crate::migrations::SQLITE)
            .run(&write)
            .await
            .with_context(|| format!("migrating SQLite database {file}"))?;
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(opts)
            .await
            .with_context(|| format!("opening SQLite database {file}"))?;
        Ok(Self { read, write, feed: Default::default() })
    }

    /// A write transaction, holding the file's write lock from its first statement.
    pub(crate) async fn begin(&self) -> sqlx::Result<crate::feed::Tx<sqlx::Sqlite>> {
        Ok(crate::feed::Tx::new(self.write.begin_with("BEGIN IMMEDIATE").await?, &self.feed))
    }
}

mod ops {
    type Db = sqlx::Sqlite;
    type Conn = sqlx::SqliteConnection;
    type S = super::SqliteStore;

    // `BEGIN IMMEDIATE` already serialises writers: no row locks (SQLite has none).
    macro_rules! for_update {
        () => {
            ""
        };
    }
    macro_rules! for_share {
        () => {
            ""
        };
    }

    crate::queries::expand!();
}

crate::store_impl::impl_store!(SqliteStore, Backend::Sqlite);

/// Create the database file `0600` before SQLite does (it would use the umask, typically `0644`); SQLite gives the
/// `-wal` and `-shm` files the database file's permissions.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

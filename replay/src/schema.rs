//! Schema versions and migrations, keyed on `PRAGMA user_version`.
//!
//! Every version's DDL is kept verbatim forever: a new file is created by running all
//! migrations from version 0, so the upgrade path that old files take is the same code path
//! every test exercises.

use std::io::Read;
use std::path::Path;

use rusqlite::Connection;

use crate::error::{ReplayError, Result};

/// Newest schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 2;

/// `PRAGMA application_id` of autodidact replay files ("ADID"), so that a foreign SQLite
/// file is refused instead of being misread.
pub const APPLICATION_ID: i32 = 0x4144_4944;

/// Version 1: runs, models, episodes, transitions, metadata.
const V1: &str = r#"
CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    env_id        TEXT NOT NULL,
    obs_dims      TEXT NOT NULL,
    obs_dtype     TEXT NOT NULL CHECK (obs_dtype IN ('f32', 'f16', 'bf16')),
    action_space  TEXT NOT NULL,
    config        TEXT NOT NULL,
    code_version  TEXT NOT NULL,
    started_at    REAL NOT NULL
);
CREATE TABLE models (
    version          INTEGER PRIMARY KEY AUTOINCREMENT,
    parent           INTEGER REFERENCES models(version),
    created_at       REAL NOT NULL,
    checkpoint_path  TEXT NOT NULL,
    checksum         TEXT NOT NULL,
    metrics          TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL CHECK (status IN ('candidate', 'champion', 'rejected'))
);
CREATE UNIQUE INDEX models_one_champion ON models(status) WHERE status = 'champion';
CREATE TABLE episodes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id          INTEGER NOT NULL REFERENCES runs(id),
    model_version   INTEGER,
    length          INTEGER NOT NULL,
    episode_return  REAL NOT NULL,
    terminated      INTEGER NOT NULL,
    truncated       INTEGER NOT NULL,
    started_at      REAL NOT NULL,
    ended_at        REAL NOT NULL,
    final_obs       BLOB NOT NULL,
    payload_bytes   INTEGER NOT NULL
);
CREATE INDEX episodes_run ON episodes(run_id);
CREATE TABLE transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id  INTEGER NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    obs         BLOB NOT NULL,
    action_int  INTEGER,
    action_vec  BLOB,
    reward      REAL NOT NULL,
    terminated  INTEGER NOT NULL,
    truncated   INTEGER NOT NULL,
    behaviour   REAL,
    priority    REAL
);
CREATE UNIQUE INDEX transitions_episode_step ON transitions(episode_id, step);
CREATE TABLE metadata (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"#;

/// Version 2: reflections, kept per-run aggregates (backfilled), episodes by model.
const V2: &str = r#"
CREATE TABLE reflections (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at     REAL NOT NULL,
    kind           TEXT NOT NULL,
    model_version  INTEGER,
    data           TEXT NOT NULL,
    sentence       TEXT NOT NULL
);
CREATE INDEX reflections_kind ON reflections(kind, id);
CREATE TABLE run_stats (
    run_id             INTEGER PRIMARY KEY REFERENCES runs(id),
    episodes_total     INTEGER NOT NULL DEFAULT 0,
    transitions_total  INTEGER NOT NULL DEFAULT 0,
    episodes_kept      INTEGER NOT NULL DEFAULT 0,
    transitions_kept   INTEGER NOT NULL DEFAULT 0,
    bytes_kept         INTEGER NOT NULL DEFAULT 0,
    return_sum_kept    REAL NOT NULL DEFAULT 0
);
INSERT INTO run_stats (run_id, episodes_total, transitions_total, episodes_kept,
                       transitions_kept, bytes_kept, return_sum_kept)
SELECT r.id, count(e.id), coalesce(sum(e.length), 0), count(e.id),
       coalesce(sum(e.length), 0), coalesce(sum(e.payload_bytes), 0),
       coalesce(sum(e.episode_return), 0.0)
FROM runs r LEFT JOIN episodes e ON e.run_id = r.id
GROUP BY r.id;
CREATE INDEX episodes_model ON episodes(model_version);
"#;

const MIGRATIONS: [&str; 2] = [V1, V2];

/// Version 1 DDL, for tests that hand-write an old file.
#[cfg(test)]
pub(crate) const V1_FOR_TESTS: &str = V1;

/// First bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Refuses a non-empty file that does not start with the SQLite header, before SQLite gets a
/// chance to treat it lazily.
pub(crate) fn check_magic(path: &Path) -> Result<()> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got == 0 || &head[..got] == SQLITE_MAGIC.as_slice() {
        return Ok(());
    }
    Err(ReplayError::NotADatabase {
        path: path.to_path_buf(),
    })
}

/// Maps SQLite's "not a database" to the typed error for this path.
pub(crate) fn not_a_db(path: &Path) -> impl Fn(ReplayError) -> ReplayError + '_ {
    move |e| match &e {
        ReplayError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::NotADatabase =>
        {
            ReplayError::NotADatabase {
                path: path.to_path_buf(),
            }
        }
        _ => e,
    }
}

/// What the header says about a file.
pub(crate) struct Header {
    pub version: i64,
    pub application_id: i32,
    pub objects: i64,
}

pub(crate) fn read_header(conn: &Connection, path: &Path) -> Result<Header> {
    let read = || -> Result<Header> {
        Ok(Header {
            version: conn.query_row("PRAGMA user_version", [], |r| r.get(0))?,
            application_id: conn.query_row("PRAGMA application_id", [], |r| r.get(0))?,
            objects: conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?,
        })
    };
    read().map_err(not_a_db(path))
}

/// Refuses files that are not ours or are too new; returns whether the file is brand new.
pub(crate) fn classify(h: &Header, path: &Path) -> Result<bool> {
    let fresh = h.version == 0 && h.application_id == 0 && h.objects == 0;
    if fresh {
        return Ok(true);
    }
    if h.application_id != APPLICATION_ID {
        return Err(ReplayError::ForeignDatabase {
            path: path.to_path_buf(),
            reason: format!(
                "application_id is {:#x}, expected {APPLICATION_ID:#x}, with {} schema objects",
                h.application_id, h.objects
            ),
        });
    }
    if h.version > SCHEMA_VERSION {
        return Err(ReplayError::TooNew {
            found: h.version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(false)
}

/// Brings the file to [`SCHEMA_VERSION`], one transaction per version, so that a crash
/// mid-migration leaves the file at the previous version rather than half-upgraded.
pub(crate) fn migrate(conn: &mut Connection, from: i64) -> Result<()> {
    for (i, ddl) in MIGRATIONS.iter().enumerate() {
        let target = i as i64 + 1;
        if target <= from {
            continue;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(ddl)?;
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {target};"
        ))?;
        tx.commit()?;
        tracing::info!(target, "replay schema migrated");
    }
    Ok(())
}

/// Runs `PRAGMA incremental_vacuum` to completion. The pragma frees one page per step, so it
/// must be stepped until done (a single `execute` would free just one page).
pub(crate) fn incremental_vacuum(conn: &Connection) -> Result<()> {
    let mut stmt = conn.prepare("PRAGMA incremental_vacuum")?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

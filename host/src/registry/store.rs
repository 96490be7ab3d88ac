//! Where the registry keeps things: metadata (functions, versions, settings)
//! and content-addressed blobs (sources and compiled artifacts).
//!
//! Both sit behind traits so a cluster deployment can put metadata in
//! PostgreSQL and blobs in an object store without touching the request path;
//! the embedded default is SQLite (bundled, WAL) and the local filesystem.
//! The traits are synchronous: callers run them on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::settings::SettingsOverrides;

/// A storage failure; never caused by client input.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("metadata store: corrupt settings for `{name}`: {source}")]
    CorruptSettings {
        name: String,
        source: serde_json::Error,
    },
    #[error("blob store: {context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("metadata store: lock poisoned")]
    Poisoned,
    #[error("blob store: {0}")]
    Corrupt(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionRecord {
    pub version: u32,
    /// Hex sha256 of the component bytes.
    pub digest: String,
    pub size_bytes: u64,
    /// Time spent compiling at upload; 0 when an identical component was
    /// already compiled.
    pub compile_ms: u64,
    pub created_at_ms: i64,
}

/// A function and all its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRecord {
    /// The tenant that owns it (shared with every call's meter and
    /// ledger row, so metering a call copies no names).
    pub tenant: Arc<str>,
    pub name: Arc<str>,
    pub overrides: SettingsOverrides,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub versions: Vec<VersionRecord>,
}

impl FunctionRecord {
    /// The key that names it across tenants (`tenant/name`).
    pub fn key(&self) -> String {
        qualify(&self.tenant, &self.name)
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&VersionRecord> {
        self.versions.last()
    }

    /// A specific version.
    pub fn version(&self, version: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }
}

/// One immutable version of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelVersionRecord {
    pub version: u32,
    /// Hex sha256 of the model bytes.
    pub digest: String,
    /// `onnx`, …
    pub encoding: String,
    pub size_bytes: u64,
    /// Time the upload's validation load took.
    pub load_ms: u64,
    pub created_at_ms: i64,
}

/// A model and all its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    /// The tenant that owns it.
    pub tenant: String,
    pub name: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub versions: Vec<ModelVersionRecord>,
}

impl ModelRecord {
    /// The key that names it across tenants (`tenant/name`).
    pub fn key(&self) -> String {
        qualify(&self.tenant, &self.name)
    }

    pub fn latest(&self) -> Option<&ModelVersionRecord> {
        self.versions.last()
    }
}

/// A new version to record.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub digest: &'a str,
    pub size_bytes: u64,
    pub compile_ms: u64,
}

/// Function metadata.
pub trait MetadataStore: Send + Sync {
    /// Every function with its versions.
    fn load_all(&self) -> Result<Vec<FunctionRecord>, StoreError>;
    /// Records a new version (creating the function if needed) with the given
    /// settings overrides, atomically; returns the function as stored.
    fn add_version(
        &self,
        tenant: &str,
        name: &str,
        overrides: &SettingsOverrides,
        version: NewVersion<'_>,
    ) -> Result<FunctionRecord, StoreError>;
    /// Replaces a function's overrides; `None` when it does not exist.
    fn set_overrides(
        &self,
        tenant: &str,
        name: &str,
        overrides: &SettingsOverrides,
    ) -> Result<Option<FunctionRecord>, StoreError>;
    /// Deletes a function and its versions; `false` when it did not exist.
    fn delete_function(&self, tenant: &str, name: &str) -> Result<bool, StoreError>;
    /// Every model with its versions.
    fn load_models(&self) -> Result<Vec<ModelRecord>, StoreError>;
    /// Records a new model version (creating the model if needed).
    fn add_model_version(
        &self,
        tenant: &str,
        name: &str,
        version: &ModelVersionRecord,
    ) -> Result<ModelRecord, StoreError>;
    /// Deletes a model and its versions; `false` when it did not exist.
    fn delete_model(&self, tenant: &str, name: &str) -> Result<bool, StoreError>;
    /// A small key/value area for platform state.
    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError>;
    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;
}

/// Content-addressed blobs: component sources and compiled artifacts.
pub trait BlobStore: Send + Sync {
    fn put_source(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError>;
    fn read_source(&self, digest: &str) -> Result<Vec<u8>, StoreError>;
    fn put_model(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError>;
    fn read_model(&self, digest: &str) -> Result<Vec<u8>, StoreError>;
    /// A local file holding the compiled artifact, if there is one for this
    /// engine.
    fn artifact_path(&self, digest: &str) -> Option<PathBuf>;
    fn put_artifact(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, StoreError>;
    /// Removes a component's source and this engine's artifact of it
    /// (either may be absent already).
    fn delete_component(&self, digest: &str) -> Result<(), StoreError>;
    /// Removes a model's bytes (absent already is no error).
    fn delete_model(&self, digest: &str) -> Result<(), StoreError>;
    /// The digests of the models stored.
    fn model_digests(&self) -> Result<Vec<String>, StoreError>;
    /// The digests of the components stored: sources and this engine's
    /// artifacts.
    fn component_digests(&self) -> Result<Vec<String>, StoreError>;
}

/// The key naming `name` of `tenant` across tenants. Names never contain
/// `/` (see [`super::check_name`]), so the key is unambiguous.
pub fn qualify(tenant: &str, name: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + name.len() + 1);
    key.push_str(tenant);
    key.push('/');
    key.push_str(name);
    key
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The tenant that owns everything created before tenants existed, and
/// everything a single-user install creates.
pub const DEFAULT_TENANT: &str = "default";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    quotas     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    hash       TEXT NOT NULL UNIQUE,
    scopes     TEXT NOT NULL,
    prefix     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS functions (
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    settings   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS versions (
    tenant     TEXT NOT NULL,
    function   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    digest     TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    compile_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, function, version),
    FOREIGN KEY (tenant, function) REFERENCES functions(tenant, name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS models (
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS model_versions (
    tenant     TEXT NOT NULL,
    model      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    digest     TEXT NOT NULL,
    encoding   TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    load_ms    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, model, version),
    FOREIGN KEY (tenant, model) REFERENCES models(tenant, name) ON DELETE CASCADE
);
";

/// Moves a data directory from before tenants (functions and models keyed
/// by name alone) to the current schema: everything goes to the default
/// tenant. Runs once, in one transaction.
const MIGRATE_TO_TENANTS: &str = "
ALTER TABLE functions RENAME TO functions_v1;
ALTER TABLE versions RENAME TO versions_v1;
ALTER TABLE models RENAME TO models_v1;
ALTER TABLE model_versions RENAME TO model_versions_v1;
";

const COPY_FROM_V1: &str = "
INSERT INTO functions SELECT 'default', name, settings, created_at, updated_at FROM functions_v1;
INSERT INTO versions SELECT 'default', function, version, digest, size_bytes, compile_ms, created_at FROM versions_v1;
INSERT INTO models SELECT 'default', name, created_at, updated_at FROM models_v1;
INSERT INTO model_versions SELECT 'default', model, version, digest, encoding, size_bytes, load_ms, created_at FROM model_versions_v1;
DROP TABLE versions_v1;
DROP TABLE functions_v1;
DROP TABLE model_versions_v1;
DROP TABLE models_v1;
";

/// The embedded metadata store: one SQLite file in WAL mode.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

/// Applies [`MIGRATE_TO_TENANTS`] to a database from before tenants.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let old_functions: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'functions'",
        [],
        |r| r.get(0),
    )?;
    let has_tenant: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('functions') WHERE name = 'tenant'",
        [],
        |r| r.get(0),
    )?;
    if !old_functions || has_tenant {
        return Ok(());
    }
    tracing::info!("migrating the metadata store: functions and models now belong to tenants");
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let result = conn.execute_batch(&format!(
        "BEGIN; {MIGRATE_TO_TENANTS} {SCHEMA} {COPY_FROM_V1} COMMIT;"
    ));
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK;");
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(result?)
}

fn read_function(
    conn: &Connection,
    tenant: &str,
    name: &str,
) -> Result<Option<FunctionRecord>, StoreError> {
    let row = conn
        .query_row(
            "SELECT settings, created_at, updated_at FROM functions WHERE tenant = ?1 AND name = ?2",
            [tenant, name],
            |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((settings, created_at_ms, updated_at_ms)) = row else {
        return Ok(None);
    };
    let overrides =
        serde_json::from_str(&settings).map_err(|source| StoreError::CorruptSettings {
            name: name.to_string(),
            source,
        })?;
    let mut stmt = conn.prepare_cached(
        "SELECT version, digest, size_bytes, compile_ms, created_at
         FROM versions WHERE tenant = ?1 AND function = ?2 ORDER BY version",
    )?;
    let versions = stmt
        .query_map([tenant, name], |r| {
            Ok(VersionRecord {
                version: r.get(0)?,
                digest: r.get(1)?,
                size_bytes: r.get(2)?,
                compile_ms: r.get(3)?,
                created_at_ms: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(FunctionRecord {
        tenant: tenant.into(),
        name: name.into(),
        overrides,
        created_at_ms,
        updated_at_ms,
        versions,
    }))
}

fn read_model(
    conn: &Connection,
    tenant: &str,
    name: &str,
) -> Result<Option<ModelRecord>, StoreError> {
    let row = conn
        .query_row(
            "SELECT created_at, updated_at FROM models WHERE tenant = ?1 AND name = ?2",
            [tenant, name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((created_at_ms, updated_at_ms)) = row else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT version, digest, encoding, size_bytes, load_ms, created_at
         FROM model_versions WHERE tenant = ?1 AND model = ?2 ORDER BY version",
    )?;
    let versions = stmt
        .query_map([tenant, name], |r| {
            Ok(ModelVersionRecord {
                version: r.get(0)?,
                digest: r.get(1)?,
                encoding: r.get(2)?,
                size_bytes: r.get(3)?,
                load_ms: r.get(4)?,
                created_at_ms: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(ModelRecord {
        tenant: tenant.to_string(),
        name: name.to_string(),
        created_at_ms,
        updated_at_ms,
        versions,
    }))
}

fn overrides_json(overrides: &SettingsOverrides) -> String {
    serde_json::to_string(overrides).unwrap_or_else(|_| "{}".to_string())
}

impl MetadataStore for SqliteStore {
    fn load_all(&self) -> Result<Vec<FunctionRecord>, StoreError> {
        let conn = self.conn()?;
        let names = conn
            .prepare("SELECT tenant, name FROM functions ORDER BY tenant, name")?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        names
            .iter()
            .filter_map(|(t, n)| read_function(&conn, t, n).transpose())
            .collect()
    }

    fn add_version(
        &self,
        tenant: &str,
        name: &str,
        overrides: &SettingsOverrides,
        v: NewVersion<'_>,
    ) -> Result<FunctionRecord, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO functions (tenant, name, settings, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(tenant, name) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
            params![tenant, name, overrides_json(overrides), now],
        )?;
        tx.execute(
            "INSERT INTO versions (tenant, function, version, digest, size_bytes, compile_ms, created_at)
             SELECT ?1, ?2, COALESCE(MAX(version), 0) + 1, ?3, ?4, ?5, ?6 FROM versions
             WHERE tenant = ?1 AND function = ?2",
            params![tenant, name, v.digest, v.size_bytes, v.compile_ms, now],
        )?;
        let record = read_function(&tx, tenant, name)?;
        tx.commit()?;
        record.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    fn set_overrides(
        &self,
        tenant: &str,
        name: &str,
        overrides: &SettingsOverrides,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        let conn = self.conn()?;
        let changed = conn.execute(
            "UPDATE functions SET settings = ?3, updated_at = ?4 WHERE tenant = ?1 AND name = ?2",
            params![tenant, name, overrides_json(overrides), now_ms()],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        read_function(&conn, tenant, name)
    }

    fn delete_function(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        Ok(conn.execute(
            "DELETE FROM functions WHERE tenant = ?1 AND name = ?2",
            [tenant, name],
        )? > 0)
    }

    fn load_models(&self) -> Result<Vec<ModelRecord>, StoreError> {
        let conn = self.conn()?;
        let names = conn
            .prepare("SELECT tenant, name FROM models ORDER BY tenant, name")?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        names
            .iter()
            .filter_map(|(t, n)| read_model(&conn, t, n).transpose())
            .collect()
    }

    fn add_model_version(
        &self,
        tenant: &str,
        name: &str,
        v: &ModelVersionRecord,
    ) -> Result<ModelRecord, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO models (tenant, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(tenant, name) DO UPDATE SET updated_at = excluded.updated_at",
            params![tenant, name, now],
        )?;
        tx.execute(
            "INSERT INTO model_versions (tenant, model, version, digest, encoding, size_bytes, load_ms, created_at)
             SELECT ?1, ?2, COALESCE(MAX(version), 0) + 1, ?3, ?4, ?5, ?6, ?7 FROM model_versions
             WHERE tenant = ?1 AND model = ?2",
            params![tenant, name, v.digest, v.encoding, v.size_bytes, v.load_ms, now],
        )?;
        let record = read_model(&tx, tenant, name)?;
        tx.commit()?;
        record.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    fn delete_model(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        Ok(conn.execute(
            "DELETE FROM models WHERE tenant = ?1 AND name = ?2",
            [tenant, name],
        )? > 0)
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }
}

/// Blobs on the local filesystem:
/// `sources/sha256/<digest>.wasm` and `artifacts/<engine>/<digest>.cwasm`,
/// where `<engine>` is the engine's compatibility hash, so a wasmtime upgrade
/// or a different compiler configuration never loads a stale artifact.
pub struct FsBlobStore {
    sources: PathBuf,
    models: PathBuf,
    artifacts: PathBuf,
}

impl FsBlobStore {
    pub fn open(root: &Path, engine_hash: &str) -> Result<Self, StoreError> {
        let sources = root.join("sources").join("sha256");
        let models = root.join("models").join("sha256");
        let artifacts = root.join("artifacts").join(engine_hash);
        for dir in [&sources, &models, &artifacts] {
            crate::datadir::create_dir(dir)
                .map_err(io_err(format!("creating {}", dir.display())))?;
        }
        Ok(Self {
            sources,
            models,
            artifacts,
        })
    }

    fn source_file(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.sources.join(format!("{}.wasm", file_name(digest)?)))
    }

    fn model_file(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.models.join(file_name(digest)?))
    }

    fn artifact_file(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.artifacts.join(format!("{}.cwasm", file_name(digest)?)))
    }
}

/// A digest as a file name: 64 lowercase hexadecimal digits, and nothing
/// that could step out of the store's directories, whatever a metadata
/// store hands back.
fn file_name(digest: &str) -> Result<&str, StoreError> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(digest)
    } else {
        Err(StoreError::Corrupt(format!(
            "`{}` is not a SHA-256 digest",
            digest.escape_debug()
        )))
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
    let result = (|| {
        let mut file = crate::datadir::file_options()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(format!("writing {}", path.display())))
}

impl BlobStore for FsBlobStore {
    fn put_source(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.source_file(digest)?;
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    fn read_source(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.source_file(digest)?;
        std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))
    }

    fn put_model(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.model_file(digest)?;
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    fn read_model(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.model_file(digest)?;
        std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))
    }

    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        let path = self.artifact_file(digest).ok()?;
        path.is_file().then_some(path)
    }

    fn put_artifact(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.artifact_file(digest)?;
        write_atomic(&path, bytes)?;
        Ok(path)
    }

    fn delete_component(&self, digest: &str) -> Result<(), StoreError> {
        remove_files(&[self.source_file(digest)?, self.artifact_file(digest)?])
    }

    fn component_digests(&self) -> Result<Vec<String>, StoreError> {
        digests_in(&[(&self.sources, ".wasm"), (&self.artifacts, ".cwasm")])
    }

    fn delete_model(&self, digest: &str) -> Result<(), StoreError> {
        remove_files(&[self.model_file(digest)?])
    }

    fn model_digests(&self) -> Result<Vec<String>, StoreError> {
        digests_in(&[(&self.models, "")])
    }
}

/// Removes `paths`; one already gone is no error.
fn remove_files(paths: &[PathBuf]) -> Result<(), StoreError> {
    for path in paths {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing {}", path.display()))(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The digests named by the files in each directory with its extension,
/// sorted, once each. Anything else (a write cut short) is not a blob.
fn digests_in(dirs: &[(&PathBuf, &str)]) -> Result<Vec<String>, StoreError> {
    let mut digests = Vec::new();
    for (dir, extension) in dirs {
        let listing = |source| StoreError::Io {
            context: format!("listing {}", dir.display()),
            source,
        };
        for entry in std::fs::read_dir(dir).map_err(listing)? {
            let name = entry.map_err(listing)?.file_name();
            if let Some(digest) = name.to_str().and_then(|n| n.strip_suffix(extension))
                && file_name(digest).is_ok()
            {
                digests.push(digest.to_string());
            }
        }
    }
    digests.sort_unstable();
    digests.dedup();
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_by_digests_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = FsBlobStore::open(dir.path(), "engine").expect("open");
        let digest = "ab".repeat(32);
        blobs.put_model(&digest, b"model").expect("a digest");
        assert_eq!(blobs.read_model(&digest).expect("read"), b"model");
        for bad in [
            "../../glia.db",
            "",
            "AB",
            &"ab".repeat(33),
            &format!("{}/x", "a".repeat(62)),
        ] {
            assert!(
                matches!(blobs.read_model(bad), Err(StoreError::Corrupt(_))),
                "{bad}"
            );
            assert!(
                matches!(blobs.read_source(bad), Err(StoreError::Corrupt(_))),
                "{bad}"
            );
            assert!(blobs.put_model(bad, b"x").is_err(), "{bad}");
            assert!(blobs.artifact_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn components_are_listed_and_deleted_by_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = FsBlobStore::open(dir.path(), "engine").expect("open");
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        blobs.put_source(&a, b"a").expect("source");
        blobs.put_artifact(&a, b"a compiled").expect("artifact");
        blobs
            .put_artifact(&b, b"b compiled")
            .expect("artifact only");
        std::fs::write(dir.path().join("sources/sha256/junk.wasm"), b"").expect("junk");
        assert_eq!(
            blobs.component_digests().expect("list"),
            [a.clone(), b.clone()]
        );
        blobs.delete_component(&a).expect("delete");
        blobs
            .delete_component(&a)
            .expect("deleting again is no error");
        assert!(blobs.read_source(&a).is_err() && blobs.artifact_path(&a).is_none());
        assert_eq!(blobs.component_digests().expect("list"), [b]);
        assert!(blobs.delete_component("../../glia.db").is_err());
        blobs.put_model(&a, b"a model").expect("model");
        assert_eq!(blobs.model_digests().expect("list"), [a.as_str()]);
        blobs.delete_model(&a).expect("delete");
        assert!(blobs.model_digests().expect("list").is_empty());
    }

    #[test]
    fn versions_count_up_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("glia.db");
        let store = SqliteStore::open(&db).expect("open");
        let o = SettingsOverrides {
            timeout_ms: Some(5),
            ..Default::default()
        };
        let v = |d| NewVersion {
            digest: d,
            size_bytes: 3,
            compile_ms: 1,
        };
        store.add_version("t", "f", &o, v("aa")).expect("v1");
        store
            .add_version("u", "f", &o, v("aa"))
            .expect("another tenant's f");
        let rec = store.add_version("t", "f", &o, v("bb")).expect("v2");
        assert_eq!(rec.versions.len(), 2);
        assert_eq!(rec.latest().map(|v| v.version), Some(2));
        drop(store);
        let store = SqliteStore::open(&db).expect("reopen");
        let all = store.load_all().expect("load");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].overrides, o);
        assert_eq!((&*all[0].tenant, all[0].versions.len()), ("t", 2));
        assert_eq!((&*all[1].tenant, all[1].versions.len()), ("u", 1));
        assert!(store.delete_function("t", "f").expect("delete"));
        assert_eq!(store.load_all().expect("load").len(), 1);
        let rec = store.add_version("t", "f", &o, v("cc")).expect("v1 again");
        assert_eq!(rec.latest().map(|v| v.version), Some(1));
    }

    #[test]
    fn a_store_from_before_tenants_moves_to_the_default_tenant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("glia.db");
        let conn = Connection::open(&db).expect("open");
        conn.execute_batch(
            "CREATE TABLE functions (name TEXT PRIMARY KEY, settings TEXT NOT NULL,
                 created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
             CREATE TABLE versions (function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
                 version INTEGER NOT NULL, digest TEXT NOT NULL, size_bytes INTEGER NOT NULL,
                 compile_ms INTEGER NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (function, version));
             CREATE TABLE models (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
             CREATE TABLE model_versions (model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
                 version INTEGER NOT NULL, digest TEXT NOT NULL, encoding TEXT NOT NULL,
                 size_bytes INTEGER NOT NULL, load_ms INTEGER NOT NULL, created_at INTEGER NOT NULL,
                 PRIMARY KEY (model, version));
             INSERT INTO functions VALUES ('hello', '{}', 1, 2);
             INSERT INTO versions VALUES ('hello', 1, 'aa', 3, 4, 5);
             INSERT INTO models VALUES ('digits', 1, 2);
             INSERT INTO model_versions VALUES ('digits', 1, 'bb', 'onnx', 6, 7, 8);",
        )
        .expect("old schema");
        drop(conn);
        let store = SqliteStore::open(&db).expect("migrates");
        let functions = store.load_all().expect("functions");
        assert_eq!(functions.len(), 1);
        assert_eq!(functions[0].key(), "default/hello");
        assert_eq!(functions[0].versions[0].digest, "aa");
        let models = store.load_models().expect("models");
        assert_eq!(models[0].key(), "default/digits");
        assert_eq!(models[0].versions[0].size_bytes, 6);
        drop(store);
        SqliteStore::open(&db).expect("reopens without migrating again");
    }
}

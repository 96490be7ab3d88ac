//! Where tenants and keys are kept: the metadata store's SQLite file
//! (tables `tenants` and `api_keys`), behind a trait like the registry's.

use rusqlite::params;

use super::quota::QuotaOverrides;
use super::{ApiKey, Scopes, Tenant};
use crate::registry::{SqliteStore, StoreError};

/// A key as stored: its record and its hash.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub key: ApiKey,
    pub hash: String,
}

/// Tenant and key storage.
pub trait AuthStore: Send + Sync {
    fn tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Inserts a tenant; `false` when its id or name is taken.
    fn insert_tenant(&self, tenant: &Tenant) -> Result<bool, StoreError>;
    fn set_quotas(&self, id: &str, quotas: &QuotaOverrides) -> Result<bool, StoreError>;
    /// Deletes a tenant and its keys.
    fn delete_tenant(&self, id: &str) -> Result<bool, StoreError>;
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Inserts a key, or replaces the one with the same id.
    fn put_key(&self, key: &StoredKey) -> Result<(), StoreError>;
    fn delete_key(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::InvalidColumnType(
        0,
        format!("{what}: {e}"),
        rusqlite::types::Type::Text,
    ))
}

impl AuthStore for SqliteStore {
    fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT id, name, quotas, created_at FROM tenants ORDER BY created_at, id")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, name, quotas, created_at_ms)| {
                Ok(Tenant {
                    quotas: serde_json::from_str(&quotas)
                        .map_err(|e| corrupt(&format!("quotas of tenant {id}"), e))?,
                    id,
                    name,
                    created_at_ms,
                })
            })
            .collect()
    }

    fn insert_tenant(&self, t: &Tenant) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let quotas = serde_json::to_string(&t.quotas).unwrap_or_else(|_| "{}".into());
        Ok(conn.execute(
            "INSERT INTO tenants (id, name, quotas, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            params![t.id, t.name, quotas, t.created_at_ms],
        )? > 0)
    }

    fn set_quotas(&self, id: &str, quotas: &QuotaOverrides) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let quotas = serde_json::to_string(quotas).unwrap_or_else(|_| "{}".into());
        Ok(conn.execute(
            "UPDATE tenants SET quotas = ?2 WHERE id = ?1",
            params![id, quotas],
        )? > 0)
    }

    fn delete_tenant(&self, id: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        Ok(conn.execute("DELETE FROM tenants WHERE id = ?1", [id])? > 0)
    }

    fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, tenant, hash, scopes, prefix, created_at FROM api_keys ORDER BY created_at, id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, tenant, hash, scopes, prefix, created_at_ms)| {
                Ok(StoredKey {
                    key: ApiKey {
                        scopes: Scopes::parse_list(scopes.split(','))
                            .map_err(|e| corrupt(&format!("scopes of key {id}"), e))?,
                        id,
                        tenant,
                        prefix,
                        created_at_ms,
                    },
                    hash,
                })
            })
            .collect()
    }

    fn put_key(&self, k: &StoredKey) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO api_keys (id, tenant, hash, scopes, prefix, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET hash = excluded.hash, scopes = excluded.scopes,
                 prefix = excluded.prefix",
            params![
                k.key.id,
                k.key.tenant,
                k.hash,
                k.key.scopes.names().join(","),
                k.key.prefix,
                k.key.created_at_ms
            ],
        )?;
        Ok(())
    }

    fn delete_key(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        Ok(conn.execute(
            "DELETE FROM api_keys WHERE id = ?1 AND tenant = ?2",
            [id, tenant],
        )? > 0)
    }
}

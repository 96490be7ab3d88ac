//! Tenants, API keys and scopes: who is calling, and what they may do.
//!
//! glia runs code of many tenants side by side, so every request is made
//! by a [`Principal`]: a tenant and the scopes of the key it presented
//! (`Authorization: Bearer KEY`). Everything a tenant owns — functions,
//! models, invocations, usage — is looked up within its tenant, so another
//! tenant's things are simply not found (404: existence does not leak).
//!
//! Scopes: `admin` (tenants and keys), `deploy` (functions and models),
//! `invoke` (the data plane) and `read` (usage, invocations, listings).
//! The built-in `default` tenant is the operator's: its `admin` keys
//! manage every tenant; an `admin` key of another tenant manages only that
//! tenant's keys.
//!
//! The first start creates an admin key for the default tenant: the value
//! of `GLIA_ADMIN_KEY` when set, otherwise a random one written to
//! `admin.key` (mode 0600) in the data directory and printed once. Keys are
//! stored as SHA-256 hashes ([`keys`]); the whole key table is held in
//! memory, so authenticating is a hash and a map lookup.
//!
//! With `[auth] enabled = false` (`glia serve --dev`) every request acts as
//! the default tenant's admin: a single-user mode for development.

pub mod keys;
pub mod quota;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;

pub use quota::{QuotaOverrides, QuotaPatch, QuotaRefusal, Quotas, SpendReservation, TenantMeter};
pub use store::{AuthStore, StoredKey};

use crate::config::AuthConfig;
use crate::registry::{DEFAULT_TENANT, StoreError, now_ms};

/// Id of the bootstrap admin key (generated, or from `GLIA_ADMIN_KEY`).
pub const ADMIN_KEY_ID: &str = "admin";
/// File in the data directory holding a generated admin key.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// Keys one tenant may hold.
pub const MAX_KEYS_PER_TENANT: usize = 100;
/// Tenants one platform may hold.
pub const MAX_TENANTS: usize = 100_000;

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Deploy,
    Invoke,
    Read,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Admin, Scope::Deploy, Scope::Invoke, Scope::Read];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
            Scope::Read => "read",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Admin => 1,
            Scope::Deploy => 2,
            Scope::Invoke => 4,
            Scope::Read => 8,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub const EVERY: Scopes = Scopes(15);

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn with(self, scope: Scope) -> Self {
        Scopes(self.0 | scope.bit())
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Scope::name)
            .collect()
    }

    /// Parses scope names; an unknown one is an error naming it.
    pub fn parse_list<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        names
            .into_iter()
            .filter(|n| !n.is_empty())
            .try_fold(Scopes::default(), |acc, n| {
                Scope::parse(n).map(|s| acc.with(s)).ok_or_else(|| {
                    format!(
                        "unknown scope `{}` (scopes: admin, deploy, invoke, read)",
                        n.chars().take(32).collect::<String>()
                    )
                })
            })
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    /// The quotas it sets for itself.
    pub quotas: QuotaOverrides,
}

/// An API key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub tenant: String,
    pub scopes: Scopes,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    pub created_at_ms: i64,
}

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant id.
    pub tenant: String,
    pub scopes: Scopes,
    /// The key presented; `None` in single-user mode.
    pub key_id: Option<String>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// An admin of the default tenant: manages every tenant.
    pub fn is_platform_admin(&self) -> bool {
        self.tenant == DEFAULT_TENANT && self.has(Scope::Admin)
    }
}

/// Why a request could not be authenticated, or a tenant/key operation
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("this route needs an API key: send `Authorization: Bearer KEY`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("{0}")]
    BadRequest(String),
    #[error("tenant `{0}` not found")]
    TenantNotFound(String),
    #[error("key `{0}` not found")]
    KeyNotFound(String),
    #[error("a tenant named `{0}` already exists")]
    TenantExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// A key as the in-memory index holds it.
#[derive(Debug)]
struct KeyEntry {
    principal: Principal,
}

/// Tenants, keys, and each tenant's live quota counters.
pub struct Auth {
    store: Arc<dyn AuthStore>,
    enabled: bool,
    defaults: Quotas,
    /// Key hash → who it is.
    keys: DashMap<String, Arc<KeyEntry>>,
    /// Key id → its record.
    key_records: DashMap<String, ApiKey>,
    tenants: DashMap<String, Arc<Tenant>>,
    /// Tenant name → id.
    names: DashMap<String, String>,
    meters: DashMap<String, Arc<TenantMeter>>,
}

/// What opening produced for the operator to see once.
#[derive(Debug, Default)]
pub struct Bootstrap {
    /// A generated admin key, and the file it was written to.
    pub generated_admin_key: Option<(String, PathBuf)>,
}

impl Auth {
    /// Loads tenants and keys, creates the default tenant, and makes sure
    /// an admin key exists (see the module docs).
    pub fn open(
        store: Arc<dyn AuthStore>,
        config: &AuthConfig,
        defaults: Quotas,
        data_dir: &Path,
    ) -> Result<(Self, Bootstrap), AuthError> {
        let auth = Self {
            store,
            enabled: config.enabled,
            defaults,
            keys: DashMap::new(),
            key_records: DashMap::new(),
            tenants: DashMap::new(),
            names: DashMap::new(),
            meters: DashMap::new(),
        };
        auth.store.insert_tenant(&Tenant {
            id: DEFAULT_TENANT.into(),
            name: DEFAULT_TENANT.into(),
            created_at_ms: now_ms(),
            quotas: QuotaOverrides::default(),
        })?;
        for tenant in auth.store.tenants()? {
            auth.names.insert(tenant.name.clone(), tenant.id.clone());
            auth.tenants.insert(tenant.id.clone(), Arc::new(tenant));
        }
        for stored in auth.store.keys()? {
            auth.index_key(stored);
        }
        let mut bootstrap = Bootstrap::default();
        if let Some(key) = &config.admin_key {
            if !keys::acceptable_admin_key(key) {
                return Err(AuthError::BadRequest(
                    "GLIA_ADMIN_KEY must be 32 to 256 printable characters".into(),
                ));
            }
            auth.put_admin_key(key)?;
        } else if !auth.key_records.contains_key(ADMIN_KEY_ID) {
            let key = keys::generate().map_err(AuthError::Internal)?;
            let path = data_dir.join(ADMIN_KEY_FILE);
            write_secret(&path, &key)
                .map_err(|e| AuthError::Internal(format!("writing {}: {e}", path.display())))?;
            auth.put_admin_key(&key)?;
            bootstrap.generated_admin_key = Some((key, path));
        }
        auth.forget_stale_admin_key_file(&data_dir.join(ADMIN_KEY_FILE))?;
        Ok((auth, bootstrap))
    }

    /// Removes an `admin.key` that no longer holds the admin key (it was
    /// replaced through `GLIA_ADMIN_KEY`): a revoked key left on disk
    /// misleads the command line and whoever finds it.
    fn forget_stale_admin_key_file(&self, path: &Path) -> Result<(), AuthError> {
        let held = match std::fs::read_to_string(path) {
            Ok(held) => held,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(AuthError::Internal(format!(
                    "reading {}: {e}",
                    path.display()
                )));
            }
        };
        let current = self
            .keys
            .get(&keys::hash(held.trim()))
            .is_some_and(|e| e.principal.key_id.as_deref() == Some(ADMIN_KEY_ID));
        if !current {
            std::fs::remove_file(path)
                .map_err(|e| AuthError::Internal(format!("removing {}: {e}", path.display())))?;
            tracing::warn!(
                file = %path.display(),
                "removed the admin key file: it held a key that is no longer the admin key"
            );
        }
        Ok(())
    }

    fn put_admin_key(&self, key: &str) -> Result<(), AuthError> {
        let hash = keys::hash(key);
        if self.keys.contains_key(&hash) && self.key_records.contains_key(ADMIN_KEY_ID) {
            return Ok(());
        }
        let stored = StoredKey {
            key: ApiKey {
                id: ADMIN_KEY_ID.into(),
                tenant: DEFAULT_TENANT.into(),
                scopes: Scopes::EVERY,
                prefix: keys::shown_prefix(key),
                created_at_ms: now_ms(),
            },
            hash,
        };
        self.store.put_key(&stored)?;
        // Replacing the admin key retires the old one.
        self.keys
            .retain(|_, e| e.principal.key_id.as_deref() != Some(ADMIN_KEY_ID));
        self.index_key(stored);
        Ok(())
    }

    fn index_key(&self, stored: StoredKey) {
        self.keys.insert(
            stored.hash,
            Arc::new(KeyEntry {
                principal: Principal {
                    tenant: stored.key.tenant.clone(),
                    scopes: stored.key.scopes,
                    key_id: Some(stored.key.id.clone()),
                },
            }),
        );
        self.key_records.insert(stored.key.id.clone(), stored.key);
    }

    /// Whether requests must present keys.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who presented `authorization` (the header's value): `Ok(None)` when
    /// no key was sent. In single-user mode everyone is the default
    /// tenant's admin.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Principal>, AuthError> {
        if !self.enabled {
            return Ok(Some(Principal {
                tenant: DEFAULT_TENANT.into(),
                scopes: Scopes::EVERY,
                key_id: None,
            }));
        }
        let Some(value) = authorization else {
            return Ok(None);
        };
        let value = std::str::from_utf8(value).map_err(|_| AuthError::Invalid)?;
        let (scheme, key) = value.trim().split_once(' ').ok_or(AuthError::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Invalid);
        }
        let key = key.trim();
        if key.is_empty() || key.len() > 256 {
            return Err(AuthError::Invalid);
        }
        self.keys
            .get(&keys::hash(key))
            .map(|e| Some(e.principal.clone()))
            .ok_or(AuthError::Invalid)
    }

    /// A tenant's effective quotas (the defaults for an unknown tenant).
    pub fn quotas(&self, tenant: &str) -> Quotas {
        match self.tenants.get(tenant) {
            Some(t) => t.quotas.resolve(&self.defaults),
            None => self.defaults.clone(),
        }
    }

    /// A tenant's live counters.
    pub fn meter(&self, tenant: &str) -> Arc<TenantMeter> {
        if let Some(m) = self.meters.get(tenant) {
            return m.clone();
        }
        self.meters.entry(tenant.to_string()).or_default().clone()
    }

    /// A tenant by id or by name.
    pub fn tenant(&self, id_or_name: &str) -> Option<Arc<Tenant>> {
        if let Some(t) = self.tenants.get(id_or_name) {
            return Some(t.clone());
        }
        let id = self.names.get(id_or_name)?.value().clone();
        self.tenants.get(&id).map(|t| t.clone())
    }

    /// Every tenant, oldest first.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<_> = self.tenants.iter().map(|t| t.value().clone()).collect();
        all.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        all
    }

    /// Creates a tenant.
    pub fn create_tenant(&self, name: &str) -> Result<Arc<Tenant>, AuthError> {
        crate::registry::check_name(name).map_err(|e| AuthError::BadRequest(e.to_string()))?;
        if self.tenant(name).is_some() {
            return Err(AuthError::TenantExists(name.into()));
        }
        if self.tenants.len() >= MAX_TENANTS {
            return Err(AuthError::Limit(format!(
                "the platform holds its maximum of {MAX_TENANTS} tenants"
            )));
        }
        let tenant = Tenant {
            id: keys::new_id("ten").map_err(AuthError::Internal)?,
            name: name.into(),
            created_at_ms: now_ms(),
            quotas: QuotaOverrides::default(),
        };
        if !self.store.insert_tenant(&tenant)? {
            return Err(AuthError::TenantExists(name.into()));
        }
        let tenant = Arc::new(tenant);
        self.names.insert(tenant.name.clone(), tenant.id.clone());
        self.tenants.insert(tenant.id.clone(), tenant.clone());
        tracing::info!(tenant = %tenant.id, name, "tenant created");
        Ok(tenant)
    }

    /// Changes a tenant's quotas.
    pub fn patch_quotas(&self, id: &str, patch: &QuotaPatch) -> Result<Arc<Tenant>, AuthError> {
        let current = self
            .tenants
            .get(id)
            .map(|t| t.value().clone())
            .ok_or_else(|| AuthError::TenantNotFound(id.into()))?;
        let mut quotas = current.quotas.clone();
        quotas.apply(patch);
        if !self.store.set_quotas(id, &quotas)? {
            return Err(AuthError::TenantNotFound(id.into()));
        }
        let tenant = Arc::new(Tenant {
            quotas,
            ..(*current).clone()
        });
        self.tenants.insert(id.to_string(), tenant.clone());
        Ok(tenant)
    }

    /// Deletes a tenant and its keys. The caller checks that it owns
    /// nothing else.
    pub fn delete_tenant(&self, id: &str) -> Result<Arc<Tenant>, AuthError> {
        if id == DEFAULT_TENANT {
            return Err(AuthError::Conflict(
                "the default tenant cannot be deleted".into(),
            ));
        }
        let tenant = self
            .tenants
            .get(id)
            .map(|t| t.value().clone())
            .ok_or_else(|| AuthError::TenantNotFound(id.into()))?;
        self.store.delete_tenant(id)?;
        self.tenants.remove(id);
        self.names.remove(&tenant.name);
        self.meters.remove(id);
        self.keys.retain(|_, e| e.principal.tenant != id);
        self.key_records.retain(|_, k| k.tenant != id);
        tracing::info!(tenant = %id, "tenant deleted");
        Ok(tenant)
    }

    /// Creates a key for `tenant`; returns its record and the key itself,
    /// which is never shown again.
    pub fn create_key(&self, tenant: &str, scopes: Scopes) -> Result<(ApiKey, String), AuthError> {
        if !self.tenants.contains_key(tenant) {
            return Err(AuthError::TenantNotFound(tenant.into()));
        }
        if scopes.is_empty() {
            return Err(AuthError::BadRequest(
                "a key needs at least one scope (admin, deploy, invoke, read)".into(),
            ));
        }
        if self.keys_of(tenant).len() >= MAX_KEYS_PER_TENANT {
            return Err(AuthError::Limit(format!(
                "a tenant holds at most {MAX_KEYS_PER_TENANT} keys"
            )));
        }
        let secret = keys::generate().map_err(AuthError::Internal)?;
        let key = ApiKey {
            id: keys::new_id("key").map_err(AuthError::Internal)?,
            tenant: tenant.into(),
            scopes,
            prefix: keys::shown_prefix(&secret),
            created_at_ms: now_ms(),
        };
        let stored = StoredKey {
            key: key.clone(),
            hash: keys::hash(&secret),
        };
        self.store.put_key(&stored)?;
        self.index_key(stored);
        tracing::info!(tenant, key = %key.id, scopes = ?scopes.names(), "key created");
        Ok((key, secret))
    }

    /// A tenant's keys, oldest first.
    pub fn keys_of(&self, tenant: &str) -> Vec<ApiKey> {
        let mut all: Vec<ApiKey> = self
            .key_records
            .iter()
            .filter(|k| k.value().tenant == tenant)
            .map(|k| k.value().clone())
            .collect();
        all.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        all
    }

    /// One of a tenant's keys.
    pub fn key_of(&self, tenant: &str, id: &str) -> Option<ApiKey> {
        self.key_records
            .get(id)
            .filter(|k| k.value().tenant == tenant)
            .map(|k| k.value().clone())
    }

    /// Revokes a key; it stops working at once.
    pub fn delete_key(&self, tenant: &str, id: &str) -> Result<ApiKey, AuthError> {
        let key = self
            .key_of(tenant, id)
            .ok_or_else(|| AuthError::KeyNotFound(id.into()))?;
        self.store.delete_key(tenant, id)?;
        self.keys
            .retain(|_, e| e.principal.key_id.as_deref() != Some(id));
        self.key_records.remove(id);
        tracing::info!(tenant, key = %id, "key revoked");
        Ok(key)
    }
}

/// Writes a secret to a file only its owner can read.
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SqliteStore;

    fn open(dir: &Path, admin: Option<&str>) -> (Auth, Bootstrap) {
        let store = Arc::new(SqliteStore::open(&dir.join("glia.db")).expect("store"));
        let config = AuthConfig {
            enabled: true,
            admin_key: admin.map(str::to_string),
        };
        Auth::open(store, &config, Quotas::default(), dir).expect("auth")
    }

    #[test]
    fn the_first_start_generates_an_admin_key_once_into_a_private_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, boot) = open(dir.path(), None);
        let (key, path) = boot.generated_admin_key.expect("generated");
        assert_eq!(
            std::fs::read_to_string(&path).expect("file").trim(),
            key.as_str()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let header = format!("Bearer {key}");
        let who = auth
            .authenticate(Some(header.as_bytes()))
            .expect("valid")
            .expect("a principal");
        assert!(who.is_platform_admin());
        drop(auth);
        let (auth, boot) = open(dir.path(), None);
        assert!(boot.generated_admin_key.is_none(), "printed once");
        assert!(auth.authenticate(Some(header.as_bytes())).is_ok());
        assert!(path.exists(), "the file keeps the key it still holds");

        // Rotated through GLIA_ADMIN_KEY: the old key stops working, and
        // the file that held it goes.
        drop(auth);
        let rotated = "r".repeat(40);
        let (auth, _) = open(dir.path(), Some(&rotated));
        assert!(auth.authenticate(Some(header.as_bytes())).is_err());
        assert!(!path.exists(), "the revoked key is not left on disk");
        // The same key again, once more: nothing to remove, nothing fails.
        drop(auth);
        std::fs::write(&path, format!("{rotated}\n")).expect("write");
        let (_auth, _) = open(dir.path(), Some(&rotated));
        assert!(path.exists(), "a file holding the current key stays");
    }

    #[test]
    fn keys_authenticate_until_revoked_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = "x".repeat(40);
        let (auth, boot) = open(dir.path(), Some(&admin));
        assert!(boot.generated_admin_key.is_none());
        let tenant = auth.create_tenant("acme").expect("tenant");
        assert!(matches!(
            auth.create_tenant("acme"),
            Err(AuthError::TenantExists(_))
        ));
        let (record, secret) = auth
            .create_key(&tenant.id, Scopes::default().with(Scope::Invoke))
            .expect("key");
        let header = format!("Bearer {secret}");
        let who = auth
            .authenticate(Some(header.as_bytes()))
            .expect("ok")
            .expect("principal");
        assert_eq!(who.tenant, tenant.id);
        assert!(who.has(Scope::Invoke) && !who.has(Scope::Deploy));
        assert!(matches!(
            auth.authenticate(Some(b"Bearer glia_nope")),
            Err(AuthError::Invalid)
        ));
        assert!(matches!(
            auth.authenticate(Some(b"Basic abc")),
            Err(AuthError::Invalid)
        ));
        assert_eq!(auth.authenticate(None).expect("anonymous"), None);
        drop(auth);
        let (auth, _) = open(dir.path(), Some(&admin));
        assert!(auth.authenticate(Some(header.as_bytes())).is_ok());
        assert_eq!(
            auth.tenant("acme").map(|t| t.id.clone()),
            Some(tenant.id.clone())
        );
        auth.delete_key(&tenant.id, &record.id).expect("revoke");
        assert!(auth.authenticate(Some(header.as_bytes())).is_err());
        let admin_header = format!("Bearer {admin}");
        assert!(auth.authenticate(Some(admin_header.as_bytes())).is_ok());
    }
}

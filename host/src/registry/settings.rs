//! Per-function settings.
//!
//! A function stores only the settings it overrides; everything else follows
//! the platform defaults in `platform.toml`, so changing a default reaches
//! every function that did not choose its own value. Later capabilities add
//! fields here, in one struct, rather than growing parallel option lists.

use serde::{Deserialize, Serialize};

use crate::config::{FunctionDefaults, RuntimeConfig};

/// Upper bound on a function's timeout.
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Upper bound on a function's concurrency.
pub const MAX_CONCURRENCY: u32 = 10_000;

/// The effective settings of a function: defaults with its overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub max_concurrency: u32,
}

impl From<FunctionDefaults> for Settings {
    fn from(d: FunctionDefaults) -> Self {
        Self {
            timeout_ms: d.timeout_ms,
            memory_mb: d.memory_mb,
            max_concurrency: d.max_concurrency,
        }
    }
}

impl Settings {
    /// Checks the values against the platform's hard limits.
    pub fn validate(&self, runtime: &RuntimeConfig) -> Result<(), String> {
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!("timeout_ms must be 1..={MAX_TIMEOUT_MS}"));
        }
        if self.memory_mb == 0 || self.memory_mb > runtime.max_memory_mb {
            return Err(format!(
                "memory_mb must be 1..={} (the platform's memory slot)",
                runtime.max_memory_mb
            ));
        }
        if self.max_concurrency == 0 || self.max_concurrency > MAX_CONCURRENCY {
            return Err(format!("max_concurrency must be 1..={MAX_CONCURRENCY}"));
        }
        Ok(())
    }
}

/// The settings a function chose for itself; `None` follows the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

impl SettingsOverrides {
    /// Applies these overrides on top of `defaults`.
    pub fn resolve(&self, defaults: &Settings) -> Settings {
        Settings {
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            memory_mb: self.memory_mb.unwrap_or(defaults.memory_mb),
            max_concurrency: self.max_concurrency.unwrap_or(defaults.max_concurrency),
        }
    }

    /// Overlays `patch` on `self`: fields set in the patch replace ours, and a
    /// field the patch sets to JSON `null` returns to the default.
    pub fn apply(&mut self, patch: &SettingsPatch) {
        fn set<T: Copy>(slot: &mut Option<T>, patch: Option<Option<T>>) {
            if let Some(value) = patch {
                *slot = value;
            }
        }
        set(&mut self.timeout_ms, patch.timeout_ms);
        set(&mut self.memory_mb, patch.memory_mb);
        set(&mut self.max_concurrency, patch.max_concurrency);
    }
}

/// A change to a function's settings (`PATCH /v1/functions/{name}`, or the
/// query string of an upload). Absent leaves a field alone; `null` resets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default, deserialize_with = "double_option")]
    pub timeout_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub memory_mb: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub max_concurrency: Option<Option<u32>>,
}

impl SettingsPatch {
    /// Reads a patch from an upload's query string (`?timeout_ms=1000&…`).
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut patch = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |_| format!("query parameter `{key}` must be a positive integer");
            match key {
                "timeout_ms" => patch.timeout_ms = Some(Some(value.parse().map_err(bad)?)),
                "memory_mb" => patch.memory_mb = Some(Some(value.parse().map_err(bad)?)),
                "max_concurrency" => {
                    patch.max_concurrency = Some(Some(value.parse().map_err(bad)?))
                }
                other => {
                    return Err(format!(
                        "unknown query parameter `{other}` (known: timeout_ms, memory_mb, max_concurrency)"
                    ));
                }
            }
        }
        Ok(patch)
    }
}

fn double_option<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sets_and_resets() {
        let defaults = Settings::from(FunctionDefaults::default());
        let mut o = SettingsOverrides::default();
        o.apply(&SettingsPatch::from_query("timeout_ms=1000&memory_mb=64").expect("query"));
        assert_eq!(o.resolve(&defaults).timeout_ms, 1000);
        assert_eq!(o.resolve(&defaults).memory_mb, 64);
        let reset: SettingsPatch = serde_json::from_str(r#"{"timeout_ms": null}"#).expect("json");
        o.apply(&reset);
        assert_eq!(o.resolve(&defaults).timeout_ms, defaults.timeout_ms);
        assert_eq!(o.resolve(&defaults).memory_mb, 64);
    }

    #[test]
    fn bad_queries_are_named() {
        let err = SettingsPatch::from_query("timeout_ms=soon").expect_err("not a number");
        assert!(err.contains("timeout_ms"));
        let err = SettingsPatch::from_query("colour=blue").expect_err("unknown");
        assert!(err.contains("colour"));
        assert!(serde_json::from_str::<SettingsPatch>(r#"{"colour": 1}"#).is_err());
    }
}

//! Per-function settings.
//!
//! A function stores only the settings it overrides; everything else follows
//! the platform defaults in `platform.toml` (`[functions]`), so changing a
//! default reaches every function that did not choose its own value. Every
//! setting is declared once, in the table below, with its default and its
//! range; the effective settings, the stored overrides, the patch type and
//! the query-string parser all come from that one list.

use serde::{Deserialize, Serialize};

use crate::capabilities::{EnvVar, HostPattern, check_env, check_hosts};
use crate::config::RuntimeConfig;

macro_rules! settings {
    (numbers {$(
        $(#[doc = $doc:literal])*
        $field:ident : $ty:ty = $default:expr, range $min:literal ..= $max:expr;
    )*}
    lists {$(
        $(#[doc = $ldoc:literal])*
        $lfield:ident : Vec<$lty:ty>, check $lcheck:path;
    )*}) => {
        /// The effective settings of a function: defaults with its overrides
        /// applied. Also the `[functions]` section of `platform.toml`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $field: $ty, )*
            $( $(#[doc = $ldoc])* pub $lfield: Vec<$lty>, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self { $( $field: $default, )* $( $lfield: Vec::new(), )* }
            }
        }

        /// The settings a function chose for itself; `None` follows the
        /// platform default.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct SettingsOverrides {
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $lfield: Option<Vec<$lty>>,
            )*
        }

        /// A change to a function's settings (`PATCH /v1/functions/{name}`,
        /// or the query string of an upload). An absent key leaves a setting
        /// alone; `null` returns it to the default.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct SettingsPatch {
            $(
                #[serde(default, deserialize_with = "double_option")]
                pub $field: Option<Option<$ty>>,
            )*
            $(
                #[serde(default, deserialize_with = "double_option")]
                pub $lfield: Option<Option<Vec<$lty>>>,
            )*
        }

        /// Names of every setting, as used in JSON and query strings.
        pub const SETTING_NAMES: &[&str] = &[$(stringify!($field),)* $(stringify!($lfield),)*];

        impl Settings {
            /// Checks each value against its range (and `memory_mb` against
            /// the platform's memory slot).
            pub fn validate(&self, runtime: &RuntimeConfig) -> Result<(), String> {
                $(
                    let max: $ty = $max;
                    if !($min..=max).contains(&self.$field) {
                        return Err(format!(
                            "{} must be {}..={}",
                            stringify!($field), $min, max
                        ));
                    }
                )*
                $(
                    if self.$lfield.len() > MAX_LIST_ITEMS {
                        return Err(format!(
                            "{} takes at most {MAX_LIST_ITEMS} entries", stringify!($lfield)
                        ));
                    }
                    $lcheck(&self.$lfield)
                        .map_err(|e| format!("{}: {e}", stringify!($lfield)))?;
                )*
                if self.memory_mb > runtime.max_memory_mb {
                    return Err(format!(
                        "memory_mb must be at most {} (the platform's memory slot, runtime.max_memory_mb)",
                        runtime.max_memory_mb
                    ));
                }
                Ok(())
            }
        }

        impl SettingsOverrides {
            /// Applies these overrides on top of `defaults`.
            pub fn resolve(&self, defaults: &Settings) -> Settings {
                Settings {
                    $( $field: self.$field.unwrap_or(defaults.$field), )*
                    $( $lfield: self.$lfield.clone().unwrap_or_else(|| defaults.$lfield.clone()), )*
                }
            }

            /// Overlays `patch`: keys it sets replace ours, `null` resets.
            pub fn apply(&mut self, patch: &SettingsPatch) {
                $(
                    if let Some(value) = patch.$field {
                        self.$field = value;
                    }
                )*
                $(
                    if let Some(value) = &patch.$lfield {
                        self.$lfield = value.clone();
                    }
                )*
            }
        }

        impl SettingsPatch {
            /// Reads a patch from an upload's query string
            /// (`?timeout_ms=1000&memory_mb=64`), percent-encoded or not
            /// (`models=a%2Cb` is `models=a,b`).
            pub fn from_query(query: &str) -> Result<Self, String> {
                let mut patch = Self::default();
                for (key, value) in crate::query::pairs(query) {
                    let (key, value) = (&*key, &*value);
                    match key {
                        $(
                            stringify!($field) => {
                                let parsed = value.parse::<$ty>().map_err(|_| {
                                    format!(
                                        "query parameter `{key}` must be {}",
                                        if stringify!($ty) == "bool" {
                                            "true or false"
                                        } else {
                                            "a non-negative integer"
                                        }
                                    )
                                })?;
                                patch.$field = Some(Some(parsed));
                            }
                        )*
                        $(
                            stringify!($lfield) => {
                                let items = value
                                    .split(',')
                                    .filter(|v| !v.is_empty())
                                    .map(|v| v.parse::<$lty>().map_err(|e| format!("{key}: {e}")))
                                    .collect::<Result<_, _>>()?;
                                patch.$lfield = Some(Some(items));
                            }
                        )*
                        other => {
                            return Err(format!(
                                "unknown query parameter `{other}` (known: {})",
                                SETTING_NAMES.join(", ")
                            ));
                        }
                    }
                }
                Ok(patch)
            }
        }
    };
}

/// Default per-invocation wall-clock limit.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default linear-memory limit per invocation.
pub const DEFAULT_MEMORY_MB: u64 = 128;
/// Default number of concurrent invocations of one function.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 64;
/// Default time a call may wait in the admission queue.
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 5_000;
/// Default time without calls after which a function returns to zero.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Longest accepted timeout, queue wait or idle timeout (one hour).
const MAX_DURATION_MS: u64 = 60 * 60 * 1000;

settings! {
    numbers {
    /// Wall-clock limit of one invocation, response body included.
    timeout_ms: u64 = DEFAULT_TIMEOUT_MS, range 1..=MAX_DURATION_MS;
    /// Linear-memory limit of one invocation, in MiB.
    memory_mb: u64 = DEFAULT_MEMORY_MB, range 1..=4096;
    /// Invocations of this function that may run at once.
    max_concurrency: u32 = DEFAULT_MAX_CONCURRENCY, range 1..=10_000;
    /// How long a call may wait for a free slot before it is refused.
    queue_timeout_ms: u64 = DEFAULT_QUEUE_TIMEOUT_MS, range 0..=MAX_DURATION_MS;
    /// Time without calls after which the function returns to zero.
    idle_timeout_ms: u64 = DEFAULT_IDLE_TIMEOUT_MS, range 1..=MAX_DURATION_MS;
    /// 1 keeps the latest version warm (loaded) even when idle; 0 lets it go
    /// to zero. One warm `InstancePre` serves any number of instances, so
    /// there is nothing to gain from more.
    min_warm: u32 = 0, range 0..=1;
    /// `true` lets anyone call the function without a key, at
    /// `/t/{tenant}/fn/{name}/` (and, for the default tenant, `/fn/{name}/`);
    /// its owner pays for the calls.
    public: bool = false, range false..=true;
    }
    lists {
        /// Models this function may load with `wasi:nn` `load-by-name`;
        /// none by default (capabilities are denied unless granted). In a
        /// query string: `models=a,b`.
        models: Vec<String>, check check_names;
        /// Environment variables the function sees, as `NAME=VALUE`; none by
        /// default. In a query string: `env=A=1,B=2` (values with commas
        /// only through `PATCH`).
        env: Vec<EnvVar>, check check_env;
        /// Hosts outgoing HTTP requests may go to (`host`, `host:port`,
        /// `*.domain[:port]`); none by default, so no outbound HTTP.
        allowed_hosts: Vec<HostPattern>, check check_hosts;
    }
}

/// Checks that every entry of a list of models is a valid name.
fn check_names(names: &[String]) -> Result<(), String> {
    match names.iter().find(|n| super::check_name(n).is_err()) {
        Some(bad) => Err(format!(
            "`{}` is not a valid name",
            bad.chars().take(80).collect::<String>()
        )),
        None => Ok(()),
    }
}

/// Most names a list setting holds.
const MAX_LIST_ITEMS: usize = 64;

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
        let defaults = Settings::default();
        let mut o = SettingsOverrides::default();
        o.apply(
            &SettingsPatch::from_query("timeout_ms=1000&memory_mb=64&min_warm=1").expect("query"),
        );
        let s = o.resolve(&defaults);
        assert_eq!((s.timeout_ms, s.memory_mb, s.min_warm), (1000, 64, 1));
        assert!(s.models.is_empty(), "no models unless granted");
        o.apply(&SettingsPatch::from_query("models=digits,text").expect("list"));
        assert_eq!(o.resolve(&defaults).models, ["digits", "text"]);
        // As `glia deploy --models a,b` (reqwest) encodes it.
        o.apply(&SettingsPatch::from_query("models=digits%2Cintent-head").expect("encoded"));
        assert_eq!(o.resolve(&defaults).models, ["digits", "intent-head"]);
        let patch = SettingsPatch::from_query("timeout_%6Ds=5&memory_mb=%zz").expect_err("bad");
        assert!(patch.contains("memory_mb"), "{patch}");
        let bad = Settings {
            models: vec!["Bad_Name".into()],
            ..Settings::default()
        };
        assert!(bad.validate(&RuntimeConfig::default()).is_err());
        let reset: SettingsPatch = serde_json::from_str(r#"{"timeout_ms": null}"#).expect("json");
        o.apply(&reset);
        assert_eq!(o.resolve(&defaults).timeout_ms, defaults.timeout_ms);
        assert_eq!(o.resolve(&defaults).memory_mb, 64);
    }

    #[test]
    fn grants_parse_once_and_round_trip() {
        let defaults = Settings::default();
        assert!(defaults.env.is_empty() && defaults.allowed_hosts.is_empty());
        let patch = SettingsPatch::from_query(
            "env=A=1,B=x%3Dy&allowed_hosts=api.example.com%2C*.cdn.example:8443",
        )
        .expect("query");
        let mut o = SettingsOverrides::default();
        o.apply(&patch);
        let s = o.resolve(&defaults);
        s.validate(&RuntimeConfig::default()).expect("valid");
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["env"], serde_json::json!(["A=1", "B=x=y"]));
        assert_eq!(
            json["allowed_hosts"],
            serde_json::json!(["api.example.com", "*.cdn.example:8443"])
        );
        let back: Settings = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, s);

        let err = SettingsPatch::from_query("env=9=x").expect_err("bad name");
        assert!(err.starts_with("env: "), "{err}");
        let err = SettingsPatch::from_query("allowed_hosts=a.example,https://b").expect_err("url");
        assert!(err.starts_with("allowed_hosts: "), "{err}");
        assert!(
            serde_json::from_str::<SettingsPatch>(r#"{"allowed_hosts": ["*"]}"#).is_err(),
            "checked when read from JSON too"
        );
        let dup = SettingsPatch::from_query("env=A=1,A=2").expect("each entry is fine");
        let mut o = SettingsOverrides::default();
        o.apply(&dup);
        let err = o
            .resolve(&defaults)
            .validate(&RuntimeConfig::default())
            .expect_err("set twice");
        assert!(err.starts_with("env: "), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = SettingsPatch::from_query("timeout_ms=soon").expect_err("not a number");
        assert!(err.contains("timeout_ms"));
        let err = SettingsPatch::from_query("colour=blue").expect_err("unknown");
        assert!(err.contains("colour") && err.contains("idle_timeout_ms"));
        assert!(serde_json::from_str::<SettingsPatch>(r#"{"colour": 1}"#).is_err());
        let runtime = RuntimeConfig::default();
        let s = Settings {
            min_warm: 2,
            ..Settings::default()
        };
        assert!(
            s.validate(&runtime)
                .expect_err("range")
                .contains("min_warm")
        );
        let s = Settings {
            memory_mb: runtime.max_memory_mb + 1,
            ..Settings::default()
        };
        assert!(
            s.validate(&runtime)
                .expect_err("slot")
                .contains("memory_mb")
        );
    }
}

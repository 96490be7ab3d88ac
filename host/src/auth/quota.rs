//! Per-tenant quotas: what one tenant may hold and how fast it may call.
//!
//! Tenants share one process, so every shared resource has a per-tenant
//! bound: request rate (a token bucket), concurrent invocations (enforced
//! by the scheduler, which also queues tenants fairly), deployed functions
//! and models, stored bytes, and spend in the current calendar month (UTC).
//! Each bound has a platform default (`[quotas]` in `platform.toml`, where
//! `0` means unlimited) that a tenant may override, the same
//! defaults-plus-overrides scheme as function settings (ADR 0004).
//!
//! The checks on the call path are a mutex-guarded bucket refill and an
//! atomic read; nothing here touches the database per call.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Default sustained requests per second per tenant (0: unlimited).
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 0;
/// Default burst above the sustained rate.
pub const DEFAULT_BURST: u32 = 0;
/// Default concurrent invocations (running or queued) per tenant: a
/// tenant's flood turns into its own 429s, and leaves the platform's
/// `max_in_flight` to the others.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 100;
/// Default deployed functions per tenant.
pub const DEFAULT_MAX_FUNCTIONS: u32 = 1000;
/// Default models per tenant.
pub const DEFAULT_MAX_MODELS: u32 = 100;
/// Default stored bytes (all versions of sources and models) per tenant.
pub const DEFAULT_MAX_STORED_MB: u64 = 20_480;
/// Default uploads (function versions and models) per minute per tenant:
/// each upload is validated and may be compiled, which costs CPU-seconds.
pub const DEFAULT_UPLOADS_PER_MINUTE: u32 = 60;
/// Default monthly spend cap, in micro-units of the plan's currency (0: none).
pub const DEFAULT_MONTHLY_SPEND_CAP: u64 = 0;

macro_rules! quotas {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr; )*) => {
        /// A tenant's effective quotas; also `[quotas]` in `platform.toml`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Quotas {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for Quotas {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        /// The quotas a tenant has of its own; `None` follows the platform.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct QuotaOverrides {
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        /// A change to a tenant's quotas: an absent key leaves it alone,
        /// `null` returns it to the platform default.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct QuotaPatch {
            $(
                #[serde(default, deserialize_with = "double_option")]
                pub $field: Option<Option<$ty>>,
            )*
        }

        impl QuotaOverrides {
            pub fn resolve(&self, defaults: &Quotas) -> Quotas {
                Quotas { $( $field: self.$field.unwrap_or(defaults.$field), )* }
            }

            pub fn apply(&mut self, patch: &QuotaPatch) {
                $( if let Some(value) = patch.$field { self.$field = value; } )*
            }
        }

        /// Names of every quota.
        pub const QUOTA_NAMES: &[&str] = &[$(stringify!($field),)*];
    };
}

quotas! {
    /// Sustained invocations per second (token bucket); 0 is unlimited.
    requests_per_second: u32 = DEFAULT_REQUESTS_PER_SECOND;
    /// Invocations above the sustained rate allowed in a burst.
    burst: u32 = DEFAULT_BURST;
    /// Invocations running or queued at once; 0 leaves only the platform's
    /// limit.
    max_concurrency: u32 = DEFAULT_MAX_CONCURRENCY;
    /// Functions the tenant may have deployed; 0 is unlimited.
    max_functions: u32 = DEFAULT_MAX_FUNCTIONS;
    /// Models the tenant may have uploaded; 0 is unlimited.
    max_models: u32 = DEFAULT_MAX_MODELS;
    /// Stored MiB, every version of every source and model counted; 0 is
    /// unlimited.
    max_stored_mb: u64 = DEFAULT_MAX_STORED_MB;
    /// Uploads (function versions and models) per minute, with a burst of
    /// as many; 0 is unlimited.
    uploads_per_minute: u32 = DEFAULT_UPLOADS_PER_MINUTE;
    /// Spend in the current UTC month at which calls are refused, in
    /// micro-units of the price plan's currency; 0 is no cap.
    monthly_spend_cap: u64 = DEFAULT_MONTHLY_SPEND_CAP;
}

fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Why a call was refused by its tenant's quotas.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRefusal {
    #[error("the tenant is over its rate of {rate} requests per second")]
    Rate { rate: u32, retry_after_secs: u64 },
    #[error("the tenant is over its rate of {per_minute} uploads per minute")]
    UploadRate {
        per_minute: u32,
        retry_after_secs: u64,
    },
    #[error(
        "the tenant has spent {spent} of its monthly cap of {cap} (micro-units); calls resume next month or when the cap is raised"
    )]
    SpendCap { spent: u64, cap: u64 },
    #[error(
        "the call could cost up to {worst} micro-units (its timeout_ms at its memory_mb, computing and inferring all along), and the tenant's monthly cap of {cap} has {left} left once its {spent} spent and the calls in flight are counted; lower the function's timeout_ms or memory_mb, or raise the cap"
    )]
    SpendCapReserve {
        spent: u64,
        cap: u64,
        left: u64,
        worst: u64,
    },
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A bucket that fills up on first use.
    fn new() -> Self {
        Self {
            tokens: f64::NAN,
            refilled: Instant::now(),
        }
    }

    /// Takes a token from a bucket refilled at `rate` a second up to
    /// `capacity`, or says in how many seconds one will be there.
    fn take(&mut self, rate: f64, capacity: f64) -> Result<(), u64> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = if self.tokens.is_nan() {
            capacity
        } else {
            (self.tokens + elapsed * rate).min(capacity)
        };
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

/// A tenant's live counters.
#[derive(Debug)]
pub struct TenantMeter {
    bucket: Mutex<Bucket>,
    /// Uploads, refilled at `uploads_per_minute`.
    uploads: Mutex<Bucket>,
    /// Spend this month, in micro-units; valid when `month` is the current
    /// month's start.
    spent: AtomicU64,
    /// Start (Unix ms) of the month `spent` counts; 0 until loaded.
    month: AtomicI64,
    /// The worst-case cost of the calls in flight, reserved against the
    /// spend cap until each is priced.
    reserved: AtomicU64,
    /// The remainder below one micro-unit of the tenant's priced calls, in
    /// nano-units, carried to its next call. Kept in memory: a restart
    /// forgives at most one micro-unit.
    carry: AtomicU64,
}

/// A call's worst-case cost, held against its tenant's spend cap until the
/// call is priced (when this is dropped).
#[derive(Debug)]
pub struct SpendReservation {
    meter: Arc<TenantMeter>,
    micros: u64,
}

impl Drop for SpendReservation {
    fn drop(&mut self) {
        self.meter.reserved.fetch_sub(self.micros, Ordering::AcqRel);
    }
}

impl Default for TenantMeter {
    fn default() -> Self {
        Self {
            bucket: Mutex::new(Bucket::new()),
            uploads: Mutex::new(Bucket::new()),
            spent: AtomicU64::new(0),
            month: AtomicI64::new(0),
            reserved: AtomicU64::new(0),
            carry: AtomicU64::new(0),
        }
    }
}

impl TenantMeter {
    /// Takes one token, or says how long until one is available.
    pub fn take(&self, quotas: &Quotas) -> Result<(), QuotaRefusal> {
        if quotas.requests_per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(quotas.requests_per_second);
        let capacity = rate + f64::from(quotas.burst);
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        bucket
            .take(rate, capacity)
            .map_err(|retry_after_secs| QuotaRefusal::Rate {
                rate: quotas.requests_per_second,
                retry_after_secs,
            })
    }

    /// Takes an upload's token, or says how long until one is available.
    pub fn take_upload(&self, quotas: &Quotas) -> Result<(), QuotaRefusal> {
        if quotas.uploads_per_minute == 0 {
            return Ok(());
        }
        let per_minute = f64::from(quotas.uploads_per_minute);
        let mut bucket = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        bucket
            .take(per_minute / 60.0, per_minute)
            .map_err(|retry_after_secs| QuotaRefusal::UploadRate {
                per_minute: quotas.uploads_per_minute,
                retry_after_secs,
            })
    }

    /// This month's spend, if it has been loaded for `month`.
    pub fn spent(&self, month: i64) -> Option<u64> {
        (self.month.load(Ordering::Acquire) == month).then(|| self.spent.load(Ordering::Relaxed))
    }

    /// Sets this month's spend (from the ledger).
    pub fn load_spent(&self, month: i64, spent: u64) {
        self.spent.store(spent, Ordering::Relaxed);
        self.month.store(month, Ordering::Release);
    }

    /// Reserves a call's worst-case cost (`worst` micro-units) against
    /// `cap`, given this month's `spent`: refused when the spend, what the
    /// calls in flight reserved and `worst` would pass the cap together.
    /// Every call that runs is covered, so the spend cannot pass the cap
    /// by more than a call costs beyond its worst case.
    pub fn reserve(
        self: &Arc<Self>,
        spent: u64,
        cap: u64,
        worst: u64,
    ) -> Result<SpendReservation, QuotaRefusal> {
        if spent >= cap {
            return Err(QuotaRefusal::SpendCap { spent, cap });
        }
        let taken = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                let total = spent.saturating_add(reserved).saturating_add(worst);
                (total <= cap).then(|| reserved.saturating_add(worst))
            });
        match taken {
            Ok(_) => Ok(SpendReservation {
                meter: self.clone(),
                micros: worst,
            }),
            Err(reserved) => Err(QuotaRefusal::SpendCapReserve {
                spent,
                cap,
                left: cap.saturating_sub(spent.saturating_add(reserved)),
                worst,
            }),
        }
    }

    /// Micro-units reserved by the calls in flight.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Settles a priced call's `nanos`: adds them to the remainder carried
    /// from the tenant's earlier calls and keeps what is left below one
    /// micro-unit. Returns the remainder the call was settled with.
    pub fn carry(&self, nanos: u64) -> u64 {
        if nanos == 0 {
            return 0;
        }
        self.carry
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |carried| {
                Some(carried.saturating_add(nanos) % 1000)
            })
            .unwrap_or_else(|carried| carried)
    }

    /// Adds a call's cost, if it falls in the month being counted.
    pub fn add_spent(&self, month: i64, micros: u64) {
        if self.month.load(Ordering::Acquire) == month {
            self.spent.fetch_add(micros, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_rate_plus_burst_then_refuses() {
        let meter = TenantMeter::default();
        let quotas = Quotas {
            requests_per_second: 2,
            burst: 1,
            ..Quotas::default()
        };
        for _ in 0..3 {
            meter.take(&quotas).expect("within the bucket");
        }
        match meter.take(&quotas) {
            Err(QuotaRefusal::Rate {
                rate: 2,
                retry_after_secs: 1,
            }) => {}
            other => panic!("expected a rate refusal, got {other:?}"),
        }
        assert!(meter.take(&Quotas::default()).is_ok(), "0 is unlimited");
    }

    #[test]
    fn uploads_are_limited_per_minute() {
        let meter = TenantMeter::default();
        let quotas = Quotas {
            uploads_per_minute: 3,
            ..Quotas::default()
        };
        for _ in 0..3 {
            meter.take_upload(&quotas).expect("within the minute");
        }
        match meter.take_upload(&quotas) {
            Err(QuotaRefusal::UploadRate {
                per_minute: 3,
                retry_after_secs,
            }) => assert!((19..=20).contains(&retry_after_secs), "{retry_after_secs}"),
            other => panic!("expected an upload refusal, got {other:?}"),
        }
        // Calls have a bucket of their own.
        assert!(meter.take(&quotas).is_ok());
    }

    #[test]
    fn overrides_resolve_over_defaults() {
        let mut o = QuotaOverrides::default();
        let patch: QuotaPatch =
            serde_json::from_str(r#"{"max_functions": 3, "burst": null}"#).expect("patch");
        o.apply(&patch);
        let q = o.resolve(&Quotas::default());
        assert_eq!(q.max_functions, 3);
        assert_eq!(q.burst, DEFAULT_BURST);
        assert!(serde_json::from_str::<QuotaPatch>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn spend_counts_only_the_loaded_month() {
        let meter = TenantMeter::default();
        assert_eq!(meter.spent(100), None);
        meter.load_spent(100, 5);
        meter.add_spent(100, 7);
        meter.add_spent(99, 1000);
        assert_eq!(meter.spent(100), Some(12));
        assert_eq!(meter.spent(200), None);
    }
}

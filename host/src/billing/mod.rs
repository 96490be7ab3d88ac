//! Billing: every invocation is metered, priced under the configured plan
//! and written to the ledger, one row per invocation.
//!
//! What is measured ([`Usage`]): wall time from the request's arrival; time
//! waiting for admission; the instance's run time (instantiation to the end
//! of the handler, the billed duration); the time spent executing guest code
//! (polls of the guest, less inference run in place); configured and peak
//! linear memory; inference time per device and model loads the call caused;
//! cold-start time; request and response body bytes.
//!
//! How it is priced ([`price`]): money is integers. Prices are micro-units of
//! the currency; each component is computed exactly in nano-units
//! (thousandths of a micro-unit) from whole milliseconds, and a record's
//! total is rounded to micro-units once. Memory is billed on the function's
//! configured `memory_mb`, not its peak: that is what the platform reserves
//! for the call, it is known before the call runs (so a price can be
//! predicted), and it is what Lambda bills; the peak is recorded beside it.
//! Rejected calls are recorded at zero cost.

pub mod ledger;
pub mod usage;
mod writer;

use serde::{Deserialize, Serialize};

pub use ledger::{Ledger, LedgerError, SqliteLedger};
pub use usage::{UsageGroup, UsageQuery, UsageRow};
pub use writer::LedgerWriter;

use crate::config::PricePlan;
use crate::nn::NnUsageReport;

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The guest answered (whatever its status).
    Ok,
    /// The guest trapped (including hitting its memory limit).
    Trap,
    /// The call ran past its timeout.
    Timeout,
    /// Admission refused it (429/503); nothing ran.
    Rejected,
    /// The guest finished without answering, or the platform failed.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => Outcome::Ok,
            "trap" => Outcome::Trap,
            "timeout" => Outcome::Timeout,
            "rejected" => Outcome::Rejected,
            "error" => Outcome::Error,
            _ => return None,
        })
    }
}

/// What one invocation used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// From the request's arrival to the record.
    pub wall_us: u64,
    /// Waiting for admission.
    pub queue_us: u64,
    /// Loading the function first (0 when it was warm).
    pub cold_start_us: u64,
    /// The instance's life: instantiation to the end of the handler.
    pub run_us: u64,
    /// Executing guest code (polls of the guest, less inference run in
    /// place).
    pub guest_us: u64,
    /// The function's memory limit.
    pub memory_mb: u64,
    /// The largest linear memory the guest reached.
    pub peak_memory_bytes: u64,
    /// `wasi:nn` inference on the CPU, and on GPUs.
    pub cpu_inference_us: u64,
    pub gpu_inference_us: u64,
    /// Model loads this call caused, and their time.
    pub model_loads: u32,
    pub model_load_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A record's cost, by component, in nano-units (thousandths of a
/// micro-unit), and its total in micro-units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    pub request_nanos: u64,
    pub memory_nanos: u64,
    pub cpu_inference_nanos: u64,
    pub gpu_nanos: u64,
    pub cold_start_nanos: u64,
    pub model_load_nanos: u64,
    /// The sum, rounded half up to micro-units.
    pub total_micros: u64,
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub id: String,
    pub tenant: String,
    pub function: String,
    pub version: u32,
    /// Wall-clock time the request arrived, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// The HTTP status the caller got.
    pub status: u16,
    pub outcome: Outcome,
    pub usage: Usage,
    /// Whole milliseconds billed (the run time rounded up; 0 when rejected).
    pub billed_ms: u64,
    /// The memory-time billed: `memory_mb` × `billed_ms`.
    pub memory_mb_ms: u64,
    pub plan_version: u32,
    pub currency: String,
    pub cost: Cost,
    /// What `wasi:nn` did, per model and device.
    #[serde(default)]
    pub nn: NnUsageReport,
}

/// Whole milliseconds, rounded up.
fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

/// Prices `usage` under `plan`: the billed milliseconds and the cost.
/// Calls that ran nothing cost nothing: rejected ones, and failures before
/// the guest started (a platform fault is not the caller's).
pub fn price(plan: &PricePlan, outcome: Outcome, usage: &Usage) -> (u64, Cost) {
    if outcome == Outcome::Rejected || (outcome == Outcome::Error && usage.run_us == 0) {
        return (0, Cost::default());
    }
    let billed_ms = ceil_ms(usage.run_us).max(1);
    // u128 throughout: no overflow, exact integer arithmetic.
    let n = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
    let cost_per = |price: u64, count: u64| n(u128::from(price) * u128::from(count) * 1000);
    let mut cost = Cost {
        request_nanos: cost_per(plan.per_request, 1),
        // per_gb_second µ/GB-s × (memory_mb / 1024) GB × (billed_ms / 1000) s
        // × 1000 nanos/µ.
        memory_nanos: n(u128::from(plan.per_gb_second)
            * u128::from(usage.memory_mb)
            * u128::from(billed_ms)
            / 1024),
        // per second × (ms / 1000) × 1000 nanos/µ.
        cpu_inference_nanos: n(
            u128::from(plan.per_cpu_inference_second) * u128::from(ceil_ms(usage.cpu_inference_us))
        ),
        gpu_nanos: n(u128::from(plan.per_gpu_second) * u128::from(ceil_ms(usage.gpu_inference_us))),
        cold_start_nanos: if usage.cold_start_us > 0 {
            cost_per(plan.per_cold_start, 1)
        } else {
            0
        },
        model_load_nanos: cost_per(plan.per_model_load, u64::from(usage.model_loads)),
        total_micros: 0,
    };
    let total_nanos = [
        cost.request_nanos,
        cost.memory_nanos,
        cost.cpu_inference_nanos,
        cost.gpu_nanos,
        cost.cold_start_nanos,
        cost.model_load_nanos,
    ]
    .iter()
    .fold(0u64, |acc, v| acc.saturating_add(*v));
    cost.total_micros = total_nanos.saturating_add(500) / 1000;
    (billed_ms, cost)
}

impl InvocationRecord {
    /// `glia-usage`: a compact, human-readable breakdown for the response.
    pub fn usage_header(&self) -> String {
        use std::fmt::Write as _;
        let u = &self.usage;
        // One string, written in place: this runs on every metered call.
        let mut out = String::with_capacity(128);
        let ms = |out: &mut String, name: &str, us: u64| {
            let _ = write!(out, "{name}={}.{:03}ms; ", us / 1000, us % 1000);
        };
        ms(&mut out, "run", u.run_us);
        ms(&mut out, "guest", u.guest_us);
        let _ = write!(
            out,
            "mem={}MB; peak={}KiB; ",
            u.memory_mb,
            u.peak_memory_bytes / 1024
        );
        if u.cpu_inference_us > 0 {
            ms(&mut out, "cpu-inference", u.cpu_inference_us);
        }
        if u.gpu_inference_us > 0 {
            ms(&mut out, "gpu", u.gpu_inference_us);
        }
        if u.model_loads > 0 {
            ms(&mut out, "model-load", u.model_load_us);
        }
        if u.cold_start_us > 0 {
            ms(&mut out, "cold-start", u.cold_start_us);
        }
        let _ = write!(out, "in={}B; out={}B", u.bytes_in, u.bytes_out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> PricePlan {
        PricePlan {
            version: 7,
            per_request: 2,
            per_gb_second: 1024,
            per_cpu_inference_second: 3000,
            per_gpu_second: 50_000,
            per_cold_start: 5,
            per_model_load: 11,
        }
    }

    #[test]
    fn known_usage_costs_exactly_what_the_plan_says() {
        let usage = Usage {
            run_us: 2_500, // billed as 3 ms
            memory_mb: 128,
            cpu_inference_us: 1_001, // 2 ms
            gpu_inference_us: 0,
            cold_start_us: 400,
            model_loads: 1,
            ..Usage::default()
        };
        let (billed, cost) = price(&plan(), Outcome::Ok, &usage);
        assert_eq!(billed, 3);
        assert_eq!(cost.request_nanos, 2_000);
        // 1024 µ/GB-s × 0.125 GB × 0.003 s = 0.384 µ = 384 nanos.
        assert_eq!(cost.memory_nanos, 384);
        // 3000 µ/s × 0.002 s = 6 µ.
        assert_eq!(cost.cpu_inference_nanos, 6_000);
        assert_eq!(cost.gpu_nanos, 0);
        assert_eq!(cost.cold_start_nanos, 5_000);
        assert_eq!(cost.model_load_nanos, 11_000);
        // 24.384 µ → 24.
        assert_eq!(cost.total_micros, 24);
    }

    #[test]
    fn durations_round_up_to_whole_milliseconds() {
        let p = PricePlan {
            per_request: 0,
            per_gb_second: 1024 * 1000,
            ..plan()
        };
        let usage = |run_us| Usage {
            run_us,
            memory_mb: 1024,
            ..Usage::default()
        };
        // 1 GB for 1 ms at 1,024,000 µ/GB-s is 1,024 µ (1,024,000 nanos).
        for (run_us, billed) in [(0, 1), (1, 1), (1000, 1), (1001, 2), (20_000, 20)] {
            let (b, cost) = price(&p, Outcome::Trap, &usage(run_us));
            assert_eq!(b, billed, "{run_us} µs");
            assert_eq!(cost.memory_nanos, billed * 1_024_000);
        }
    }

    #[test]
    fn rejected_calls_cost_nothing() {
        let usage = Usage {
            run_us: 5_000,
            memory_mb: 128,
            ..Usage::default()
        };
        let (billed, cost) = price(&plan(), Outcome::Rejected, &usage);
        assert_eq!((billed, cost), (0, Cost::default()));
        // A platform failure before the guest ran is not billed either...
        let never_ran = Usage {
            memory_mb: 128,
            ..Usage::default()
        };
        assert_eq!(
            price(&plan(), Outcome::Error, &never_ran),
            (0, Cost::default())
        );
        // ...but a guest that ran and then failed is.
        assert_eq!(price(&plan(), Outcome::Error, &usage).0, 5);
    }

    #[test]
    fn totals_round_half_up_once() {
        let p = PricePlan {
            per_request: 0,
            per_gb_second: 1,
            per_cpu_inference_second: 0,
            per_gpu_second: 0,
            per_cold_start: 0,
            per_model_load: 0,
            version: 1,
        };
        // 1 µ/GB-s × 0.5 GB × 1 s = 0.5 µ (500 nanos), rounded up to 1.
        let usage = |run_us| Usage {
            run_us,
            memory_mb: 512,
            ..Usage::default()
        };
        let (_, cost) = price(&p, Outcome::Ok, &usage(1_000_000));
        assert_eq!(cost.memory_nanos, 500);
        assert_eq!(cost.total_micros, 1, "0.5 rounds up");
        // 999 ms: 499.5 nanos, floored to 499, rounded to 0.
        let (_, cost) = price(&p, Outcome::Ok, &usage(999_000));
        assert_eq!(cost.memory_nanos, 499);
        assert_eq!(cost.total_micros, 0);
    }

    #[test]
    fn outcomes_round_trip() {
        for o in [
            Outcome::Ok,
            Outcome::Trap,
            Outcome::Timeout,
            Outcome::Rejected,
            Outcome::Error,
        ] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}

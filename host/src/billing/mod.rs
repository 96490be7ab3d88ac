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
//! (thousandths of a micro-unit), from whole milliseconds (guest CPU time
//! from microseconds). A record's total is whole micro-units: the tenant's
//! remainder below one micro-unit carries to its next call
//! ([`Cost::settle`]), so a million calls costing 0.4 µ each bill 400,000
//! µ, not 0 — no call is rounded away. Memory is billed on the function's
//! configured `memory_mb`, not its peak: that is what the platform reserves
//! for the call, it is known before the call runs (so a price can be
//! predicted), and it is what Lambda bills; the peak is recorded beside it.
//! Rejected calls cost nothing.
//!
//! Uploads are billed too, to the uploading tenant: a row of kind
//! [`RecordKind::Compile`] with the CPU time validating and compiling a
//! component took, or [`RecordKind::ModelUpload`] with the CPU time
//! loading a model to validate it took ([`price_compile`]).

mod codec;
pub mod ledger;
pub mod usage;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use ledger::{Ledger, LedgerError, SqliteLedger};
pub use usage::{UsageGroup, UsageQuery, UsageRow};
pub use writer::LedgerWriter;

use crate::config::PricePlan;
use crate::nn::NnUsageReport;

/// An invocation's id: a UUIDv7 (so ids sort by the time calls arrived),
/// written as 32 lowercase hex digits. It is a plain value: metering a call
/// copies it into the call's headers, logs and ledger row without
/// allocating.
///
/// Its upper half is the arrival time in milliseconds, the version and a
/// 12-bit counter (RFC 9562, "fixed bit-length dedicated counter"): the
/// upper halves of the ids one process makes strictly increase, so the
/// ledger keys its rows by that half alone, as an integer. Its lower half
/// is random.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvocationId(uuid::Uuid);

/// The upper half of the newest id made (or a ledger's newest id, when
/// that is later).
static NEWEST_HIGH: AtomicU64 = AtomicU64::new(0);

/// The upper half that follows `last`, at `now` (an upper half with a zero
/// counter): the next millisecond's first, or `last`'s counter plus one (a
/// full counter moves on to the next millisecond).
fn next_high(last: u64, now: u64) -> u64 {
    if now > last {
        now
    } else if last & 0xfff == 0xfff {
        ((last >> 16) + 1) << 16 | 0x7000
    } else {
        last + 1
    }
}

impl InvocationId {
    /// A new id, stamped with the current time; its upper half is later
    /// than that of every id made before in this process.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // 48 bits of milliseconds, then the version (7) and the counter.
        let now = (ms & 0xffff_ffff_ffff) << 16 | 0x7000;
        let last = NEWEST_HIGH
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(next_high(last, now))
            })
            .unwrap_or_else(|last| last);
        // A version 4 UUID's lower half is random but for its variant bits,
        // which are those of version 7.
        let (_, low) = uuid::Uuid::new_v4().as_u64_pair();
        Self(uuid::Uuid::from_u64_pair(next_high(last, now), low))
    }

    /// Makes every id made from now on later than `high` (a ledger's newest
    /// upper half): a restart whose clock went back does not reuse one.
    pub fn make_later_than(high: u64) {
        NEWEST_HIGH.fetch_max(high, Ordering::Relaxed);
    }

    /// The id from its two halves.
    pub fn from_halves(high: u64, low: u64) -> Self {
        Self(uuid::Uuid::from_u64_pair(high, low))
    }

    /// The upper half (time, version, counter) and the lower (random).
    pub fn halves(&self) -> (u64, u64) {
        self.0.as_u64_pair()
    }

    /// Parses the 32-hex-digit form (or a hyphenated UUID).
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s).ok().map(Self)
    }

    /// Writes the id into `buf` and returns it as text.
    pub fn encode<'b>(&self, buf: &'b mut [u8; 32]) -> &'b str {
        self.0.simple().encode_lower(buf)
    }
}

impl std::fmt::Display for InvocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.encode(&mut [0; 32]))
    }
}

impl std::fmt::Debug for InvocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Serialize for InvocationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.encode(&mut [0; 32]))
    }
}

impl<'de> Deserialize<'de> for InvocationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).ok_or_else(|| serde::de::Error::custom("not an invocation id"))
    }
}

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
    /// Every outcome, in a fixed order: a ledger record stores its outcome
    /// as its index here, so outcomes are only ever added at the end.
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Trap,
        Outcome::Timeout,
        Outcome::Rejected,
        Outcome::Error,
    ];

    /// Its place in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::Trap => 1,
            Outcome::Timeout => 2,
            Outcome::Rejected => 3,
            Outcome::Error => 4,
        }
    }

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

/// What a ledger row bills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// A call of a function.
    #[default]
    Invocation,
    /// Validating and compiling an upload of a function: its CPU time
    /// (`usage.guest_us`), billed to the uploading tenant.
    Compile,
    /// Validating an upload of a model by loading it: its CPU time
    /// (`usage.guest_us`), billed to the uploading tenant.
    ModelUpload,
}

impl RecordKind {
    /// Every kind, in a fixed order: a record stores its kind as its index
    /// here, so kinds are only ever added at the end.
    pub const ALL: [RecordKind; 3] = [
        RecordKind::Invocation,
        RecordKind::Compile,
        RecordKind::ModelUpload,
    ];

    /// Its place in [`RecordKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            RecordKind::Invocation => 0,
            RecordKind::Compile => 1,
            RecordKind::ModelUpload => 2,
        }
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
    /// Guest CPU time.
    #[serde(default)]
    pub cpu_nanos: u64,
    pub cpu_inference_nanos: u64,
    pub gpu_nanos: u64,
    pub cold_start_nanos: u64,
    pub model_load_nanos: u64,
    /// The remainder below one micro-unit that the tenant's earlier calls
    /// left, carried into this one.
    #[serde(default)]
    pub carried_nanos: u64,
    /// Whole micro-units of the components and the carried remainder
    /// (what is left over carries to the tenant's next call).
    pub total_micros: u64,
}

impl Cost {
    /// The components' sum, in nano-units.
    pub fn nanos(&self) -> u64 {
        [
            self.request_nanos,
            self.memory_nanos,
            self.cpu_nanos,
            self.cpu_inference_nanos,
            self.gpu_nanos,
            self.cold_start_nanos,
            self.model_load_nanos,
        ]
        .iter()
        .fold(0u64, |acc, v| acc.saturating_add(*v))
    }

    /// Settles the cost with `carried` nano-units (below one micro-unit)
    /// left by the tenant's earlier calls: the total becomes the whole
    /// micro-units of both, and the new remainder is returned for the
    /// tenant's next call.
    pub fn settle(&mut self, carried: u64) -> u64 {
        let sum = self.nanos().saturating_add(carried);
        self.carried_nanos = carried;
        self.total_micros = sum / 1000;
        sum % 1000
    }
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub id: InvocationId,
    #[serde(default)]
    pub kind: RecordKind,
    /// Names are shared with the function's registry entry, so a record
    /// costs no allocation and freeing it frees nothing.
    pub tenant: Arc<str>,
    pub function: Arc<str>,
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
    pub currency: Arc<str>,
    pub cost: Cost,
    /// What `wasi:nn` did, per model and device.
    #[serde(default)]
    pub nn: NnUsageReport,
}

/// Whole milliseconds, rounded up.
fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

/// Prices `usage` under `plan`: the billed milliseconds and the cost, its
/// total rounded up to whole micro-units until [`Cost::settle`] settles it
/// with the tenant's remainder. Calls that ran nothing cost nothing: rejected ones, and failures before
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
        // per second × (µs / 1,000,000) × 1000 nanos/µ.
        cpu_nanos: n(u128::from(plan.per_cpu_second) * u128::from(usage.guest_us) / 1000),
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
        // Per load, and the loads' time as CPU time (a load is the
        // platform computing for the call).
        model_load_nanos: cost_per(plan.per_model_load, u64::from(usage.model_loads))
            .saturating_add(n(u128::from(plan.per_cpu_second)
                * u128::from(usage.model_load_us)
                / 1000)),
        carried_nanos: 0,
        total_micros: 0,
    };
    // Alone (nothing carried), a part of a micro-unit counts as a whole.
    cost.total_micros = cost.nanos().div_ceil(1000);
    (billed_ms, cost)
}

impl InvocationRecord {
    /// Writes `glia-usage`, a compact, human-readable breakdown for the
    /// response, onto `out`. This runs on every metered call, so it writes
    /// bytes directly rather than through `fmt`.
    pub fn write_usage_header(&self, out: &mut Vec<u8>) {
        let u = &self.usage;
        let mut w = Text {
            out,
            digits: itoa::Buffer::new(),
        };
        w.ms("run", u.run_us).ms("guest", u.guest_us);
        w.str("mem=").int(u.memory_mb).str("MB; peak=");
        w.int(u.peak_memory_bytes / 1024).str("KiB; ");
        if u.cpu_inference_us > 0 {
            w.ms("cpu-inference", u.cpu_inference_us);
        }
        if u.gpu_inference_us > 0 {
            w.ms("gpu", u.gpu_inference_us);
        }
        if u.model_loads > 0 {
            w.ms("model-load", u.model_load_us);
        }
        if u.cold_start_us > 0 {
            w.ms("cold-start", u.cold_start_us);
        }
        w.str("in=")
            .int(u.bytes_in)
            .str("B; out=")
            .int(u.bytes_out)
            .str("B");
    }
}

/// Prices an upload's compilation under `plan`: `cpu_us` of CPU time
/// (validating and compiling, on every thread the compile used) at
/// `per_cpu_second`, its total rounded up until settled. Nothing else of
/// the plan applies: it is not a call.
pub fn price_compile(plan: &PricePlan, cpu_us: u64) -> Cost {
    let mut cost = Cost {
        cpu_nanos: u64::try_from(u128::from(plan.per_cpu_second) * u128::from(cpu_us) / 1000)
            .unwrap_or(u64::MAX),
        ..Cost::default()
    };
    cost.total_micros = cost.nanos().div_ceil(1000);
    cost
}

/// Text written straight onto a byte buffer.
struct Text<'a> {
    out: &'a mut Vec<u8>,
    digits: itoa::Buffer,
}

impl Text<'_> {
    fn str(&mut self, s: &str) -> &mut Self {
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    fn int(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(self.digits.format(v).as_bytes());
        self
    }

    /// `name=M.UUUms; ` for a duration in microseconds.
    fn ms(&mut self, name: &str, us: u64) -> &mut Self {
        let frac = us % 1000;
        self.str(name).str("=").int(us / 1000);
        // Each digit is below 10.
        let digit = |d: u64| b'0' + (d % 10) as u8;
        self.out
            .extend_from_slice(&[b'.', digit(frac / 100), digit(frac / 10), digit(frac)]);
        self.str("ms; ")
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
            per_cpu_second: 4000,
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
            guest_us: 1_501,
            memory_mb: 128,
            cpu_inference_us: 1_001, // 2 ms
            gpu_inference_us: 0,
            cold_start_us: 400,
            model_loads: 1,
            model_load_us: 250,
            ..Usage::default()
        };
        let (billed, cost) = price(&plan(), Outcome::Ok, &usage);
        assert_eq!(billed, 3);
        assert_eq!(cost.request_nanos, 2_000);
        // 1024 µ/GB-s × 0.125 GB × 0.003 s = 0.384 µ = 384 nanos.
        assert_eq!(cost.memory_nanos, 384);
        // 4000 µ/s × 0.001501 s = 6.004 µ, from microseconds.
        assert_eq!(cost.cpu_nanos, 6_004);
        // 3000 µ/s × 0.002 s = 6 µ.
        assert_eq!(cost.cpu_inference_nanos, 6_000);
        assert_eq!(cost.gpu_nanos, 0);
        assert_eq!(cost.cold_start_nanos, 5_000);
        // 11 µ a load, and 4000 µ/s × 0.00025 s of its CPU time.
        assert_eq!(cost.model_load_nanos, 12_000);
        // 31.388 µ: alone, a part of a micro-unit counts as a whole...
        assert_eq!(cost.total_micros, 32);
        // ...settled, it carries to the tenant's next call.
        let mut settled = cost.clone();
        assert_eq!(settled.settle(0), 388);
        assert_eq!((settled.total_micros, settled.carried_nanos), (31, 0));
        assert_eq!(settled.settle(700), 88);
        assert_eq!((settled.total_micros, settled.carried_nanos), (32, 700));
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
    fn remainders_carry_so_that_no_call_is_rounded_away() {
        let p = PricePlan {
            per_request: 0,
            per_gb_second: 1,
            per_cpu_second: 0,
            per_cpu_inference_second: 0,
            per_gpu_second: 0,
            per_cold_start: 0,
            per_model_load: 0,
            version: 1,
        };
        // 1 µ/GB-s × 0.5 GB × 0.8 s = 0.4 µ (400 nanos) a call.
        let usage = Usage {
            run_us: 800_000,
            memory_mb: 512,
            ..Usage::default()
        };
        let (mut carry, mut total) = (0, 0);
        for _ in 0..1000 {
            let (_, mut cost) = price(&p, Outcome::Ok, &usage);
            assert_eq!(cost.memory_nanos, 400);
            carry = cost.settle(carry);
            total += cost.total_micros;
        }
        assert_eq!((total, carry), (400, 0), "1000 × 0.4 µ");
    }

    #[test]
    fn the_usage_header_reads_as_milliseconds_and_sizes() {
        let record = InvocationRecord {
            id: InvocationId::now(),
            kind: RecordKind::Invocation,
            tenant: "default".into(),
            function: "f".into(),
            version: 1,
            started_at_ms: 0,
            status: 200,
            outcome: Outcome::Ok,
            usage: Usage {
                run_us: 1_234,
                guest_us: 7,
                memory_mb: 128,
                peak_memory_bytes: 1_114_112,
                cpu_inference_us: 20_050,
                cold_start_us: 300,
                bytes_in: 0,
                bytes_out: 18_446_744_073_709_551_615,
                ..Usage::default()
            },
            billed_ms: 2,
            memory_mb_ms: 256,
            plan_version: 1,
            currency: "USD".into(),
            cost: Cost::default(),
            nn: NnUsageReport::default(),
        };
        let mut out = Vec::new();
        record.write_usage_header(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "run=1.234ms; guest=0.007ms; mem=128MB; peak=1088KiB; cpu-inference=20.050ms; \
             cold-start=0.300ms; in=0B; out=18446744073709551615B"
        );
    }

    #[test]
    fn invocation_ids_read_back_from_their_text() {
        let id = InvocationId::now();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(InvocationId::parse(&text), Some(id));
        let json = serde_json::to_string(&id).expect("serializes");
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(
            serde_json::from_str::<InvocationId>(&json).expect("parses"),
            id
        );
        assert_eq!(InvocationId::parse("nope"), None);
        assert!(serde_json::from_str::<InvocationId>("\"nope\"").is_err());
    }

    #[test]
    fn ids_of_a_process_have_increasing_upper_halves() {
        let ids: Vec<InvocationId> = (0..10_000).map(|_| InvocationId::now()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0].halves().0 < pair[1].halves().0, "{pair:?}");
        }
        for id in &ids {
            // Version 7, RFC 9562 variant.
            assert_eq!(id.0.get_version_num(), 7);
            assert_eq!(id.halves().1 >> 62, 0b10);
            assert_eq!(InvocationId::from_halves(id.halves().0, id.halves().1), *id);
        }
        // A ledger's newest id, a minute ahead of this clock: ids made
        // afterwards still come later.
        let (high, _) = ids[ids.len() - 1].halves();
        let ahead = high + (60_000 << 16);
        InvocationId::make_later_than(ahead);
        assert!(InvocationId::now().halves().0 > ahead);
    }

    #[test]
    fn a_full_counter_moves_on_to_the_next_millisecond() {
        let ms = 1_795_910_400_000u64;
        let now = ms << 16 | 0x7000;
        assert_eq!(next_high(0, now), now);
        assert_eq!(next_high(now, now), now + 1);
        assert_eq!(next_high(now | 0xfff, now), (ms + 1) << 16 | 0x7000);
        // A clock that went back keeps counting from the newest.
        assert_eq!(next_high(now + 5, now - (3 << 16)), now + 6);
    }

    #[test]
    fn outcomes_round_trip_and_sit_at_their_index() {
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            assert_eq!(o.index(), i, "{o:?}");
        }
    }
}

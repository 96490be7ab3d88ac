//! A ledger row's record, as the bytes of one column.
//!
//! SQLite spends on a row in proportion to its columns and its bytes, so a
//! row holds its key (the id's halves), its time and this encoding of the
//! rest: a format byte, then every field in a fixed order, integers as
//! LEB128 varints (most are small: a no-op call's record is about 60
//! bytes) and texts as a length and their UTF-8 bytes.
//!
//! Format 2, after the format byte: version, status, outcome (one byte,
//! its index in `Outcome::ALL`: ok, trap, timeout, rejected, error), kind
//! (one byte, its index in `RecordKind::ALL`: invocation, compile, model
//! upload),
//! billed ms, memory MB-ms; the usage (wall, queue, cold start, run,
//! guest µs, memory MB, peak memory bytes, CPU and GPU inference µs, model
//! loads, model-load µs, bytes in, bytes out); plan version; the cost
//! (request, memory, CPU, CPU inference, GPU, cold start, model load
//! nanos, carried nanos, total micros); tenant, function, currency; and
//! the `wasi:nn` report
//! (inline µs; compute runs as device, backend, runs, µs; model loads as
//! model, device, backend, µs; fallbacks as model, requested device,
//! device run on). Devices are one byte: cpu, gpu, tpu.
//!
//! Format 1 (before guest CPU and compiles were priced) lacks the kind and
//! the CPU and carried nanos; it is read as an invocation, with both 0.
//!
//! Decoding checks every length and byte and fails with a message (never a
//! panic) on anything else, trailing bytes included.

use std::borrow::Cow;

use super::{Cost, InvocationId, InvocationRecord, Outcome, RecordKind, Usage};
use crate::nn::Device;
use crate::nn::NnUsageReport;
use crate::nn::usage::{ComputeTime, Fallback, ModelLoad};

/// The format this build writes.
const FORMAT: u8 = 2;

const DEVICES: [Device; 3] = [Device::Cpu, Device::Gpu, Device::Tpu];

fn device_code(device: Device) -> u8 {
    match device {
        Device::Cpu => 0,
        Device::Gpu => 1,
        Device::Tpu => 2,
    }
}

/// Writes a record's fields (all but its id and start time) onto `out`.
pub(super) fn encode(r: &InvocationRecord, out: &mut Vec<u8>) {
    let u = &r.usage;
    let c = &r.cost;
    out.push(FORMAT);
    let mut w = Writer(out);
    w.int(u64::from(r.version)).int(u64::from(r.status));
    w.byte(r.outcome.index() as u8);
    w.byte(r.kind.index() as u8);
    for v in [
        r.billed_ms,
        r.memory_mb_ms,
        u.wall_us,
        u.queue_us,
        u.cold_start_us,
        u.run_us,
        u.guest_us,
        u.memory_mb,
        u.peak_memory_bytes,
        u.cpu_inference_us,
        u.gpu_inference_us,
        u64::from(u.model_loads),
        u.model_load_us,
        u.bytes_in,
        u.bytes_out,
        u64::from(r.plan_version),
        c.request_nanos,
        c.memory_nanos,
        c.cpu_nanos,
        c.cpu_inference_nanos,
        c.gpu_nanos,
        c.cold_start_nanos,
        c.model_load_nanos,
        c.carried_nanos,
        c.total_micros,
    ] {
        w.int(v);
    }
    w.text(&r.tenant).text(&r.function).text(&r.currency);
    let nn = &r.nn;
    w.int(nn.inline_micros).int(nn.compute.len() as u64);
    for run in &nn.compute {
        w.byte(device_code(run.device)).text(&run.backend);
        w.int(u64::from(run.runs)).int(run.micros);
    }
    w.int(nn.loads.len() as u64);
    for load in &nn.loads {
        w.text(&load.model).byte(device_code(load.device));
        w.text(&load.backend).int(load.micros);
    }
    w.int(nn.fallbacks.len() as u64);
    for f in &nn.fallbacks {
        w.text(&f.model);
        w.byte(device_code(f.requested)).byte(device_code(f.ran_on));
    }
}

/// The record stored as `bytes` for `id`, which arrived at `started_at_ms`.
pub(super) fn decode(
    id: InvocationId,
    started_at_ms: i64,
    bytes: &[u8],
) -> Result<InvocationRecord, String> {
    let mut r = Reader { bytes, at: 0 };
    let format = r.byte()?;
    if format != FORMAT && format != 1 {
        return Err(format!(
            "record format {format} is not one this build reads"
        ));
    }
    let version = r.int_u32()?;
    let status = u16::try_from(r.int()?).map_err(|_| "status out of range")?;
    let outcome = *Outcome::ALL
        .get(usize::from(r.byte()?))
        .ok_or("unknown outcome")?;
    let kind = if format == 1 {
        RecordKind::Invocation
    } else {
        *RecordKind::ALL
            .get(usize::from(r.byte()?))
            .ok_or("unknown record kind")?
    };
    let mut ints = [0u64; 25];
    for (i, v) in ints.iter_mut().enumerate() {
        // Format 1 has no CPU (18) or carried (23) nanos.
        if format == 1 && (i == 18 || i == 23) {
            continue;
        }
        *v = r.int()?;
    }
    let [
        billed_ms,
        memory_mb_ms,
        wall_us,
        queue_us,
        cold_start_us,
        run_us,
        guest_us,
        memory_mb,
        peak_memory_bytes,
        cpu_inference_us,
        gpu_inference_us,
        model_loads,
        model_load_us,
        bytes_in,
        bytes_out,
        plan_version,
        request_nanos,
        memory_nanos,
        cpu_nanos,
        cpu_inference_nanos,
        gpu_nanos,
        cold_start_nanos,
        model_load_nanos,
        carried_nanos,
        total_micros,
    ] = ints;
    let (tenant, function, currency) = (r.text()?, r.text()?, r.text()?);
    let mut nn = NnUsageReport {
        inline_micros: r.int()?,
        ..NnUsageReport::default()
    };
    for _ in 0..r.count()? {
        nn.compute.push(ComputeTime {
            device: r.device()?,
            backend: Cow::Owned(r.text()?.to_owned()),
            runs: r.int_u32()?,
            micros: r.int()?,
        });
    }
    for _ in 0..r.count()? {
        nn.loads.push(ModelLoad {
            model: r.text()?.to_owned(),
            device: r.device()?,
            backend: Cow::Owned(r.text()?.to_owned()),
            micros: r.int()?,
        });
    }
    for _ in 0..r.count()? {
        nn.fallbacks.push(Fallback {
            model: r.text()?.to_owned(),
            requested: r.device()?,
            ran_on: r.device()?,
        });
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes after the record", bytes.len() - r.at));
    }
    let small = |v: u64| u32::try_from(v).map_err(|_| "count out of range");
    Ok(InvocationRecord {
        id,
        kind,
        tenant: tenant.into(),
        function: function.into(),
        version,
        started_at_ms,
        status,
        outcome,
        usage: Usage {
            wall_us,
            queue_us,
            cold_start_us,
            run_us,
            guest_us,
            memory_mb,
            peak_memory_bytes,
            cpu_inference_us,
            gpu_inference_us,
            model_loads: small(model_loads)?,
            model_load_us,
            bytes_in,
            bytes_out,
        },
        billed_ms,
        memory_mb_ms,
        plan_version: small(plan_version)?,
        currency: currency.into(),
        cost: Cost {
            request_nanos,
            memory_nanos,
            cpu_nanos,
            cpu_inference_nanos,
            gpu_nanos,
            cold_start_nanos,
            model_load_nanos,
            carried_nanos,
            total_micros,
        },
        nn,
    })
}

struct Writer<'o>(&'o mut Vec<u8>);

impl Writer<'_> {
    fn byte(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }

    /// LEB128: seven bits a byte, low first, the top bit set on all but
    /// the last.
    fn int(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.0.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }

    fn text(&mut self, s: &str) -> &mut Self {
        self.int(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

struct Reader<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("record ends early")?;
        self.at += 1;
        Ok(b)
    }

    fn int(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err("integer out of range".into());
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("integer out of range".into())
    }

    fn int_u32(&mut self) -> Result<u32, String> {
        u32::try_from(self.int()?).map_err(|_| "integer out of range".into())
    }

    /// A count of items, each at least one byte long (so a corrupt count
    /// fails at the end of the bytes instead of looping for long).
    fn count(&mut self) -> Result<usize, String> {
        let n = self.int()?;
        let left = self.bytes.len() - self.at;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| format!("a count of {n} with {left} bytes left"))
    }

    fn text(&mut self) -> Result<&'b str, String> {
        let len = self.count()?;
        let bytes = self
            .bytes
            .get(self.at..self.at + len)
            .ok_or("record ends early")?;
        self.at += len;
        std::str::from_utf8(bytes).map_err(|_| "text is not UTF-8".into())
    }

    fn device(&mut self) -> Result<Device, String> {
        DEVICES
            .get(usize::from(self.byte()?))
            .copied()
            .ok_or_else(|| "unknown device".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> InvocationRecord {
        InvocationRecord {
            id: InvocationId::now(),
            kind: RecordKind::Compile,
            tenant: "acme".into(),
            function: "classify-digits".into(),
            version: 3,
            started_at_ms: 1_795_910_400_123,
            status: 200,
            outcome: Outcome::Timeout,
            usage: Usage {
                wall_us: 1,
                queue_us: 127,
                cold_start_us: 128,
                run_us: 16_383,
                guest_us: 16_384,
                memory_mb: 128,
                peak_memory_bytes: 1 << 40,
                cpu_inference_us: 2,
                gpu_inference_us: 3,
                model_loads: u32::MAX,
                model_load_us: 5,
                bytes_in: 6,
                bytes_out: u64::MAX,
            },
            billed_ms: 17,
            memory_mb_ms: 2176,
            plan_version: 9,
            currency: "EUR".into(),
            cost: Cost {
                request_nanos: 200_000,
                memory_nanos: 1,
                cpu_nanos: 6,
                cpu_inference_nanos: 2,
                gpu_nanos: 3,
                cold_start_nanos: 4,
                model_load_nanos: 5,
                carried_nanos: 999,
                total_micros: 201,
            },
            nn: NnUsageReport {
                compute: [
                    ComputeTime {
                        device: Device::Cpu,
                        backend: "tract".into(),
                        runs: 2,
                        micros: 40,
                    },
                    ComputeTime {
                        device: Device::Gpu,
                        backend: "torch".into(),
                        runs: 1,
                        micros: 7,
                    },
                    ComputeTime {
                        device: Device::Tpu,
                        backend: "ort".into(),
                        runs: 0,
                        micros: 0,
                    },
                ]
                .into_iter()
                .collect(),
                loads: vec![ModelLoad {
                    model: "digits".into(),
                    device: Device::Gpu,
                    backend: "torch".into(),
                    micros: 1_500,
                }],
                fallbacks: vec![Fallback {
                    model: "digits".into(),
                    requested: Device::Tpu,
                    ran_on: Device::Cpu,
                }],
                inline_micros: 40,
            },
        }
    }

    fn round_trip(r: &InvocationRecord) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode(r, &mut bytes);
        assert_eq!(decode(r.id, r.started_at_ms, &bytes).as_ref(), Ok(r));
        bytes
    }

    #[test]
    fn every_field_round_trips() {
        let r = record();
        round_trip(&r);
        // Every integer at its largest.
        let mut big = r.clone();
        big.version = u32::MAX;
        big.status = u16::MAX;
        big.billed_ms = u64::MAX;
        big.cost.total_micros = u64::MAX;
        big.nn.compute[0].runs = u32::MAX;
        round_trip(&big);
        // A no-op call, as a busy function makes them.
        let plain = InvocationRecord {
            tenant: "default".into(),
            function: "hello".into(),
            outcome: Outcome::Ok,
            usage: Usage {
                wall_us: 180,
                queue_us: 2,
                run_us: 95,
                guest_us: 24,
                memory_mb: 128,
                peak_memory_bytes: 1_114_112,
                bytes_out: 18,
                ..Usage::default()
            },
            billed_ms: 1,
            memory_mb_ms: 128,
            currency: "USD".into(),
            cost: Cost {
                request_nanos: 200_000,
                memory_nanos: 2_083,
                total_micros: 202,
                ..Cost::default()
            },
            nn: NnUsageReport::default(),
            ..r
        };
        assert!(round_trip(&plain).len() < 64);
    }

    #[test]
    fn format_1_records_read_with_no_cpu_or_carried_nanos() {
        let mut r = record();
        r.kind = RecordKind::Invocation;
        r.cost.cpu_nanos = 0;
        r.cost.carried_nanos = 0;
        let mut bytes = Vec::new();
        encode(&r, &mut bytes);
        // Format 1 is format 2 without those three fields (one byte each
        // here): find them as the bytes that change when they do.
        let mut marked = r.clone();
        marked.kind = RecordKind::Compile;
        marked.cost.cpu_nanos = 77;
        marked.cost.carried_nanos = 78;
        let mut with_markers = Vec::new();
        encode(&marked, &mut with_markers);
        assert_eq!(with_markers.len(), bytes.len());
        let mut v1: Vec<u8> = with_markers
            .iter()
            .zip(&bytes)
            .filter(|(m, b)| m == b)
            .map(|(_, b)| *b)
            .collect();
        assert_eq!(v1.len(), bytes.len() - 3);
        v1[0] = 1;
        assert_eq!(decode(r.id, r.started_at_ms, &v1), Ok(r));
    }

    #[test]
    fn damaged_bytes_fail_with_a_message() {
        let r = record();
        let mut bytes = Vec::new();
        encode(&r, &mut bytes);
        // Every truncation, and one byte too many.
        for len in 0..bytes.len() {
            assert!(decode(r.id, 0, &bytes[..len]).is_err(), "{len} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            decode(r.id, 0, &longer)
                .unwrap_err()
                .contains("after the record")
        );
        // Another format, an unknown outcome, a varint past 64 bits.
        let mut other = bytes.clone();
        other[0] = 3;
        assert!(decode(r.id, 0, &other).unwrap_err().contains("format 3"));
        let mut outcome = bytes.clone();
        outcome[4] = 9;
        assert_eq!(decode(r.id, 0, &outcome).unwrap_err(), "unknown outcome");
        let mut kind = bytes.clone();
        kind[5] = 3;
        assert_eq!(decode(r.id, 0, &kind).unwrap_err(), "unknown record kind");
        let mut wide = vec![FORMAT];
        wide.extend([0xff; 10]);
        assert!(decode(r.id, 0, &wide).unwrap_err().contains("out of range"));
        // Every byte flipped in turn: an error or some record, never a panic.
        for ix in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[ix] ^= 0xff;
            let _ = decode(r.id, 0, &flipped);
        }
    }
}

//! Metering a data-plane call: what it used, its price, its ledger row and
//! its billing headers.
//!
//! A response up to `billing.buffer_response_kb` is held until the guest
//! has finished and the call is priced, so it carries `glia-billed-ms`,
//! `glia-cost` and `glia-usage`; under `strict` durability it is released
//! only once its ledger row is committed. A larger response streams; its row
//! is written when the body ends (under `strict`, the last frame is held
//! back until the row is committed, so a client that has the whole body has
//! its record). A guest that fails while its buffered body is incomplete
//! gets a proper error response instead of a truncated body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::error::full;
use super::{ApiError, AppState, NN_DEVICE_HEADER};
use crate::auth::{Auth, TenantMeter};
use crate::billing::{
    InvocationId, InvocationRecord, LedgerError, LedgerWriter, Outcome, RecordKind, Usage, price,
};
use crate::config::{Durability, PricePlan};
use crate::nn::{NnUsage, NnUsageReport};
use crate::registry::UploadUsage;
use crate::runtime::{BoxError, GuestFinished, GuestReport, InvokeError, ResponseBody};
use crate::telemetry::{CallObservation, Metrics};
use tracing::Instrument as _;

/// Header: whole milliseconds billed.
pub static BILLED_MS_HEADER: HeaderName = HeaderName::from_static("glia-billed-ms");
/// Header: the call's cost in micro-units of the plan's currency.
pub static COST_HEADER: HeaderName = HeaderName::from_static("glia-cost");
/// Header: a compact usage breakdown.
pub static USAGE_HEADER: HeaderName = HeaderName::from_static("glia-usage");

/// The function a call reached.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The tenant that owns the function and pays for the call.
    pub tenant: Arc<str>,
    pub function: Arc<str>,
    pub version: u32,
    pub memory_mb: u64,
}

/// What is known about a call as it goes.
pub(super) struct Meter {
    pub id: InvocationId,
    pub started: Instant,
    pub started_at_ms: i64,
    /// Set once the function is resolved; calls that never reach one are
    /// not recorded.
    pub target: Option<Target>,
    pub queue: Duration,
    pub cold_start: Option<Duration>,
    pub nn: Option<Arc<NnUsage>>,
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub finished: Option<GuestFinished>,
    /// Set when the call failed before or at invocation.
    pub outcome: Option<Outcome>,
    /// The paying tenant's live counters, once its quotas were checked
    /// (the call's cost is added to its spend).
    pub spend: Option<Arc<TenantMeter>>,
    /// The call's root span (`glia.invoke`).
    pub span: tracing::Span,
    /// With billing on, the platform, to settle the call with should it be
    /// dropped before its row is written (see [`Drop`]).
    pub settle: Option<Arc<AppState>>,
    /// Under a spend cap, the call's worst-case cost held against it until
    /// the call is priced (the meter is dropped after its row is written).
    pub reservation: Option<crate::auth::SpendReservation>,
}

impl Meter {
    pub fn new(id: InvocationId, span: tracing::Span) -> Self {
        Self {
            id,
            span,
            started: Instant::now(),
            started_at_ms: crate::registry::now_ms(),
            target: None,
            queue: Duration::ZERO,
            cold_start: None,
            nn: None,
            bytes_in: None,
            finished: None,
            outcome: None,
            spend: None,
            settle: None,
            reservation: None,
        }
    }

    /// What the guest used, once it has finished and every inference run
    /// it started has ended (a run can outlive its call's deadline).
    /// Cancel-safe: a wait that is given up leaves the guest in the meter.
    async fn guest_report(&mut self) -> GuestReport {
        let Some(finished) = self.finished.as_mut() else {
            return GuestReport::default();
        };
        finished.finish().await;
        if let Some(nn) = &self.nn {
            nn.settled().await;
        }
        self.finished
            .take()
            .map(GuestFinished::into_report)
            .unwrap_or_default()
    }
}

/// Status recorded for a call whose client went away before its response
/// was released (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// A call belongs to its invocation, not to its client's connection: when
/// hyper drops a call's future because the client went away (a closed
/// connection, an HTTP/2 reset), the call's meter is dropped with its
/// function still set, and its row is written from here, once the guest
/// has finished, as `499`. The guest runs to its end (or its timeout) and
/// is billed for all of it, and its cost counts against its tenant's cap.
impl Drop for Meter {
    fn drop(&mut self) {
        if self.target.is_none() {
            return;
        }
        let Some(state) = self.settle.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(invocation_id = %self.id, "a call's row was lost: no runtime to write it from");
            return;
        };
        let meter = std::mem::replace(self, Meter::new(self.id, tracing::Span::none()));
        runtime.spawn(settle_abandoned(state, meter));
    }
}

/// Writes the row of a call its client abandoned, once its guest is done.
async fn settle_abandoned(state: Arc<AppState>, mut meter: Meter) {
    let Some(billing) = state.billing.clone() else {
        return;
    };
    let report = meter.guest_report().await;
    let Some(target) = meter.target.take() else {
        return;
    };
    let outcome = meter
        .outcome
        .or_else(|| report.error.as_ref().map(outcome_of))
        .unwrap_or(Outcome::Ok);
    let record = Pricing::of(&state).record(&meter, target, &report, CLIENT_CLOSED, outcome, 0);
    let _entered = meter.span.enter();
    tracing::debug!(invocation_id = %meter.id, "the client left before the response; the call is billed as it ran");
    billing.record_detached(record);
}

/// Counts a finished call of a function in the platform's metrics and
/// notes its outcome on its span (calls that reached no function are not
/// counted).
pub(super) fn observe(state: &AppState, meter: &Meter, outcome: Outcome) {
    if let Some(target) = &meter.target {
        count(&state.telemetry.metrics, meter, target, outcome);
    }
}

fn count(metrics: &Metrics, meter: &Meter, target: &Target, outcome: Outcome) {
    crate::telemetry::trace::record(&meter.span, "glia.outcome", outcome.as_str());
    metrics.call(&CallObservation {
        function: &crate::registry::qualify(&target.tenant, &target.function),
        outcome,
        duration: meter.started.elapsed(),
        admission_wait: meter.queue,
        cold_start: meter.cold_start,
    });
}

/// How a failed invocation is billed.
pub(super) fn outcome_of(e: &InvokeError) -> Outcome {
    match e {
        InvokeError::Timeout { .. } => Outcome::Timeout,
        InvokeError::MemoryLimit { .. } | InvokeError::Trap { .. } => Outcome::Trap,
        InvokeError::Capacity => Outcome::Rejected,
        InvokeError::NoResponse
        | InvokeError::GuestError(_)
        | InvokeError::PlatformMemory
        | InvokeError::Internal(_) => Outcome::Error,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Prices calls and builds their ledger rows: the plan, and where spend
/// and calls are counted. Borrowed from the platform's state, so pricing a
/// call copies nothing.
struct Pricing<'a> {
    plan: &'a PricePlan,
    currency: &'a Arc<str>,
    /// Where each tenant's spend this month is counted (for spend caps).
    auth: &'a Auth,
    metrics: &'a Metrics,
}

impl<'a> Pricing<'a> {
    fn of(state: &'a AppState) -> Self {
        Self {
            plan: &state.config.billing.plan,
            currency: &state.config.billing.currency,
            auth: &state.auth,
            metrics: &state.telemetry.metrics,
        }
    }

    /// The row; the call's cost is added to its tenant's spend and the
    /// finished call is counted in the metrics.
    fn record(
        &self,
        meter: &Meter,
        target: Target,
        report: &GuestReport,
        status: u16,
        outcome: Outcome,
        bytes_out: u64,
    ) -> InvocationRecord {
        use crate::nn::Device;
        // The guest has finished: nothing adds to its report any more.
        let nn = meter
            .nn
            .as_ref()
            .map(|n| n.take_report())
            .unwrap_or_default();
        let busy = micros(report.busy);
        let usage = Usage {
            wall_us: micros(meter.started.elapsed()),
            queue_us: micros(meter.queue),
            cold_start_us: meter.cold_start.map(micros).unwrap_or(0),
            run_us: micros(report.run),
            guest_us: busy.saturating_sub(nn.inline_micros),
            memory_mb: target.memory_mb,
            peak_memory_bytes: report.peak_memory,
            cpu_inference_us: micros(nn.compute_on(Device::Cpu)),
            gpu_inference_us: micros(nn.compute_on(Device::Gpu))
                .saturating_add(micros(nn.compute_on(Device::Tpu))),
            model_loads: u32::try_from(nn.loads.len()).unwrap_or(u32::MAX),
            model_load_us: micros(nn.load_time()),
            bytes_in: meter
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed)),
            bytes_out,
        };
        let (billed_ms, mut cost) = price(self.plan, outcome, &usage);
        let month = crate::billing::usage::month_start_ms(meter.started_at_ms);
        let tenant_meter;
        let spend = match &meter.spend {
            Some(spend) => spend,
            None => {
                tenant_meter = self.auth.meter(&target.tenant);
                &tenant_meter
            }
        };
        let nanos = cost.nanos();
        if nanos > 0 {
            cost.settle(spend.carry(nanos));
        }
        spend.add_spent(month, cost.total_micros);
        count(self.metrics, meter, &target, outcome);
        InvocationRecord {
            id: meter.id,
            kind: RecordKind::Invocation,
            tenant: target.tenant,
            function: target.function,
            version: target.version,
            started_at_ms: meter.started_at_ms,
            status,
            outcome,
            memory_mb_ms: if outcome == Outcome::Rejected {
                0
            } else {
                target.memory_mb.saturating_mul(billed_ms)
            },
            usage,
            billed_ms,
            plan_version: self.plan.version,
            currency: self.currency.clone(),
            cost,
            nn,
        }
    }
}

/// [`Pricing`] that a streamed body can keep until it ends.
struct OwnedPricing {
    plan: PricePlan,
    currency: Arc<str>,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
}

impl OwnedPricing {
    fn of(state: &AppState) -> Self {
        Self {
            plan: state.config.billing.plan.clone(),
            currency: state.config.billing.currency.clone(),
            auth: state.auth.clone(),
            metrics: state.telemetry.metrics.clone(),
        }
    }

    fn pricing(&self) -> Pricing<'_> {
        Pricing {
            plan: &self.plan,
            currency: &self.currency,
            auth: &self.auth,
            metrics: &self.metrics,
        }
    }
}

/// Sets the billing headers of a priced call. Their values are written
/// into one buffer, which the three headers share.
fn billing_headers(response: &mut Response<ResponseBody>, record: &InvocationRecord) {
    let mut text = Vec::with_capacity(192);
    let mut digits = itoa::Buffer::new();
    text.extend_from_slice(digits.format(record.billed_ms).as_bytes());
    let billed = text.len();
    text.extend_from_slice(digits.format(record.cost.total_micros).as_bytes());
    let cost = text.len();
    record.write_usage_header(&mut text);
    let text = Bytes::from(text);
    let headers = response.headers_mut();
    for (name, range) in [
        (&BILLED_MS_HEADER, 0..billed),
        (&COST_HEADER, billed..cost),
        (&USAGE_HEADER, cost..text.len()),
    ] {
        if let Ok(value) = HeaderValue::from_maybe_shared(text.slice(range)) {
            headers.insert(name, value);
        }
    }
}

/// Sets the `wasi:nn` headers from what the call did.
pub(super) fn nn_headers(response: &mut Response<ResponseBody>, nn: &NnUsageReport) {
    if nn.is_empty() {
        return;
    }
    let headers = response.headers_mut();
    if let Some(timing) = nn.server_timing()
        && let Ok(value) = HeaderValue::from_str(&timing)
    {
        headers.append(
            http::header::HeaderName::from_static("server-timing"),
            value,
        );
    }
    let devices = nn.devices();
    if !devices.is_empty() {
        let list: Vec<&str> = devices.iter().map(|d| d.name()).collect();
        if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
            headers.insert(&NN_DEVICE_HEADER, value);
        }
    }
}

/// The span of a ledger write.
fn ledger_span(parent: &tracing::Span, billing: &LedgerWriter) -> tracing::Span {
    tracing::debug_span!(
        parent: parent,
        "glia.ledger.write",
        glia.ledger.durability = match billing.durability() {
            Durability::Strict => "strict",
            Durability::Batched => "batched",
        },
    )
}

/// Writes a priced call's row and waits for its commit (`strict`), in a
/// `glia.ledger.write` span. A `batched` call hands its record over in
/// place instead (`LedgerWriter::hand_over`): it has nothing to wait for,
/// and a future would hold a copy of the record (and a span would time a
/// push onto a queue).
async fn commit_strict(
    billing: &LedgerWriter,
    record: InvocationRecord,
) -> Result<(), LedgerError> {
    let span = ledger_span(&tracing::Span::current(), billing);
    billing.record(record).instrument(span).await
}

/// The error a caller gets when its call's row could not be stored.
fn withheld_unless(written: Result<(), LedgerError>) -> Result<(), ApiError> {
    written.map_err(|e| {
        tracing::error!(error = %e, "ledger write failed; response withheld");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "billing-unavailable",
            "Billing ledger unavailable",
        )
        .detail("the call ran but its billing record could not be stored; retry later")
        .with("retry_after_s", 1)
    })
}

/// An upload's ledger row, as its response reports it.
#[derive(Debug, serde::Serialize)]
pub(super) struct UploadBill {
    pub id: InvocationId,
    pub cpu_us: u64,
    pub cost_micros: u64,
}

/// Runs an upload's `work` (validating, and compiling a component or
/// loading a model) on a task of its own, and bills what it used to the
/// tenant: a ledger row of kind `kind` (`compile` or `model-upload`) with
/// its CPU time, priced at `per_cpu_second` and added to the tenant's
/// spend, whether the upload succeeded or not. A client that leaves
/// meanwhile stops neither the work (it runs on the blocking pool) nor its
/// bill. `held` (the upload's buffered bytes) is kept until the work ends;
/// `made` gives the version an upload made and whether it was new.
/// `strict` durability waits for the row; should that fail, the upload
/// stands (it cannot be undone) and the failure is logged.
#[expect(clippy::too_many_arguments, reason = "an upload's parts, each once")]
pub(super) async fn run_billed_upload<T, Fut>(
    state: &Arc<AppState>,
    kind: RecordKind,
    tenant: &str,
    name: &str,
    bytes_in: u64,
    held: impl Send + 'static,
    work: impl FnOnce(Arc<AppState>) -> Fut + Send + 'static,
    made: fn(&T) -> (u32, bool),
) -> Result<(T, Option<UploadBill>), ApiError>
where
    T: Send + 'static,
    Fut: Future<Output = (Result<T, ApiError>, UploadUsage)> + Send + 'static,
{
    let task = {
        let (state, tenant, name) = (state.clone(), tenant.to_string(), name.to_string());
        tokio::spawn(async move {
            let _held = held;
            let (started, started_at_ms) = (Instant::now(), crate::registry::now_ms());
            let (result, usage) = work(state.clone()).await;
            let (version, status) = match &result {
                Ok(made_it) => {
                    let (version, created) = made(made_it);
                    (version, if created { 201 } else { 200 })
                }
                Err(e) => (0, e.status.as_u16()),
            };
            let upload = Upload {
                kind,
                tenant: &tenant,
                name: &name,
                version,
                status,
                bytes_in,
                started,
                started_at_ms,
            };
            let bill = bill_upload(&state, upload, &usage).await;
            (result, bill)
        })
    };
    let (result, bill) = task.await.map_err(|e| {
        tracing::error!(error = %e, "an upload's task failed");
        ApiError::internal()
    })?;
    Ok((result?, bill))
}

/// Writes an upload's row (see [`run_billed_upload`]).
async fn bill_upload(
    state: &AppState,
    upload: Upload<'_>,
    usage: &UploadUsage,
) -> Option<UploadBill> {
    let billing = state.billing.as_ref()?;
    if !usage.validated {
        return None;
    }
    let plan = &state.config.billing.plan;
    let cpu_us = micros(usage.cpu);
    let mut cost = crate::billing::price_compile(plan, cpu_us);
    let meter = state.auth.meter(upload.tenant);
    let nanos = cost.nanos();
    if nanos > 0 {
        cost.settle(meter.carry(nanos));
    }
    let started_at_ms = upload.started_at_ms;
    meter.add_spent(
        crate::billing::usage::month_start_ms(started_at_ms),
        cost.total_micros,
    );
    let wall_us = micros(upload.started.elapsed());
    let record = InvocationRecord {
        id: InvocationId::now(),
        kind: upload.kind,
        tenant: upload.tenant.into(),
        function: upload.name.into(),
        version: upload.version,
        started_at_ms,
        status: upload.status,
        outcome: if upload.status < 400 {
            Outcome::Ok
        } else {
            Outcome::Error
        },
        usage: Usage {
            wall_us,
            run_us: wall_us,
            guest_us: cpu_us,
            bytes_in: upload.bytes_in,
            ..Usage::default()
        },
        billed_ms: 0,
        memory_mb_ms: 0,
        plan_version: plan.version,
        currency: state.config.billing.currency.clone(),
        cost,
        nn: NnUsageReport::default(),
    };
    let bill = UploadBill {
        id: record.id,
        cpu_us,
        cost_micros: record.cost.total_micros,
    };
    if let Err(e) = billing.record(record).await {
        tracing::error!(error = %e, tenant = upload.tenant, "an upload's ledger row could not be stored");
    }
    Some(bill)
}

/// The upload a row bills.
struct Upload<'a> {
    /// `Compile` (a function's) or `ModelUpload`.
    kind: RecordKind,
    tenant: &'a str,
    /// The function's or the model's.
    name: &'a str,
    /// The version it made (0 when it failed).
    version: u32,
    status: u16,
    bytes_in: u64,
    started: Instant,
    started_at_ms: i64,
}

/// Meters a call that failed with `error` (refused, or the guest failed
/// before answering).
pub(super) async fn finish_error(
    state: &AppState,
    billing: &LedgerWriter,
    mut meter: Meter,
    error: ApiError,
) -> Response<ResponseBody> {
    if meter.target.is_none() {
        return error.into_response(Some(&meter.id.to_string()));
    }
    let report = meter.guest_report().await;
    let outcome = meter.outcome.unwrap_or(Outcome::Error);
    let status = error.status.as_u16();
    let mut response = error.into_response(Some(&meter.id.to_string()));
    let bytes_out = response.body().size_hint().exact().unwrap_or(0);
    let Some(target) = meter.target.take() else {
        return response;
    };
    let record = Pricing::of(state).record(&meter, target, &report, status, outcome, bytes_out);
    billing_headers(&mut response, &record);
    if outcome == Outcome::Rejected {
        // Nothing ran and nothing is billed: the refusal is counted in its
        // minute's totals, and its caller does not wait for that.
        billing.record_detached(record);
        return response;
    }
    let stored = match billing.durability() {
        Durability::Batched => billing.hand_over(record),
        Durability::Strict => commit_strict(billing, record).await,
    };
    if let Err(e) = withheld_unless(stored) {
        return e.into_response(Some(&meter.id.to_string()));
    }
    response
}

/// Meters a call the guest answered.
pub(super) async fn finish_ok(
    state: &AppState,
    billing: &Arc<LedgerWriter>,
    mut meter: Meter,
    response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    if meter.target.is_none() {
        return response;
    }
    let limit = usize::try_from(state.config.billing.buffer_response_kb.saturating_mul(1024))
        .unwrap_or(usize::MAX);
    let (parts, mut body) = response.into_parts();
    // The body so far: its first chunk as it came (most bodies are one),
    // copied together only when a second one arrives.
    let mut first: Option<Bytes> = None;
    let mut buffered = BytesMut::new();
    let mut trailers = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if first.is_none() && buffered.is_empty() {
                        first = Some(data);
                    } else {
                        if let Some(first) = first.take() {
                            buffered.extend_from_slice(&first);
                        }
                        buffered.extend_from_slice(&data);
                    }
                    let held = first.as_ref().map_or(buffered.len(), Bytes::len);
                    if held > limit {
                        if let Some(first) = first.take() {
                            buffered.extend_from_slice(&first);
                        }
                        return stream(state, billing, meter, parts, buffered, body);
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
            Some(Err(e)) => {
                // The guest failed mid-body: answer with why, not a
                // truncated body.
                let report = meter.guest_report().await;
                let error = report.error.as_ref().map_or_else(
                    || InvokeError::Internal(format!("response body: {e}")),
                    InvokeError::clone_kind,
                );
                meter.outcome = Some(outcome_of(&error));
                meter.finished = Some(GuestFinished::Done(report));
                return finish_error(state, billing, meter, ApiError::from(error)).await;
            }
        }
    }
    let report = meter.guest_report().await;
    let outcome = report.error.as_ref().map_or(Outcome::Ok, outcome_of);
    let bytes = first.unwrap_or_else(|| buffered.freeze());
    let Some(target) = meter.target.take() else {
        return Response::from_parts(parts, full(bytes));
    };
    let record = Pricing::of(state).record(
        &meter,
        target,
        &report,
        parts.status.as_u16(),
        outcome,
        bytes.len() as u64,
    );
    let body = match trailers {
        None => full(bytes),
        Some(trailers) => {
            let frames = [
                Ok::<_, BoxError>(Frame::data(bytes)),
                Ok(Frame::trailers(trailers)),
            ];
            http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
        }
    };
    let mut response = Response::from_parts(parts, body);
    // The guest has finished: the nn headers are complete now.
    if meter.nn.is_some() {
        nn_headers(&mut response, &record.nn);
    }
    billing_headers(&mut response, &record);
    let stored = match billing.durability() {
        Durability::Batched => billing.hand_over(record),
        Durability::Strict => commit_strict(billing, record).await,
    };
    if let Err(e) = withheld_unless(stored) {
        return e.into_response(Some(&meter.id.to_string()));
    }
    response
}

/// Streams a response too big to hold; its row is written when it ends.
fn stream(
    state: &AppState,
    billing: &Arc<LedgerWriter>,
    meter: Meter,
    parts: http::response::Parts,
    prefix: BytesMut,
    rest: ResponseBody,
) -> Response<ResponseBody> {
    let mut parts = parts;
    parts.headers.insert(
        &COST_HEADER,
        HeaderValue::from_static("streamed; see GET /v1/invocations/{id}"),
    );
    let status = parts.status.as_u16();
    let prefix = prefix.freeze();
    let body = MeteredBody {
        bytes: prefix.len() as u64,
        prefix: Some(prefix),
        inner: rest,
        held: None,
        strict: billing.durability() == Durability::Strict,
        finalizer: Some(Finalizer {
            billing: billing.clone(),
            pricing: OwnedPricing::of(state),
            meter,
            status,
        }),
        finishing: None,
        done: false,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// Everything needed to write a streamed call's row (the meter keeps its
/// target until the row is written, so that a finalizer dropped midway
/// still settles the call).
struct Finalizer {
    billing: Arc<LedgerWriter>,
    pricing: OwnedPricing,
    meter: Meter,
    status: u16,
}

impl Finalizer {
    async fn finish(mut self, bytes_out: u64, failed: bool, wait_commit: bool) {
        let report = self.meter.guest_report().await;
        let outcome = match report.error.as_ref() {
            Some(e) => outcome_of(e),
            None if failed => Outcome::Error,
            None => Outcome::Ok,
        };
        let Some(target) = self.meter.target.take() else {
            return;
        };
        let record = self.pricing.pricing().record(
            &self.meter,
            target,
            &report,
            self.status,
            outcome,
            bytes_out,
        );
        if wait_commit {
            let span = ledger_span(&self.meter.span, &self.billing);
            if let Err(e) = self.billing.record(record).instrument(span).await {
                tracing::error!(invocation_id = %self.meter.id, error = %e, "ledger write of a streamed call failed");
            }
        } else {
            // In the call's span, so that a lost record's error names it.
            let _entered = self.meter.span.enter();
            self.billing.record_detached(record);
        }
    }
}

/// A streamed guest body that counts its bytes and writes the call's row
/// when it ends (or is dropped).
struct MeteredBody {
    prefix: Option<Bytes>,
    inner: ResponseBody,
    /// Under `strict`, the latest frame, released once the next one arrives
    /// or the row is committed.
    held: Option<Frame<Bytes>>,
    bytes: u64,
    strict: bool,
    finalizer: Option<Finalizer>,
    finishing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    done: bool,
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            let frame = Frame::data(prefix);
            if this.strict {
                this.held = Some(frame);
            } else {
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        loop {
            if let Some(finishing) = this.finishing.as_mut() {
                if finishing.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.finishing = None;
                this.done = true;
            }
            if this.done {
                return Poll::Ready(this.held.take().map(Ok));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.bytes += data.len() as u64;
                    }
                    if !this.strict {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    if let Some(previous) = this.held.replace(frame) {
                        return Poll::Ready(Some(Ok(previous)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(f) = this.finalizer.take() {
                        tokio::spawn(f.finish(this.bytes, true, false));
                    }
                    this.done = true;
                    this.held = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => match this.finalizer.take() {
                    Some(f) => {
                        let strict = this.strict;
                        this.finishing = Some(Box::pin(f.finish(this.bytes, false, strict)));
                    }
                    None => this.done = true,
                },
            }
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away before the end: record what was sent.
        if let Some(f) = self.finalizer.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(f.finish(self.bytes, true, false));
        }
    }
}

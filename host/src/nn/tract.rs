//! `tract` backend: pure-Rust ONNX inference, always compiled in, so the
//! binary alone can serve models.
//!
//! tract runs fastest from a plan optimised for concrete input shapes, so a
//! model keeps its parsed graph and builds (then caches) one optimised plan
//! per distinct set of input shapes; a plan runs concurrently from many
//! threads, each call with its own state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{Backend, DType, LoadedModel, NnError, Tensor, TensorSpec, check_inputs, contained};

/// Largest number of plans a model keeps (one per distinct input shapes).
const MAX_PLANS_PER_MODEL: usize = 16;

type Plan = Arc<TypedRunnableModel>;
/// The shapes of a run's inputs, in input order.
type Shapes = Vec<Vec<usize>>;

/// The tract backend.
#[derive(Debug, Default)]
pub struct TractBackend;

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, bytes: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
        contained(
            "tract",
            || self.load_model(bytes),
            |panic| NnError::InvalidEncoding(format!("not a loadable ONNX model: {panic}")),
        )
    }
}

impl TractBackend {
    fn load_model(&self, bytes: &[u8]) -> Result<Arc<dyn LoadedModel>, NnError> {
        super::onnx::check_self_contained(bytes)?;
        let model = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_read(&mut &*bytes)
            .map_err(|e| NnError::InvalidEncoding(format!("not a loadable ONNX model: {e:#}")))?;
        let inputs = specs(&model, model.input_outlets())?;
        let outputs = specs(&model, model.output_outlets())?;
        let loaded = TractModel {
            model,
            inputs,
            outputs,
            plans: RwLock::new(HashMap::new()),
            tick: AtomicU64::new(0),
        };
        // Build the plan for the model's own input shapes when they are all
        // concrete, so load-time validation covers optimisation too.
        if let Some(shapes) = loaded.concrete_input_shapes() {
            loaded.plan(&shapes)?;
        }
        Ok(Arc::new(loaded))
    }
}

struct TractModel {
    model: InferenceModel,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Plans by input shapes, each with the tick it was last used.
    plans: RwLock<HashMap<Shapes, (Plan, AtomicU64)>>,
    /// Advances on every plan lookup; orders plans by recency.
    tick: AtomicU64,
}

fn specs(
    model: &InferenceModel,
    outlets: TractResult<&[OutletId]>,
) -> Result<Vec<TensorSpec>, NnError> {
    let outlets = outlets.map_err(|e| NnError::InvalidEncoding(e.to_string()))?;
    outlets
        .iter()
        .map(|outlet| {
            // The ONNX value name (what Python's ONNX Runtime reports), else
            // the node's.
            let name = model
                .outlet_label(*outlet)
                .map(str::to_string)
                .or_else(|| model.nodes().get(outlet.node).map(|n| n.name.clone()))
                .unwrap_or_default();
            let fact = model
                .outlet_fact(*outlet)
                .map_err(|e| NnError::InvalidEncoding(e.to_string()))?;
            let dtype = fact.datum_type.concretize().and_then(from_datum);
            let dims = fact
                .shape
                .dims()
                .map(|d| {
                    d.concretize()
                        .and_then(|d| d.to_i64().ok())
                        .and_then(|d| usize::try_from(d).ok())
                })
                .collect();
            Ok(TensorSpec { name, dtype, dims })
        })
        .collect()
}

fn from_datum(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F16 => DType::F16,
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::U8 => DType::U8,
        DatumType::I32 => DType::I32,
        DatumType::I64 => DType::I64,
        _ => return None,
    })
}

fn to_datum(dt: DType) -> Option<DatumType> {
    Some(match dt {
        DType::F16 => DatumType::F16,
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::U8 => DatumType::U8,
        DType::I32 => DatumType::I32,
        DType::I64 => DatumType::I64,
        DType::Bf16 => return None,
    })
}

/// Builds a tract tensor from validated little-endian bytes.
fn to_tract(t: &Tensor) -> Result<tract_onnx::prelude::Tensor, NnError> {
    fn typed<T: Datum + Copy, const N: usize>(
        t: &Tensor,
        from: fn([u8; N]) -> T,
    ) -> TractResult<tract_onnx::prelude::Tensor> {
        let values: Vec<T> = t
            .data
            .chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                from(b)
            })
            .collect();
        tract_onnx::prelude::Tensor::from_shape(&t.dims, &values)
    }
    let result = match t.dtype {
        DType::F32 => typed(t, f32::from_le_bytes),
        DType::F64 => typed(t, f64::from_le_bytes),
        DType::I32 => typed(t, i32::from_le_bytes),
        DType::I64 => typed(t, i64::from_le_bytes),
        DType::U8 => typed(t, u8::from_le_bytes),
        DType::F16 => typed(t, |b: [u8; 2]| f16::from_bits(u16::from_le_bytes(b))),
        DType::Bf16 => {
            return Err(NnError::UnsupportedOperation(
                "bf16 tensors are not supported by the tract backend".into(),
            ));
        }
    };
    result.map_err(|e| NnError::InvalidArgument(e.to_string()))
}

fn from_tract(t: &tract_onnx::prelude::Tensor) -> Result<Tensor, NnError> {
    let dtype = from_datum(t.datum_type()).ok_or_else(|| {
        NnError::UnsupportedOperation(format!(
            "the model produced a {:?} tensor, which wasi-nn cannot carry",
            t.datum_type()
        ))
    })?;
    Ok(Tensor {
        dims: t.shape().to_vec(),
        dtype,
        data: t.as_bytes().to_vec(),
    })
}

impl TractModel {
    fn concrete_input_shapes(&self) -> Option<Vec<Vec<usize>>> {
        self.inputs
            .iter()
            .map(|s| {
                if s.dims.is_empty() {
                    None
                } else {
                    s.dims.iter().copied().collect::<Option<Vec<_>>>()
                }
            })
            .collect()
    }

    /// The optimised plan for these input shapes, built on first use. At
    /// most [`MAX_PLANS_PER_MODEL`] are kept; the least recently used goes.
    fn plan(&self, shapes: &[Vec<usize>]) -> Result<Plan, NnError> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some((plan, used)) = self
            .plans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(shapes)
        {
            used.store(tick, Ordering::Relaxed);
            return Ok(plan.clone());
        }
        let mut model = self.model.clone();
        for (ix, (shape, spec)) in shapes.iter().zip(&self.inputs).enumerate() {
            let dt = spec.dtype.and_then(to_datum).unwrap_or(DatumType::F32);
            model = model
                .with_input_fact(ix, InferenceFact::dt_shape(dt, shape.clone()))
                .map_err(|e| NnError::InvalidArgument(format!("input {ix}: {e}")))?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                NnError::InvalidArgument(format!(
                    "the model cannot run on inputs of shapes {shapes:?}: {e}"
                ))
            })?;
        let mut plans = self.plans.write().unwrap_or_else(|p| p.into_inner());
        if plans.len() >= MAX_PLANS_PER_MODEL
            && let Some(oldest) = plans
                .iter()
                .min_by_key(|(_, (_, used))| used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
        {
            plans.remove(&oldest);
        }
        plans.insert(shapes.to_vec(), (plan.clone(), AtomicU64::new(tick)));
        Ok(plan)
    }
}

impl LoadedModel for TractModel {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, NnError> {
        contained("tract", || self.run_plan(inputs, None), NnError::Runtime)
    }

    /// Checks `stop` before every node of the plan.
    fn run_until(&self, inputs: &[Tensor], stop: &super::Stop) -> Result<Vec<Tensor>, NnError> {
        contained(
            "tract",
            || self.run_plan(inputs, Some(stop)),
            NnError::Runtime,
        )
    }
}

impl TractModel {
    fn run_plan(
        &self,
        inputs: &[Tensor],
        stop: Option<&super::Stop>,
    ) -> Result<Vec<Tensor>, NnError> {
        check_inputs(&self.inputs, inputs)?;
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.dims.clone()).collect();
        let plan = self.plan(&shapes)?;
        let values = inputs
            .iter()
            .map(|t| to_tract(t).map(TValue::from))
            .collect::<Result<TVec<_>, _>>()?;
        let outputs = match stop {
            None => plan.run(values),
            Some(stop) => plan.spawn().and_then(|mut state| {
                state.run_plan_with_eval(values, |ctx, op_state, node, inputs| {
                    if stop.stopped() {
                        anyhow::bail!("stopped");
                    }
                    tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs)
                })
            }),
        };
        let outputs = outputs.map_err(|e| {
            if stop.is_some_and(super::Stop::stopped) {
                super::Stop::error()
            } else {
                NnError::Runtime(e.to_string())
            }
        })?;
        outputs.iter().map(|t| from_tract(t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGITS: &[u8] = include_bytes!("../../../functions/classify-digits/model/digits.onnx");
    const HELDOUT: &str = include_str!("../../../functions/classify-digits/model/heldout.json");

    fn digits() -> Arc<dyn LoadedModel> {
        TractBackend.load(DIGITS).expect("digits loads")
    }

    #[test]
    fn a_model_that_panics_tract_is_refused() {
        // The graph's output renamed so that no node produces it: tract's
        // ONNX reader indexes a map with it and panics (found by fuzzing
        // model uploads, host/tests/fuzz.rs).
        let name = b"probabilities";
        let at = DIGITS
            .windows(name.len())
            .rposition(|w| w == name)
            .expect("the graph output's name");
        let mut model = DIGITS.to_vec();
        model[at + name.len() - 1] = b'z';
        let Err(err) = TractBackend.load(&model) else {
            panic!("a model tract cannot read was accepted");
        };
        assert!(matches!(err, NnError::InvalidEncoding(_)), "{err}");
        assert!(err.to_string().contains("tract failed on it"), "{err}");
    }

    #[test]
    fn models_referring_to_external_data_are_refused() {
        // tract 0.23 refuses external data without a model directory
        // itself; the check refuses it first, as on every backend, whether
        // or not the file exists, naming no path.
        let model = crate::nn::onnx::build::add_model(2, Some(("glia-data/admin.key", 0)));
        let err = TractBackend.load(&model).map(|_| ()).expect_err("refused");
        assert!(matches!(err, NnError::InvalidEncoding(_)), "{err:?}");
        assert!(err.to_string().contains("external tensor data"), "{err}");
        assert!(!err.to_string().contains("glia-data"), "{err}");
        let inline = TractBackend
            .load(&crate::nn::onnx::build::add_model(2, None))
            .expect("self-contained");
        let out = inline
            .run(&[Tensor::from_f32(vec![2], &[3.0, 4.0])])
            .expect("runs");
        assert_eq!(out[0].to_f32().expect("f32"), vec![3.0, 4.0]);
    }

    #[test]
    fn a_run_stops_midway_when_asked() {
        crate::nn::assert_a_run_stops_midway(&TractBackend, 400);
    }

    #[test]
    fn digits_io_is_described() {
        let m = digits();
        assert_eq!(m.inputs().len(), 1);
        assert_eq!(m.inputs()[0].name, "pixels");
        assert_eq!(m.inputs()[0].dtype, Some(DType::F32));
        assert_eq!(m.inputs()[0].dims, vec![None, Some(64)]);
        assert_eq!(m.outputs()[0].name, "probabilities");
    }

    #[test]
    fn digits_match_onnx_runtime_on_every_heldout_sample() {
        let m = digits();
        let heldout: serde_json::Value = serde_json::from_str(HELDOUT).expect("json");
        let samples = heldout["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), 360);
        for (i, s) in samples.iter().enumerate() {
            let pixels: Vec<f32> = s["pixels"]
                .as_array()
                .expect("pixels")
                .iter()
                .map(|p| p.as_f64().expect("number") as f32)
                .collect();
            let out = m
                .run(&[Tensor::from_f32(vec![1, 64], &pixels)])
                .expect("runs");
            let probs = out[0].to_f32().expect("f32 output");
            assert_eq!(out[0].dims, vec![1, 10]);
            let label = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(ix, _)| ix)
                .expect("ten classes");
            assert_eq!(
                label as u64,
                s["expected"].as_u64().expect("expected"),
                "sample {i}"
            );
            for (p, want) in probs
                .iter()
                .zip(s["probabilities"].as_array().expect("probs"))
            {
                let want = want.as_f64().expect("number") as f32;
                assert!((p - want).abs() < 1e-4, "sample {i}: {p} vs {want}");
            }
        }
    }

    #[test]
    fn plans_are_kept_least_recently_used_first() {
        let model = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_read(&mut &*DIGITS)
            .expect("parses");
        let inputs = specs(&model, model.input_outlets()).expect("inputs");
        let outputs = specs(&model, model.output_outlets()).expect("outputs");
        let t = TractModel {
            model,
            inputs,
            outputs,
            plans: RwLock::new(HashMap::new()),
            tick: AtomicU64::new(0),
        };
        t.plan(&[vec![1, 64]]).expect("plan");
        for batch in 2..=MAX_PLANS_PER_MODEL + 4 {
            t.plan(&[vec![1, 64]]).expect("plan");
            t.plan(&[vec![batch, 64]]).expect("plan");
        }
        let plans = t.plans.read().expect("lock");
        assert_eq!(plans.len(), MAX_PLANS_PER_MODEL);
        assert!(plans.contains_key(&vec![vec![1, 64]]), "the hot plan stays");
        assert!(!plans.contains_key(&vec![vec![2, 64]]), "the oldest went");
    }

    #[test]
    fn batches_use_their_own_plan() {
        let m = digits();
        let batch = Tensor::from_f32(vec![3, 64], &[0.0; 3 * 64]);
        let out = m.run(&[batch]).expect("batch of three");
        assert_eq!(out[0].dims, vec![3, 10]);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let m = digits();
        let wrong_type = Tensor {
            dims: vec![1, 64],
            dtype: DType::I64,
            data: vec![0; 64 * 8],
        };
        assert!(matches!(
            m.run(&[wrong_type]),
            Err(NnError::InvalidArgument(_))
        ));
        let wrong_dims = Tensor::from_f32(vec![1, 63], &[0.0; 63]);
        let err = m.run(&[wrong_dims]).expect_err("wrong dims");
        assert!(err.to_string().contains("[?, 64]"), "{err}");
        assert!(matches!(m.run(&[]), Err(NnError::InvalidArgument(_))));
        let short = Tensor {
            dims: vec![1, 64],
            dtype: DType::F32,
            data: vec![0; 10],
        };
        assert!(short.validate(1 << 20).is_err());
        assert!(
            Tensor::from_f32(vec![1 << 20, 64], &[])
                .validate(1 << 20)
                .is_err()
        );
    }

    #[test]
    fn corrupt_models_are_refused() {
        for bytes in [&b"not a model"[..], &DIGITS[..DIGITS.len() / 2], &[]] {
            assert!(matches!(
                TractBackend.load(bytes).err(),
                Some(NnError::InvalidEncoding(_))
            ));
        }
    }

    #[test]
    fn one_model_runs_concurrently() {
        let m = digits();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let m = m.clone();
                s.spawn(move || {
                    for _ in 0..50 {
                        let out = m
                            .run(&[Tensor::from_f32(vec![1, 64], &[8.0; 64])])
                            .expect("runs");
                        assert_eq!(out[0].dims, vec![1, 10]);
                    }
                });
            }
        });
    }
}

//! ONNX Runtime through the `ort` crate, CPU or CUDA execution provider.

use super::{ort_saved, Device, Runtime, RuntimeOptions, Value};
use attrpatch_onnx::error::{Error, Result};
use ndarray::ArrayD;
use ort::ep::ExecutionProvider;
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{DynValue, Tensor};
use std::collections::HashMap;

/// An ONNX Runtime session, on the CPU or the CUDA execution provider.
pub struct OrtRuntime {
    session: Session,
    provider: String,
    lib: std::path::PathBuf,
}

/// The graph optimizers that would undo weights held at the file's precision
/// (the list is split on ';').
const KEEP_PRECISION_DISABLED: &str =
    "ConstantFolding;CommonSubexpressionElimination;FuseFp16InitializerToFp32NodeTransformer";

fn rt_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("onnxruntime: {what}: {e}"))
}

impl OrtRuntime {
    /// Loads the ONNX Runtime library and creates the session for a prepared model, on the execution provider
    /// `opts.device` names (auto: CUDA when available, else the CPU).
    pub fn new(model: super::ModelForRuntime, opts: &RuntimeOptions) -> Result<Self> {
        let (lib, env) = super::ort_lib::init(opts.ort_lib.as_deref())?;
        let model_bytes = model.bytes.as_slice();
        // Absolute: ONNX Runtime resolves the weights' locations against it.
        let external_dir = match &model.external_dir {
            Some(d) => Some(d.canonicalize().map_err(|e| Error::io(d, e))?),
            None => None,
        };
        // The session uses these tensors in place; `Arc`s keep them alive as long as it.
        let mut weights = vec![];
        for (name, arr) in model.weights {
            let t = Tensor::from_array(arr).map_err(|e| rt_err(&format!("weight '{name}'"), e))?;
            weights.push((name, std::sync::Arc::new(t.into_dyn())));
        }
        let keeps_file_precision = model.keeps_file_precision;
        // `saved`: load ONNX Runtime's own optimised graph (which holds every weight) as it is.
        let builder_for = |saved: bool| -> Result<ort::session::builder::SessionBuilder> {
            let mut b = Session::builder(&env).map_err(|e| rt_err("session options", e))?;
            let weights = if saved { &[][..] } else { &weights[..] };
            for (name, w) in weights {
                b = b.with_external_initializer(name, w.clone()).map_err(|e| rt_err(&format!("weight '{name}'"), e))?;
            }
            let level = if saved { GraphOptimizationLevel::Disable } else { GraphOptimizationLevel::Level3 };
            b = b.with_optimization_level(level).map_err(|e| rt_err("optimization level", e))?;
            // Prepacking copies each weight once per consuming node (the clean copy, the
            // corrupted copy and the backward all consume it), while the weights handed over
            // above stay alive as well: on GPT-2 small it cost 3x the session time and 1.5x the
            // memory, for no faster run (MatMul/Gemm pack their operand per call anyway).
            b = b.with_prepacking(false).map_err(|e| rt_err("session.disable_prepacking", e))?;
            if keeps_file_precision && !saved {
                // Each weight read at the file's precision is decompressed by a node of its
                // own at each use (`onnx::file_precision`): constant folding would turn those
                // into resident float32 initializers, CSE would merge the forward's and the
                // backward's into one tensor alive between them, and the float16 fusion
                // would fold the Casts into float32 weights (2-8x the file in memory).
                b = b
                    .with_config_entry("optimization.disable_specified_optimizers", KEEP_PRECISION_DISABLED)
                    .map_err(|e| rt_err("optimization.disable_specified_optimizers", e))?;
            }
            if let (Some(dir), false) = (&external_dir, saved) {
                b = b
                    .with_config_entry("session.model_external_initializers_file_folder_path", dir.to_string_lossy())
                    .map_err(|e| rt_err("the folder of the model's external data", e))?;
            }
            if opts.threads > 0 {
                b = b.with_intra_threads(opts.threads).map_err(|e| rt_err("threads", e))?;
            }
            Ok(b)
        };
        let builder = || builder_for(false);
        let cuda_id = match opts.device {
            Device::Cpu => None,
            Device::Cuda(id) => Some(id),
            Device::Auto => ort::ep::CUDA::is_available().unwrap_or(false).then_some(0),
        };
        if let Some(id) = cuda_id {
            let ep = ort::ep::CUDA::default().with_device_id(id).build().error_on_failure();
            let attempt =
                builder()?.with_execution_providers([ep]).map_err(|e| rt_err("CUDA execution provider", e)).and_then(
                    |mut b| b.commit_from_memory(model_bytes).map_err(|e| rt_err("loading the model on CUDA", e)),
                );
            match attempt {
                Ok(session) => {
                    return Ok(OrtRuntime { session, provider: format!("CUDA (device {id})"), lib: lib.into() })
                }
                Err(e) if opts.device == Device::Auto => {
                    eprintln!("note: CUDA is not usable ({e}); running on the CPU");
                }
                Err(e) => return Err(cuda_help(e, lib)),
            }
        }
        let saved = model.saved_dir.as_deref().and_then(|entry| ort_saved::folder(entry, lib));
        if let Some(path) = saved.as_deref().and_then(ort_saved::complete) {
            match builder_for(true).and_then(|mut b| b.commit_from_file(&path).map_err(|e| rt_err("loading", e))) {
                Ok(session) => {
                    let provider = "CPU, its optimised graph from the cache".into();
                    return Ok(OrtRuntime { session, provider, lib: lib.into() });
                }
                Err(e) => eprintln!("note: {} did not load ({e}); optimising the graph again", path.display()),
            }
        }
        let clock = std::time::Instant::now();
        let mut b = builder()?;
        // The first session on a cache entry saves its optimised graph for the next.
        let staging = saved.as_deref().map(ort_saved::staging);
        if let Some(s) = &staging {
            b = save_optimised(b, s)?;
        }
        let session = b.commit_from_memory(model_bytes).map_err(|e| rt_err("loading the model", e))?;
        warn_if_slow_planner(lib, clock.elapsed().as_secs_f64());
        if let (Some(s), Some(dir)) = (&staging, &saved) {
            if let Err(e) = ort_saved::finish(s, dir) {
                let _ = std::fs::remove_dir_all(s);
                eprintln!("note: ONNX Runtime's optimised graph was not kept in {}: {e}", dir.display());
            }
        }
        Ok(OrtRuntime { session, provider: "CPU".into(), lib: lib.into() })
    }
}

/// Has the session save its optimised graph in `staging`, weights in a data file beside it.
fn save_optimised(
    b: ort::session::builder::SessionBuilder,
    staging: &std::path::Path,
) -> Result<ort::session::builder::SessionBuilder> {
    if staging.exists() {
        std::fs::remove_dir_all(staging).map_err(|e| Error::io(staging, e))?;
    }
    std::fs::create_dir_all(staging).map_err(|e| Error::io(staging, e))?;
    let saving = |e| rt_err("saving the optimised graph", e);
    b.with_optimized_model_path(staging.join(ort_saved::GRAPH))
        .map_err(saving)?
        .with_config_entry("session.optimized_model_external_initializers_file_name", ort_saved::DATA)
        .map_err(saving)?
        .with_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        .map_err(saving)
}

/// Session creation this slow (seconds) with an ONNX Runtime older than 1.32 gets a warning.
const SLOW_SESSION_S: f64 = 5.0;

/// ONNX Runtime 1.31's memory planner is far slower on large graphs than 1.32's:
/// on the attribution graph of a GPT-2-medium-sized model (8,100 nodes) it spent
/// 58 s between graph partitioning and saving the initializers, where 1.32 took
/// 0.6 s (session CPU time 11.3 s against 2.3 s). Say so when it shows.
fn warn_if_slow_planner(lib: &std::path::Path, seconds: f64) {
    let Some(v) = super::ort_lib::version_of(lib) else { return };
    if seconds >= SLOW_SESSION_S && (v.0, v.1) < (1, 32) {
        eprintln!(
            "note: the ONNX Runtime session took {seconds:.1} s; ONNX Runtime {}.{}.{} (from {}) plans memory for large \
             graphs slowly, 1.32 creates these sessions 2.5-5x faster: `ORT_VERSION=1.32.0 tools/fetch-ort.sh`, \
             or point --ort-lib at a newer library",
            v.0,
            v.1,
            v.2,
            lib.display()
        );
    }
}

/// Says what to install when CUDA was asked for and cannot be had.
fn cuda_help(e: Error, lib: &std::path::Path) -> Error {
    let has_provider = lib.parent().is_some_and(|d| d.join("libonnxruntime_providers_cuda.so").is_file());
    let hint = if has_provider {
        "the CUDA provider library is there, so CUDA itself (driver, libcudart/libcublas/libcudnn) is missing or \
         does not match: onnxruntime-gpu >= 1.27 needs CUDA 13 and cuDNN 9, older versions CUDA 12"
    } else {
        "this ONNX Runtime has no CUDA provider (libonnxruntime_providers_cuda.so not found beside it); \
         install the PyPI package onnxruntime-gpu and point the ONNX Runtime library path at its onnxruntime/capi folder"
    };
    Error::Runtime(format!("the device cuda: {e}\n  library: {}\n  {hint}", lib.display()))
}

impl Runtime for OrtRuntime {
    fn describe(&self) -> String {
        format!("onnxruntime ({}) from {}", self.provider, self.lib.display())
    }

    fn run(&mut self, inputs: Vec<(String, Value)>) -> Result<HashMap<String, ArrayD<f32>>> {
        let mut feed: Vec<(String, DynValue)> = vec![];
        for (name, v) in inputs {
            let dv = match v {
                Value::F32(a) => Tensor::from_array(a).map(|t| t.into_dyn()),
                Value::I64(a) => Tensor::from_array(a).map(|t| t.into_dyn()),
            }
            .map_err(|e| rt_err(&format!("input '{name}'"), e))?;
            feed.push((name, dv));
        }
        let outputs = self.session.run(feed).map_err(|e| rt_err("run", e))?;
        let mut res = HashMap::new();
        for (name, value) in outputs.iter() {
            let arr = value.try_extract_array::<f32>().map_err(|e| rt_err(&format!("output '{name}'"), e))?.to_owned();
            res.insert(name.to_string(), arr);
        }
        Ok(res)
    }
}

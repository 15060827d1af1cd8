//! Between Python's plain values and the facade's types: options, prompt pairs, results.

use crate::errors::to_py;
use attrpatch::{
    AttributorBuilder, AugmentedModel, Comparison, Device, Error, HookKind, JobResult, Metric, ModelSource, Pairs,
    RuntimeKind, RuntimeOptions, TokenPairs, TokenizerSource, Value,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::{json, Value as Json};

/// An error of this module's own making (a bug, not the user's input).
pub fn internal(e: &dyn std::fmt::Display) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!("attrpatch._attrpatch: {e}"))
}

fn input_error(py: Python<'_>, msg: String) -> PyErr {
    to_py(py, Error::Input(msg))
}

/// `d[key]` converted, None when missing or None.
pub fn get<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => Ok(Some(v.extract().map_err(Into::into)?)),
        _ => Ok(None),
    }
}

/// The settings of an Attributor (and, metric to heads, of a rewrite).
pub struct Options {
    pub metric: Metric,
    pub hooks: HookKind,
    pub heads: Option<usize>,
    tokenizer: Option<TokenizerSource>,
    bos: bool,
    runtime: RuntimeOptions,
    batch_size: Option<usize>,
    max_memory: Option<u64>,
    per_pair: bool,
}

/// The metric from its CLI spelling.
pub fn metric(py: Python<'_>, s: &str) -> PyResult<Metric> {
    serde_json::from_value(Json::String(s.into()))
        .map_err(|_| input_error(py, format!("unknown metric '{s}': expected logit-diff, logprob-diff, prob or kl")))
}

fn runtime_kind(py: Python<'_>, s: &str) -> PyResult<RuntimeKind> {
    match s {
        "ort" => Ok(RuntimeKind::Ort),
        "tract" => Ok(RuntimeKind::Tract),
        _ => Err(input_error(py, format!("unknown runtime '{s}': expected ort (ONNX Runtime) or tract"))),
    }
}

/// Options from the dict the Python layer built (every key present, values checked for type).
pub fn options(d: &Bound<'_, PyDict>) -> PyResult<Options> {
    let py = d.py();
    let text =
        |k: &str| -> PyResult<String> { get::<String>(d, k)?.ok_or_else(|| internal(&format!("no option {k}"))) };
    let hooks = text("hook")?.parse::<HookKind>().map_err(|e| to_py(py, e))?;
    let device = match get::<String>(d, "device")? {
        Some(s) => s.parse::<Device>().map_err(|e| to_py(py, e))?,
        None => Device::Auto,
    };
    let tokenizer = match d.get_item("tokenizer")? {
        Some(t) if !t.is_none() => Some(match t.extract::<String>() {
            Ok(path) => TokenizerSource::Path(path.into()),
            Err(_) => TokenizerSource::Bytes(t.extract::<Vec<u8>>()?),
        }),
        _ => None,
    };
    let kind = match get::<String>(d, "runtime")? {
        Some(s) => runtime_kind(py, &s)?,
        None => RuntimeKind::Ort,
    };
    Ok(Options {
        metric: metric(py, &text("metric")?)?,
        hooks,
        heads: get(d, "heads")?,
        tokenizer,
        bos: get(d, "bos")?.unwrap_or(false),
        runtime: RuntimeOptions {
            kind,
            device,
            ort_lib: get::<String>(d, "ort_lib")?.map(Into::into),
            threads: get(d, "threads")?.unwrap_or(0),
        },
        batch_size: get(d, "batch_size")?,
        max_memory: get(d, "max_memory")?,
        per_pair: get(d, "per_pair")?.unwrap_or(false),
    })
}

impl Options {
    /// The facade's builder for `model` with these settings.
    pub fn builder(self, model: ModelSource) -> AttributorBuilder {
        let mut b = attrpatch::Attributor::builder(model)
            .metric(self.metric)
            .hooks(self.hooks)
            .runtime(self.runtime)
            .bos(self.bos)
            .per_pair(self.per_pair);
        if let Some(t) = self.tokenizer {
            b = b.tokenizer(t);
        }
        if let Some(h) = self.heads {
            b = b.heads(h);
        }
        if let Some(n) = self.batch_size {
            b = b.batch_size(n);
        }
        if let Some(m) = self.max_memory {
            b = b.max_memory(m);
        }
        b
    }
}

/// Token pairs as Python passes them: (clean, corrupted, correct, incorrect).
pub type TokenLists = (Vec<Vec<i64>>, Vec<Vec<i64>>, Vec<i64>, Vec<i64>);

/// Token pairs from (clean, corrupted, correct, incorrect) lists.
pub fn token_pairs(value: &Bound<'_, PyAny>) -> PyResult<TokenPairs> {
    let (clean, corrupted, correct, incorrect): TokenLists = value.extract()?;
    Ok(TokenPairs { clean, corrupted, correct, incorrect })
}

/// A text pair with where it was read: (clean, corrupted, correct, incorrect, origin).
pub type TextAt = (String, String, String, String, String);

/// The pairs of one job, from the Python layer's (kind, value).
pub fn pairs(kind: &str, value: &Bound<'_, PyAny>) -> PyResult<Pairs> {
    let py = value.py();
    Ok(match kind {
        "default" => Pairs::Tutorial,
        "file" => {
            let path: String = value.extract()?;
            Pairs::Prompts(attrpatch::read_pairs(path.as_ref()).map_err(|e| to_py(py, e))?)
        }
        "texts" => {
            let texts: Vec<(String, String, String, String)> = value.extract()?;
            Pairs::Prompts(texts.iter().map(|(a, b, c, d)| attrpatch::pair(a, b, c, d)).collect())
        }
        // Texts with where each pair was read ("pairs.jsonl:3"), which its messages name, as a
        // job on the file itself does (attrpatch.ray runs a file's pairs in blocks).
        "texts_at" => {
            let texts: Vec<TextAt> = value.extract()?;
            Pairs::Prompts(
                texts
                    .into_iter()
                    .map(|(a, b, c, d, origin)| attrpatch::PromptPair {
                        origin: Some(origin),
                        ..attrpatch::pair(&a, &b, &c, &d)
                    })
                    .collect(),
            )
        }
        "tokens" => Pairs::Tokens(token_pairs(value)?),
        _ => return Err(internal(&format!("unknown kind of pairs '{kind}'"))),
    })
}

/// The hook choice as the CLI spells it.
pub fn hook_spelling(h: &HookKind) -> String {
    match h {
        HookKind::AttnOut => "attn".into(),
        HookKind::Resid => "resid".into(),
        HookKind::Mlp => "mlp".into(),
        HookKind::Tensors(pattern) => pattern.clone(),
    }
}

/// A job's result as the dict `attrpatch.Result` is built from.
pub fn result_json(r: &JobResult) -> Json {
    let m = &r.manifest;
    let (heads, positions) = (r.heads(), r.positions());
    let per_pair = |f: fn(&attrpatch::PairGrid) -> &Vec<Vec<f64>>| -> Json {
        if r.per_pair.is_empty() {
            Json::Null
        } else {
            r.per_pair.iter().map(|p| f(&p.grid).clone()).collect::<Vec<_>>().into()
        }
    };
    json!({
        "method": m.method.label(),
        "metric": m.metric,
        "hook": hook_spelling(&m.hooks_kind),
        "model": m.model,
        "runtime": m.runtime,
        "heads": heads.values,
        "head_labels": heads.cols,
        "positions": positions.values,
        "position_labels": positions.cols,
        "layer_labels": heads.rows,
        "hooks": m.hooks,
        "token_labels": r.token_labels(),
        "clean_metric": r.clean_metric,
        "corrupted_metric": r.corrupted_metric,
        "pair_metrics": r.pair_metrics.iter().map(|&(c, k)| vec![c, k]).collect::<Vec<_>>(),
        "per_pair_heads": per_pair(|g| &g.heads),
        "per_pair_positions": per_pair(|g| &g.positions),
        "prompts": m.prompts,
        "warnings": r.baselines.warnings,
        "clean_accuracy": r.baselines.clean_accuracy,
        "timings": r.seconds,
        "runtime_calls": r.runtime_calls,
    })
}

/// An edge job's result: edges.json's fields (the `EdgeScores`), with the baselines, each
/// edge's unnormalised sum, the head attributions (EAP), timings and runtime.
pub fn edges_json(r: &attrpatch::eap::EdgeRun) -> PyResult<Json> {
    let mut out = serde_json::to_value(&r.scores).map_err(|e| internal(&e))?;
    let extra = json!({
        "unnormalised": r.unnormalised,
        "head_attribution": r.head_attribution,
        "clean_metric": r.clean_metric,
        "corrupted_metric": r.corrupted_metric,
        "pair_metrics": r.pair_metrics.iter().map(|&(c, k)| vec![c, k]).collect::<Vec<_>>(),
        "warnings": r.baselines.warnings,
        "clean_accuracy": r.baselines.clean_accuracy,
        "timings": r.seconds,
        "runtime_calls": r.runtime_calls,
        "runtime": r.runtime,
    });
    if let (Json::Object(o), Json::Object(e)) = (&mut out, extra) {
        o.extend(e);
    }
    Ok(out)
}

/// A comparison as {"exact", "attribution", "ig", "stats"}.
pub fn comparison_json(c: &Comparison) -> Json {
    let mut out = json!({ "exact": result_json(&c.exact), "ig": Json::Null, "stats": {} });
    for e in &c.estimates {
        out[e.key] = result_json(&e.result);
        out["stats"][e.key] = json!({ "heads": e.heads, "positions": e.positions });
    }
    out
}

/// The description of an augmented model: metric, hooks, heads, inputs and outputs.
pub fn augmented_json(a: &AugmentedModel, hook: &HookKind) -> Json {
    json!({
        "metric": a.metric(),
        "hook": hook_spelling(hook),
        "heads": a.heads(),
        "vocab": a.vocab(),
        "hooks": a.hooks(),
        "inputs": a.inputs(),
        "outputs": a.outputs(),
    })
}

/// A feed as (dtype, shape, little-endian bytes in C order).
pub fn value_bytes(v: &Value) -> (&'static str, Vec<usize>, Vec<u8>) {
    match v {
        Value::F32(a) => ("float32", a.shape().to_vec(), a.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Value::I64(a) => ("int64", a.shape().to_vec(), a.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

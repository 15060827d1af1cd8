//! attrpatch._attrpatch: the native half of the Python package, over attrpatch's facade only.
//!
//! The Python layer (python/attrpatch/) normalises arguments into plain values (str paths,
//! bytes, lists of str and int, dicts of options); this module turns them into the facade's
//! types, runs the job with the GIL released, and hands results back as JSON text (grids are a
//! few hundred numbers: JSON is cheap here and keeps the boundary to strings and bytes).

mod convert;
mod errors;

use attrpatch::{CompareOptions, Estimator, RewriteOptions};
use convert::pairs;
use errors::to_py;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// What `Attributor.__init__` and `rewrite` read the model from: a path or serialised bytes.
#[derive(FromPyObject)]
enum Model {
    Path(String),
    Bytes(Vec<u8>),
}

impl From<Model> for attrpatch::ModelSource {
    fn from(m: Model) -> Self {
        match m {
            Model::Path(p) => attrpatch::ModelSource::Path(p.into()),
            Model::Bytes(b) => attrpatch::ModelSource::Bytes(b),
        }
    }
}

/// Lets a value cross `Python::detach`, which asks for `Send` because it cannot tell that the
/// closure runs on the calling thread. The facade's `Attributor` holds a `Box<dyn Runtime>`
/// without a `Send` bound; it never leaves this thread: the closure runs here, and the pyclass is
/// `unsendable`, so another thread cannot reach it.
struct OnThisThread<T>(T);
// SAFETY: see above; `detach` runs the closure synchronously on the current thread.
unsafe impl<T> Send for OnThisThread<T> {}

/// Runs `f` with the GIL released (other Python threads run meanwhile).
fn without_gil<T, F: FnOnce() -> T>(py: Python<'_>, f: F) -> T {
    let f = OnThisThread(f);
    py.detach(move || {
        let f = f;
        OnThisThread((f.0)())
    })
    .0
}

/// A model rewritten once and kept with its runtime session (`attrpatch.Attributor`).
#[pyclass(unsendable, module = "attrpatch._attrpatch")]
struct Attributor {
    inner: attrpatch::Attributor,
    jobs: usize,
}

#[pymethods]
impl Attributor {
    #[new]
    fn new(py: Python<'_>, model: Model, options: &Bound<'_, PyDict>) -> PyResult<Self> {
        let opts = convert::options(options)?;
        if let Model::Path(p) = &model {
            // A missing model is named as such, not as the tokenizer.json missing beside it.
            std::fs::metadata(p).map_err(|e| to_py(py, attrpatch::Error::io(p, e)))?;
        }
        let builder = opts.builder(model.into());
        let inner = without_gil(py, move || builder.build()).map_err(|e| to_py(py, e))?;
        Ok(Attributor { inner, jobs: 0 })
    }

    /// Attribution (or integrated gradients with `ig_steps`): the result as JSON.
    fn run(
        &mut self,
        py: Python<'_>,
        kind: &str,
        value: &Bound<'_, PyAny>,
        job: &Bound<'_, PyDict>,
    ) -> PyResult<String> {
        let p = pairs(kind, value)?;
        let ig: Option<usize> = convert::get(job, "ig_steps")?;
        let inner = &mut self.inner;
        let r = without_gil(py, move || match ig {
            Some(steps) => inner.integrated_gradients(&p, steps),
            None => inner.attribute(&p),
        })
        .map_err(|e| to_py(py, e))?;
        self.jobs += 1;
        Ok(convert::result_json(&r).to_string())
    }

    /// Exact activation patching: the result as JSON.
    fn patch(
        &mut self,
        py: Python<'_>,
        kind: &str,
        value: &Bound<'_, PyAny>,
        job: &Bound<'_, PyDict>,
    ) -> PyResult<String> {
        let p = pairs(kind, value)?;
        let positions: bool = convert::get(job, "positions")?.unwrap_or(false);
        let rows: Option<usize> = convert::get(job, "rows_per_call")?;
        let inner = &mut self.inner;
        let r = without_gil(py, move || inner.patching(&p, Estimator::Exact { positions }, rows))
            .map_err(|e| to_py(py, e))?;
        self.jobs += 1;
        Ok(convert::result_json(&r).to_string())
    }

    /// Every edge's score (EAP; EAP-IG with `ig_steps` > 1): the result as JSON.
    fn edges(
        &mut self,
        py: Python<'_>,
        kind: &str,
        value: &Bound<'_, PyAny>,
        job: &Bound<'_, PyDict>,
    ) -> PyResult<String> {
        let p = pairs(kind, value)?;
        let m = edge_method(job).map_err(|e| to_py(py, e))?;
        let inner = &mut self.inner;
        let r = without_gil(py, move || inner.edges_method(&p, &m)).map_err(|e| to_py(py, e))?;
        self.jobs += 1;
        Ok(convert::edges_json(&r)?.to_string())
    }

    /// Exact patching beside attribution (and IG): the comparison as JSON.
    fn compare(
        &mut self,
        py: Python<'_>,
        kind: &str,
        value: &Bound<'_, PyAny>,
        job: &Bound<'_, PyDict>,
    ) -> PyResult<String> {
        let p = pairs(kind, value)?;
        let c = CompareOptions {
            positions: convert::get(job, "positions")?.unwrap_or(false),
            ig_steps: convert::get(job, "ig_steps")?,
            rows_per_call: convert::get(job, "rows_per_call")?,
            atp_star: convert::get(job, "atp_star")?.unwrap_or(false),
        };
        let inner = &mut self.inner;
        let r = without_gil(py, move || inner.compare(&p, &c)).map_err(|e| to_py(py, e))?;
        self.jobs += 1;
        Ok(convert::comparison_json(&r).to_string())
    }

    /// {"graphs_built": rewrites (and sessions) so far, one per kind of job; "jobs": jobs run}.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("graphs_built", self.inner.graphs_built())?;
        d.set_item("jobs", self.jobs)?;
        Ok(d)
    }
}

/// A rewritten model kept for its feeds (`attrpatch.Augmented` holds one).
#[pyclass(unsendable, module = "attrpatch._attrpatch")]
struct Augmented {
    inner: attrpatch::AugmentedModel,
}

#[pymethods]
impl Augmented {
    /// Every input of one run over token pairs: {name: (dtype, shape, little-endian bytes)},
    /// which the Python layer turns into numpy arrays.
    fn feeds<'py>(&self, py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let tokens = convert::token_pairs(value)?;
        let inner = &self.inner;
        let values = without_gil(py, move || inner.feeds(&tokens)).map_err(|e| to_py(py, e))?;
        let d = PyDict::new(py);
        for (name, v) in values {
            let (dtype, shape, bytes) = convert::value_bytes(&v);
            d.set_item(name, (dtype, shape, PyBytes::new(py, &bytes)))?;
        }
        Ok(d)
    }
}

/// The augmented model: its bytes, its description as JSON, and the kept model for feeds.
#[pyfunction]
fn rewrite<'py>(
    py: Python<'py>,
    model: Model,
    options: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyBytes>, String, Augmented)> {
    let o = convert::options(options)?;
    let ro = RewriteOptions { metric: o.metric, hooks: o.hooks.clone(), heads: o.heads, ..RewriteOptions::default() };
    let hooks = o.hooks;
    let source: attrpatch::ModelSource = model.into();
    let (bytes, description, inner) = without_gil(py, move || -> attrpatch::Result<_> {
        let aug = attrpatch::rewrite(source, &ro)?;
        let bytes = aug.to_bytes()?;
        let description = convert::augmented_json(&aug, &hooks).to_string();
        Ok((bytes, description, aug))
    })
    .map_err(|e| to_py(py, e))?;
    Ok((PyBytes::new(py, &bytes), description, Augmented { inner }))
}

/// What attrpatch sees in a model, as JSON (with the CLI's text under "text").
#[pyfunction]
#[pyo3(signature = (model, hook=None))]
fn inspect(py: Python<'_>, model: Model, hook: Option<String>) -> PyResult<String> {
    let hook = hook.map(|h| h.parse::<attrpatch::HookKind>()).transpose().map_err(|e| to_py(py, e))?;
    let source: attrpatch::ModelSource = model.into();
    let i = without_gil(py, move || attrpatch::inspect(source, hook.as_ref())).map_err(|e| to_py(py, e))?;
    let mut v = serde_json::to_value(&i).map_err(|e| convert::internal(&e))?;
    v["text"] = attrpatch::format_inspection(&i).into();
    Ok(v.to_string())
}

/// Text pairs as token ids with `tokenizer` (a tokenizer.json path or its bytes), checked as a
/// job checks them: (clean, corrupted, correct, incorrect), each prompt unpadded.
#[pyfunction]
#[pyo3(signature = (tokenizer, kind, value, bos=false, metric="logit-diff"))]
fn tokenize(
    py: Python<'_>,
    tokenizer: Model,
    kind: &str,
    value: &Bound<'_, PyAny>,
    bos: bool,
    metric: &str,
) -> PyResult<convert::TokenLists> {
    let texts = match pairs(kind, value)? {
        attrpatch::Pairs::Tokens(_) => return Err(convert::internal(&"tokenize takes text pairs")),
        attrpatch::Pairs::Prompts(p) => p,
        _ => attrpatch::tutorial_pairs(),
    };
    let metric = convert::metric(py, metric)?;
    let source = match tokenizer {
        Model::Path(p) => attrpatch::TokenizerSource::Path(p.into()),
        Model::Bytes(b) => attrpatch::TokenizerSource::Bytes(b),
    };
    let t = without_gil(py, move || attrpatch::Tokenizer::new(source)?.tokenize(&texts, bos, metric))
        .map_err(|e| to_py(py, e))?;
    Ok((t.clean, t.corrupted, t.correct, t.incorrect))
}

/// The pairs of a JSONL file (or JSON array) read as a job reads them, each with where it was
/// read ("FILE:LINE" or "FILE: array element K"): the messages of a bad file are the CLI's.
#[pyfunction]
fn read_pairs(py: Python<'_>, path: String) -> PyResult<Vec<convert::TextAt>> {
    let pairs = without_gil(py, || attrpatch::read_pairs(path.as_ref())).map_err(|e| to_py(py, e))?;
    Ok(pairs
        .into_iter()
        .map(|p| {
            let origin = p.origin.unwrap_or_default();
            (p.clean, p.corrupted, p.correct, p.incorrect, origin)
        })
        .collect())
}

/// The baseline checks of a job over every pair's clean and corrupted metric values (the
/// warnings a job gives, and the share of clean prompts preferring the correct answer), for
/// results combined from parts (attrpatch.ray).
#[pyfunction]
fn baseline_check(
    py: Python<'_>,
    metric: &str,
    clean: Vec<f64>,
    corrupted: Vec<f64>,
) -> PyResult<(Vec<String>, Option<f64>)> {
    let metric = convert::metric(py, metric)?;
    let c = attrpatch::check_baselines(metric, &clean, &corrupted);
    Ok((c.warnings, c.clean_accuracy))
}

/// Every edge of a model of this shape as (from, to), in the order edge scores list them (for
/// scores combined from parts: attrpatch.ray).
#[pyfunction]
fn edge_names(layers: usize, heads: usize, kv_heads: usize, parallel: bool) -> Vec<(String, String)> {
    let t = attrpatch::eap::Topology { layers, heads, kv_heads, parallel };
    t.edges().into_iter().map(|(w, r)| (w.to_string(), r.to_string())).collect()
}

/// Today's name of the reader `name` names in a model of this shape (the old name of a grouped
/// key/value reader, `a1.h0.k`, gives `a1.kv0.k`), or None when the model has no such reader.
#[pyfunction]
fn reader_name(name: &str, layers: usize, heads: usize, kv_heads: usize, parallel: bool) -> Option<String> {
    let t = attrpatch::eap::Topology { layers, heads, kv_heads, parallel };
    t.parse_reader(name).map(|r| r.to_string())
}

/// The edge method of a job dict: "method", "ig_steps", "convention", "ablation"
/// (strings as the command line spells them), resolved as `attrpatch edges` resolves them.
fn edge_method(job: &Bound<'_, PyDict>) -> Result<attrpatch::eap::EdgeMethod, attrpatch::Error> {
    let text = |key: &str| -> Result<Option<String>, attrpatch::Error> {
        convert::get(job, key).map_err(|e| attrpatch::Error::Input(format!("{key}: {e}")))
    };
    let method = text("method")?.map(|m| m.parse()).transpose()?;
    let steps = convert::get(job, "ig_steps").map_err(|e| attrpatch::Error::Input(format!("ig_steps: {e}")))?;
    let (method, ig_steps) = attrpatch::eap::resolve_method(method, steps)?;
    let convention = text("convention")?.map(|c| c.parse()).transpose()?.unwrap_or_default();
    let ablation = text("ablation")?.map(|a| a.parse()).transpose()?.unwrap_or_default();
    Ok(attrpatch::eap::EdgeMethod { method, ig_steps, convention, ablation })
}

/// `edges.json` and `edges.csv` in `dir`, as `attrpatch edges` writes them, from the edge
/// scores as JSON (edges.json's fields: method, ig_steps, metric, layers, ..., edges, nodes).
#[pyfunction]
fn write_edges(py: Python<'_>, dir: String, scores: &str) -> PyResult<()> {
    let mut s: attrpatch::eap::EdgeScores = serde_json::from_str(scores)
        .map_err(|e| to_py(py, attrpatch::Error::Input(format!("edge scores to write: {e}"))))?;
    // Scores read from an older edges.json keep today's reader names in the files written.
    s.upgrade_reader_names();
    without_gil(py, || attrpatch::eap::write_edges(dir.as_ref(), &s)).map_err(|e| to_py(py, e))
}

/// The tutorial's 8 IOI pairs (what `pairs=None` runs) as JSON.
#[pyfunction]
fn default_pairs() -> PyResult<String> {
    let texts = attrpatch::tutorial_pairs();
    serde_json::to_string(&texts).map_err(|e| convert::internal(&e))
}

/// The native module.
#[pymodule]
fn _attrpatch(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Attributor>()?;
    m.add_function(wrap_pyfunction!(rewrite, m)?)?;
    m.add_class::<Augmented>()?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(default_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(tokenize, m)?)?;
    m.add_function(wrap_pyfunction!(read_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(baseline_check, m)?)?;
    m.add_function(wrap_pyfunction!(edge_names, m)?)?;
    m.add_function(wrap_pyfunction!(reader_name, m)?)?;
    m.add_function(wrap_pyfunction!(write_edges, m)?)?;
    Ok(())
}

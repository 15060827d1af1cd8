//! Ground truth beside the estimate: exact activation patching, and
//! integrated gradients along the corrupted-to-clean line, both run as rows
//! of one patching graph (graph.rs), many patches per runtime call.
//!
//! Both give grids in the attribution job's units: per pair, the change of
//! the metric, summed over pairs and divided by N * (CLEAN - CORR) at the end
//! (job::finish), so the three grids are directly comparable.

pub mod cut;
pub mod diagnostic;
pub mod graph;
pub mod plan;
pub mod staged;

use crate::augment::names as aug_names;
use crate::batches::{BatchResult, PairResult};
use crate::grids::PairGrid;
use crate::job::{self, JobGraph, JobOptions, JobResult, Manifest, Method};
use crate::memory::{choose, Budget, Workload};
use crate::prompts::TokenizedPrompts;
use crate::runtime::{self, Runtime, Value};
use attrpatch_onnx::error::{Error, Result};
use graph::{names, PatchGraph, PatchGraphOptions};
use ndarray::{Array1, Array2};
use plan::{Patch, Plan, Row, Unit};
use std::collections::HashMap;
use std::time::Instant;

/// What one row of this estimator costs, for the memory sizing.
pub fn workload(e: Estimator) -> Workload {
    match e {
        Estimator::Exact { .. } => Workload::PatchedForward,
        Estimator::IntegratedGradients { .. } => Workload::ForwardBackward,
    }
}

/// What a patching job computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    /// Exact activation patching of every head at the last position, and of
    /// every position when `positions` (always, for hooks without heads).
    Exact {
        /// Also patch every position (always, for hooks without heads).
        positions: bool,
    },
    /// Integrated gradients along each layer's corrupted-to-clean line.
    IntegratedGradients {
        /// Points of the midpoint rule.
        steps: usize,
    },
}

/// Runs `rows_per_call` rows per runtime call.
pub fn run(opts: &JobOptions, estimator: Estimator, rows_per_call: usize) -> Result<JobResult> {
    run_sized(opts, estimator, Some(rows_per_call))
}

/// Runs `rows_per_call` rows per call, or (None) as many as the memory
/// budget holds (`memory::choose`), printed when the job shows progress.
/// Exact patching on ONNX Runtime runs in layer groups chosen by the cost
/// model (`staged`); the rest on the one patching graph.
pub fn run_sized(opts: &JobOptions, estimator: Estimator, rows_per_call: Option<usize>) -> Result<JobResult> {
    run_grouped(opts, estimator, rows_per_call, Some(&staged::Groups::Auto))
}

/// `run_sized` with the layer grouping of exact patching given: None runs
/// every row on the one patching graph; groups apply to exact patching on
/// ONNX Runtime only (other jobs say so and run on the one graph).
pub fn run_grouped(
    opts: &JobOptions,
    estimator: Estimator,
    rows_per_call: Option<usize>,
    groups: Option<&staged::Groups>,
) -> Result<JobResult> {
    check_counts(estimator, rows_per_call)?;
    let g = graph_options(opts, estimator);
    let mut p = job::prepare(opts, crate::graph_cache::GraphKey::new("patch", &g), |model| graph::build(model, &g))?;
    let Some(groups) = groups.filter(|_| matches!(estimator, Estimator::Exact { .. })) else {
        return run_prepared(opts, estimator, rows_per_call, &mut p, &mut None);
    };
    if opts.runtime.kind != runtime::RuntimeKind::Ort {
        crate::progress::note(
            &opts.progress,
            "exact patching on tract runs every row through all layers (layer groups need ONNX Runtime)",
        );
        return run_prepared(opts, estimator, rows_per_call, &mut p, &mut None);
    }
    run_staged(opts, estimator, rows_per_call, &mut p, groups)
}

/// The plan's rows for the job's pairs, their accumulator, and the rows per
/// call (given, or sized from the memory budget; printed with progress).
fn plan_rows(
    opts: &JobOptions,
    estimator: Estimator,
    plan: Plan,
    rows_per_call: Option<usize>,
    p: &job::Prepared<PatchGraph>,
) -> (Vec<Row>, Accumulator, crate::memory::Sizing) {
    let layers: Vec<usize> = p.graph.hooks.iter().map(|h| h.layer).collect();
    let rows = plan.rows(&layers, p.graph.units(), &p.tokens.lengths);
    let acc = Accumulator::new(&p.graph, plan, p.tokens.clean_ids.len(), p.tokens.seq_len);
    let sizing = choose(rows_per_call, rows.len(), &p.shape, workload(estimator), &Budget::new(opts.max_memory));
    crate::progress::sizing(&opts.progress, &sizing);
    (rows, acc, sizing)
}

/// Exact patching in layer groups (staged.rs).
fn run_staged(
    opts: &JobOptions,
    estimator: Estimator,
    rows_per_call: Option<usize>,
    p: &mut job::Prepared<PatchGraph>,
    groups: &staged::Groups,
) -> Result<JobResult> {
    let Estimator::Exact { positions } = estimator else {
        return Err(Error::Input("layer groups apply to exact patching only".into()));
    };
    let has_heads = p.graph.heads.is_some();
    let plan = Plan::Exact { heads: has_heads, positions: positions || !has_heads };
    let (rows, mut acc, sizing) = plan_rows(opts, estimator, plan, rows_per_call, p);
    let rows_per_call = sizing.per_call;
    let clock = Instant::now();
    let (stats, describe) = staged::run_rows(opts, p, &rows, rows_per_call, groups, &mut acc)?;
    // Sessions are made as the groups first run: count them as session time, not run time.
    p.seconds.session = stats.session_seconds;
    p.seconds.run = clock.elapsed().as_secs_f64() - stats.session_seconds;

    let pairs = acc.finish()?;
    let mut manifest = Manifest::new(opts, p, Method::ExactPatching, rows_per_call);
    manifest.n_batches = 1;
    manifest.memory = Some(sizing);
    manifest.runtime = describe;
    let batch = BatchResult::new(0, manifest.batch_key(0), pairs, opts.per_prompt)?;
    let mut r = job::finish(manifest, &[batch])?;
    r.runtime_calls = stats.calls;
    r.seconds = p.seconds.clone();
    Ok(r)
}

/// Refuses zero rows per call and zero IG steps (before any slow work).
pub fn check_counts(estimator: Estimator, rows_per_call: Option<usize>) -> Result<()> {
    if rows_per_call == Some(0) {
        return Err(Error::Input("rows per call must be at least 1".into()));
    }
    if let Estimator::IntegratedGradients { steps: 0 } = estimator {
        return Err(Error::Input("integrated gradients need at least 1 step".into()));
    }
    Ok(())
}

/// The patching graph an estimator runs on (IG differentiates its rows).
pub fn graph_options(opts: &JobOptions, estimator: Estimator) -> PatchGraphOptions {
    let gradients = matches!(estimator, Estimator::IntegratedGradients { .. });
    PatchGraphOptions { metric: opts.metric, hooks: opts.hooks.clone(), heads: opts.heads, gradients }
}

/// Runs a prepared patching job; `session` is the runtime session on its
/// graph, made here when None and kept for the next call (the facade's
/// `Attributor` reuses it).
pub fn run_prepared(
    opts: &JobOptions,
    estimator: Estimator,
    rows_per_call: Option<usize>,
    p: &mut job::Prepared<PatchGraph>,
    session: &mut Option<Box<dyn Runtime>>,
) -> Result<JobResult> {
    check_counts(estimator, rows_per_call)?;
    if session.is_none() {
        crate::progress::stage(&opts.progress, "creating the runtime session");
        *session = Some(p.session(&opts.runtime)?);
    }
    let rt: &mut dyn Runtime = session.as_deref_mut().expect("made above");

    let has_heads = p.graph.heads.is_some();
    let (plan, method) = match estimator {
        Estimator::Exact { positions } => {
            (Plan::Exact { heads: has_heads, positions: positions || !has_heads }, Method::ExactPatching)
        }
        Estimator::IntegratedGradients { steps } => {
            (Plan::IntegratedGradients { steps }, Method::IntegratedGradients { steps })
        }
    };
    // A call feeds the clean prompts of the pairs its rows use; rows are in pair order.
    let (rows, mut acc, sizing) = plan_rows(opts, estimator, plan, rows_per_call, p);
    let rows_per_call = sizing.per_call;
    let calls = run_rows(opts, rt, p, &rows, rows_per_call, &mut acc, &[])?;

    let pairs = acc.finish()?;
    // All rows form one "batch" of the whole prompt set, in rows_per_call chunks.
    let mut manifest = Manifest::new(opts, p, method, rows_per_call);
    manifest.n_batches = 1;
    manifest.memory = Some(sizing);
    manifest.runtime = rt.describe();
    let batch = BatchResult::new(0, manifest.batch_key(0), pairs, opts.per_prompt)?;
    let mut r = job::finish(manifest, &[batch])?;
    r.runtime_calls = calls;
    r.seconds = p.seconds.clone();
    Ok(r)
}

/// Runs `rows` on the session `rt` of the prepared job, `rows_per_call` a
/// call, into `acc` (with a progress bar); sets the run time; returns the calls made.
/// `subsets` lists the units of the plan's subset rows.
fn run_rows(
    opts: &JobOptions,
    rt: &mut dyn Runtime,
    p: &mut job::Prepared<PatchGraph>,
    rows: &[Row],
    rows_per_call: usize,
    acc: &mut Accumulator,
    subsets: &[Vec<Unit>],
) -> Result<usize> {
    let chunks: Vec<&[Row]> = rows.chunks(rows_per_call).collect();
    let bar = crate::progress::bar(&opts.progress, chunks.len() as u64, "calls");
    let clock = Instant::now();
    for chunk in &chunks {
        run_chunk(rt, &p.graph, &p.tokens, chunk, acc, subsets)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    p.seconds.run = clock.elapsed().as_secs_f64();
    Ok(chunks.len())
}

fn run_chunk(
    rt: &mut dyn Runtime,
    pg: &PatchGraph,
    all: &TokenizedPrompts,
    rows: &[Row],
    acc: &mut Accumulator,
    subsets: &[Vec<Unit>],
) -> Result<()> {
    let first = rows[0].pair;
    let last = rows[rows.len() - 1].pair;
    let t = all.slice(first..last + 1);
    let local: Vec<Row> = rows.iter().map(|r| Row { pair: r.pair - first, ..*r }).collect();
    let mut inputs = job::pair_inputs(&pg.token_inputs(), &t);
    let row_pair = Array1::from_iter(local.iter().map(|r| r.pair as i64)).into_dyn();
    inputs.push((names::ROW_PAIR.into(), Value::I64(row_pair)));
    inputs.push((names::ROW_WEIGHTS.into(), Value::F32(Array2::<f32>::ones((rows.len(), 1)).into_dyn())));
    for h in &pg.hooks {
        let m = plan::mask(&local, h.layer, t.seq_len, pg.units(), &t.lengths, subsets);
        inputs.push((names::mask(h.layer), Value::F32(m.into_dyn())));
    }
    let mut out = rt.run(inputs)?;
    let what = |r: &Row| format!("pair {}, {:?}", r.pair, r.patch);
    let clean = runtime::take_output(&mut out, aug_names::CLEAN_LDS)?;
    for (i, &v) in clean.iter().enumerate() {
        check_finite(v, || format!("the clean run's metric of pair {}", first + i))?;
        acc.clean[first + i] = v as f64;
    }
    let row_metric = runtime::take_output(&mut out, names::ROW_METRIC)?;
    for (r, &v) in rows.iter().zip(row_metric.iter()) {
        check_finite(v, || format!("the metric of row ({})", what(r)))?;
        acc.add_metric(r, v as f64);
    }
    if pg.gradients {
        let context = format!(" in the rows of pairs {first}..={last}");
        for g in job::read_grid_rows(&mut out, &pg.hooks, pg.heads.is_some(), rows.len(), &context)? {
            let layer = pg.hooks[g.hook].layer;
            for (k, r) in rows.iter().enumerate() {
                if matches!(r.patch, Patch::Interpolate { layer: l, .. } if l == layer) {
                    acc.add_gradient_row(r, g.is_heads, g.row(k));
                }
            }
        }
    }
    Ok(())
}

fn check_finite(v: f32, what: impl Fn() -> String) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::Numeric(format!("{} is {v}", what())))
    }
}

/// Per pair: the clean and baseline metrics, and the grid cells as they come in.
struct Accumulator {
    plan: Plan,
    layer_index: HashMap<usize, usize>,
    clean: Vec<f64>,
    baseline: Vec<Option<f64>>,
    /// Exact: the patched metric of each cell. IG: the sum of the steps' grid rows.
    heads: Vec<Vec<Vec<f64>>>,
    positions: Vec<Vec<Vec<f64>>>,
}

impl Accumulator {
    /// Subset plans keep one "heads" row per pair, a cell per subset, and no positions.
    fn new(pg: &PatchGraph, plan: Plan, pairs: usize, seq: usize) -> Self {
        let layers = pg.hooks.len();
        let has_heads = pg.heads.is_some();
        // (rows, width) of each grid, None when the plan does not fill it.
        let (heads, positions) = match plan {
            Plan::Exact { heads, positions } => {
                ((heads && has_heads).then_some((layers, pg.units())), positions.then_some((layers, seq)))
            }
            Plan::IntegratedGradients { .. } => (has_heads.then_some((layers, pg.units())), Some((layers, seq))),
            Plan::Subsets { count } => (Some((1, count)), None),
        };
        // Exact: NaN marks a cell not run (a position past the pair's end). IG: rows are summed in.
        let start = if matches!(plan, Plan::IntegratedGradients { .. }) { 0.0 } else { f64::NAN };
        let grid = |shape: Option<(usize, usize)>| match shape {
            Some((rows, width)) => vec![vec![vec![start; width]; rows]; pairs],
            None => vec![vec![]; pairs],
        };
        Accumulator {
            plan,
            layer_index: pg.hooks.iter().enumerate().map(|(i, h)| (h.layer, i)).collect(),
            clean: vec![f64::NAN; pairs],
            baseline: vec![None; pairs],
            heads: grid(heads),
            positions: grid(positions),
        }
    }

    fn add_metric(&mut self, r: &Row, v: f64) {
        match r.patch {
            Patch::Baseline => self.baseline[r.pair] = Some(v),
            Patch::Head { layer, unit } => self.heads[r.pair][self.layer_index[&layer]][unit] = v,
            Patch::Position { layer, position } => self.positions[r.pair][self.layer_index[&layer]][position] = v,
            Patch::Subset { subset } => self.heads[r.pair][0][subset] = v,
            Patch::Interpolate { .. } => {}
        }
    }

    fn add_gradient_row(&mut self, r: &Row, is_heads: bool, row: &[f32]) {
        let Patch::Interpolate { layer, .. } = r.patch else { return };
        let l = self.layer_index[&layer];
        let target = if is_heads { &mut self.heads[r.pair][l] } else { &mut self.positions[r.pair][l] };
        for (t, &v) in target.iter_mut().zip(row) {
            *t += v as f64;
        }
    }

    /// Each pair's grid in the attribution job's units (change of its metric, not normalised).
    fn finish(self) -> Result<Vec<PairResult>> {
        let mut out = vec![];
        for (pair, (mut heads, mut positions)) in self.heads.into_iter().zip(self.positions).enumerate() {
            let base = self.baseline[pair]
                .ok_or_else(|| Error::Runtime(format!("pair {pair}: its baseline row did not run")))?;
            match self.plan {
                Plan::Exact { .. } | Plan::Subsets { .. } => {
                    // Positions past the pair's end were not run: patching them changes nothing.
                    for row in heads.iter_mut().chain(positions.iter_mut()) {
                        row.iter_mut().for_each(|v| *v = if v.is_nan() { 0.0 } else { *v - base });
                    }
                }
                Plan::IntegratedGradients { steps } => {
                    for row in heads.iter_mut().chain(positions.iter_mut()) {
                        row.iter_mut().for_each(|v| *v /= steps as f64);
                    }
                }
            }
            out.push(PairResult {
                index: pair,
                clean_metric: self.clean[pair],
                corrupted_metric: base,
                grid: PairGrid { heads, positions },
            });
        }
        Ok(out)
    }
}

//! Exact patching in layer groups: one unpatched run of the whole patching
//! graph per block of pairs (the cache run: clean metrics, baselines and the
//! frontier tensors of every cut), then each group's rows on the patching
//! graph cut at the group's first hook (cut.rs), fed from that cache. A row
//! patched at hook i then computes only the layers from its group's first
//! hook up, and no call reruns the clean prompts.

use super::cut::{self, Cut};
use super::plan::{self, Patch, Plan, Row};
use super::{check_finite, graph::names, graph::PatchGraph, Accumulator};
use crate::augment::names as aug_names;
use crate::job::{self, JobGraph, JobOptions};
use crate::prompts::TokenizedPrompts;
use crate::runtime::{self, Runtime, Value};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::facts::Dim;
use ndarray::{Array1, Array2, Array4, ArrayD};
use std::collections::HashMap;
use std::time::Instant;

/// How the hooks are grouped for exact patching.
#[derive(Debug, Clone, PartialEq)]
pub enum Groups {
    /// Chosen by the cost model (`choose_starts`) from the measured session and cache-run times.
    Auto,
    /// These many groups of (nearly) equal hook counts.
    Count(usize),
    /// Groups starting at these hook indices (the first is 0).
    Starts(Vec<usize>),
}

/// The first hook of each of `n` groups of nearly equal size over `hooks` hooks.
pub fn even_starts(hooks: usize, n: usize) -> Vec<usize> {
    let n = n.clamp(1, hooks.max(1));
    let mut s: Vec<usize> = (0..n).map(|k| k * hooks / n).collect();
    s.dedup();
    s
}

/// What the cost model reads: seconds to create the session of the whole
/// patching graph, and seconds per row per layer of its run.
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    /// Seconds to create the session of the whole patching graph.
    pub full_session: f64,
    /// Seconds per row and per layer of a run.
    pub row_layer: f64,
}

/// The group starts that minimise the estimated time: a group starting at
/// hook a costs its session (the whole graph's, scaled by the layers it
/// keeps) plus its rows times the layers each computes (from a up).
pub fn choose_starts(rows_at: &[usize], c: Costs) -> Vec<usize> {
    let l = rows_at.len();
    if l == 0 {
        return vec![0];
    }
    let session = |a: usize| c.full_session * (l - a) as f64 / l as f64;
    let mut best = vec![f64::INFINITY; l + 1];
    let mut from = vec![0; l + 1];
    best[0] = 0.0;
    for b in 1..=l {
        for a in 0..b {
            let rows: usize = rows_at[a..b].iter().sum();
            let cost = best[a] + session(a) + rows as f64 * (l - a) as f64 * c.row_layer;
            if cost < best[b] {
                best[b] = cost;
                from[b] = a;
            }
        }
    }
    let mut starts = vec![];
    let mut b = l;
    while b > 0 {
        starts.push(from[b]);
        b = from[b];
    }
    starts.reverse();
    starts
}

/// What the staged run did, for its note and tests.
#[derive(Debug, Clone, Default)]
pub struct StagedStats {
    /// The hook each layer group starts at, in order.
    pub starts: Vec<usize>,
    /// Runtime calls made: the cache runs and the cut graphs' runs.
    pub calls: usize,
    /// Seconds spent creating sessions (the cache graph's and every cut graph's).
    pub session_seconds: f64,
}

/// One cut graph and its session.
struct Stage {
    cut: Cut,
    session: Box<dyn Runtime>,
}

/// Runs the exact-patching `rows` of a prepared job in groups; fills `acc`.
pub(super) fn run_rows(
    opts: &JobOptions,
    p: &mut job::Prepared<PatchGraph>,
    rows: &[Row],
    rows_per_call: usize,
    groups: &Groups,
    acc: &mut Accumulator,
) -> Result<(StagedStats, String)> {
    let base = p.take_runtime_model()?;
    let pg = &p.graph;
    let dtype = attrpatch_onnx::consts::FLOAT;
    let n_hooks = pg.hooks.len();
    let hook_index: HashMap<usize, usize> = pg.hooks.iter().enumerate().map(|(i, h)| (h.layer, i)).collect();
    // Every possible cut, so the cache graph carries what any grouping needs.
    let cuts: Vec<Cut> = (0..n_hooks).map(|s| cut::cut(&pg.proto, &pg.hooks, s, dtype)).collect::<Result<_>>()?;
    let cache_proto = cut::cache_graph(&pg.proto, &cuts, dtype);
    let clock = Instant::now();
    let mut cache_rt = runtime::create_from(base.derived(&cache_proto), &opts.runtime)?;
    drop(cache_proto);
    let frontier = all_frontier(&cuts);
    let mut stats = StagedStats { session_seconds: clock.elapsed().as_secs_f64(), ..Default::default() };
    let describe = cache_rt.describe();

    let rows_at_hook = |r: &Row| match r.patch {
        Patch::Head { layer, .. } | Patch::Position { layer, .. } => Some(hook_index[&layer]),
        _ => None,
    };
    let mut rows_at = vec![0; n_hooks];
    rows.iter().filter_map(rows_at_hook).for_each(|i| rows_at[i] += 1);

    let pairs = p.tokens.clean_ids.len();
    // The cache run feeds two copies of each pair: keep it within one call's rows.
    let block = (rows_per_call / 2).clamp(1, pairs.max(1));
    let mut starts: Vec<usize> = vec![];
    let mut blocks: Vec<Block> = vec![];
    for first in (0..pairs).step_by(block) {
        let range = first..(first + block).min(pairs);
        let t = p.tokens.slice(range.clone());
        let clock = Instant::now();
        let mut cache = cache_run(cache_rt.as_mut(), pg, &t, first, acc, &frontier)?;
        stats.calls += 1;
        if starts.is_empty() {
            let b = range.len() as f64;
            let costs = Costs {
                full_session: stats.session_seconds,
                row_layer: clock.elapsed().as_secs_f64() / (2.0 * b * n_hooks.max(1) as f64),
            };
            starts = match groups {
                Groups::Auto => choose_starts(&rows_at, costs),
                Groups::Count(n) => even_starts(n_hooks, *n),
                Groups::Starts(s) => check_starts(s, n_hooks)?,
            };
            crate::progress::note(
                &opts.progress,
                &format!(
                    "exact patching in {} layer groups, starting at hooks {:?} (session {:.2} s, {:.2e} s per row and layer)",
                    starts.len(),
                    starts,
                    costs.full_session,
                    costs.row_layer
                ),
            );
        }
        // Only the chosen cuts' frontier is kept for the blocks' later calls.
        let needed: std::collections::HashSet<&str> =
            starts.iter().flat_map(|&s| cuts[s].frontier.iter().map(|f| f.name.as_str())).collect();
        cache.retain(|name, _| needed.contains(name.as_str()));
        blocks.push(Block { first, t, cache });
    }
    // One cut graph's session at a time: each holds its own copy of the weights it reads.
    drop(cache_rt);
    let mut cuts: Vec<Option<Cut>> = cuts.into_iter().map(Some).collect();
    let bar = crate::progress::bar(&opts.progress, starts.len() as u64, "layer groups");
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(n_hooks);
        let in_group = |r: &&Row| rows_at_hook(r).is_some_and(|i| (start..end).contains(&i));
        if !rows.iter().any(|r| in_group(&r)) {
            continue;
        }
        let mut c = cuts[start].take().expect("each cut is staged once");
        declare_frontier_shapes(&mut c, &blocks[0].cache, blocks[0].t.clean_ids.len());
        let clock = Instant::now();
        let session = runtime::create_from(base.derived(&c.proto), &opts.runtime)?;
        stats.session_seconds += clock.elapsed().as_secs_f64();
        let mut stage = Stage { cut: c, session };
        for b in &blocks {
            let n = b.t.clean_ids.len();
            let group: Vec<Row> = rows
                .iter()
                .filter(|r| (b.first..b.first + n).contains(&r.pair))
                .filter(in_group)
                .map(|r| Row { pair: r.pair - b.first, ..*r })
                .collect();
            for (i, chunk) in group.chunks(rows_per_call).enumerate() {
                // The block's first call of each cut graph also runs the last pair unpatched.
                let check = (i == 0).then_some(n - 1);
                run_cut_chunk(&mut stage, pg, &b.t, chunk, b.first, check, &b.cache, acc)?;
                stats.calls += 1;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    stats.starts = starts;
    Ok((stats, describe))
}

/// One block of pairs and what its cache run returned.
struct Block {
    first: usize,
    t: TokenizedPrompts,
    cache: HashMap<String, ArrayD<f32>>,
}

/// The frontier tensors of every cut, once each: what the cache run returns.
fn all_frontier(cuts: &[Cut]) -> Vec<String> {
    let mut v: Vec<String> = cuts.iter().flat_map(|c| c.frontier.iter().map(|f| f.name.clone())).collect();
    v.sort();
    v.dedup();
    v
}

fn check_starts(s: &[usize], hooks: usize) -> Result<Vec<usize>> {
    let ok = s.first() == Some(&0) && s.windows(2).all(|w| w[0] < w[1]) && s.iter().all(|&i| i < hooks);
    if !ok {
        return Err(Error::Input(format!(
            "patching group starts {s:?}: expected increasing hook indices below {hooks}, the first 0"
        )));
    }
    Ok(s.to_vec())
}

/// The unpatched run of pairs `t` (the job's pairs from `first`): records the
/// clean and baseline metrics, returns the frontier tensors by name.
fn cache_run(
    rt: &mut dyn Runtime,
    pg: &PatchGraph,
    t: &TokenizedPrompts,
    first: usize,
    acc: &mut Accumulator,
    frontier: &[String],
) -> Result<HashMap<String, ArrayD<f32>>> {
    let b = t.clean_ids.len();
    let mut inputs = job::pair_inputs(&pg.token_inputs(), t);
    inputs.push((names::ROW_PAIR.into(), Value::I64(Array1::from_iter(0..b as i64).into_dyn())));
    inputs.push((names::ROW_WEIGHTS.into(), Value::F32(Array2::<f32>::ones((b, 1)).into_dyn())));
    for h in &pg.hooks {
        let zeros = Array4::<f32>::zeros((b, t.seq_len, pg.units(), 1));
        inputs.push((names::mask(h.layer), Value::F32(zeros.into_dyn())));
    }
    let mut out = rt.run(inputs)?;
    let clean = runtime::take_output(&mut out, aug_names::CLEAN_LDS)?;
    let base = runtime::take_output(&mut out, names::ROW_METRIC)?;
    for (i, (&c, &v)) in clean.iter().zip(base.iter()).enumerate() {
        check_finite(c, || format!("the clean run's metric of pair {}", first + i))?;
        check_finite(v, || format!("the metric of row (pair {}, Baseline)", first + i))?;
        acc.clean[first + i] = c as f64;
        acc.add_metric(&Row { pair: first + i, patch: Patch::Baseline }, v as f64);
    }
    let mut cache = HashMap::new();
    for name in frontier {
        let a = runtime::take_output(&mut out, name)?;
        // Both copies hold the pairs outermost on axis 0 (the rows copy runs one row per pair here);
        // each cut graph's first call checks that with a baseline row (`run_cut_chunk`).
        if a.ndim() == 0 || a.shape()[0] % b != 0 {
            return Err(Error::Model(format!(
                "the patching graph's tensor '{name}' has shape {:?} for {b} pairs: its first axis does not hold \
                 the pairs, so the graph cannot be cut there (run with --layer-groups off)",
                a.shape()
            )));
        }
        cache.insert(name.clone(), a);
    }
    Ok(cache)
}

/// One call of a cut graph on `rows` (pair indices local to the block `t`).
/// With `check`, that pair's unpatched row runs first and must reproduce the
/// cache run's baseline: a frontier tensor whose axis 0 does not hold the
/// rows outermost (transposed) would be gathered wrongly and show there.
#[allow(clippy::too_many_arguments)]
fn run_cut_chunk(
    stage: &mut Stage,
    pg: &PatchGraph,
    t: &TokenizedPrompts,
    rows: &[Row],
    first: usize,
    check: Option<usize>,
    cache: &HashMap<String, ArrayD<f32>>,
    acc: &mut Accumulator,
) -> Result<()> {
    let checked: Vec<Row>;
    let rows = match check {
        Some(pair) => {
            checked = std::iter::once(Row { pair, patch: Patch::Baseline }).chain(rows.iter().copied()).collect();
            &checked[..]
        }
        None => rows,
    };
    let mut all = job::pair_inputs(&pg.token_inputs(), t);
    all.push((names::ROW_PAIR.into(), Value::I64(Array1::from_iter(rows.iter().map(|r| r.pair as i64)).into_dyn())));
    all.push((names::ROW_WEIGHTS.into(), Value::F32(Array2::<f32>::ones((rows.len(), 1)).into_dyn())));
    for h in &pg.hooks[stage.cut.start..] {
        let m = plan::mask(rows, h.layer, t.seq_len, pg.units(), &t.lengths, &[]);
        all.push((names::mask(h.layer), Value::F32(m.into_dyn())));
    }
    let row_pairs: Vec<usize> = rows.iter().map(|r| r.pair).collect();
    for f in &stage.cut.frontier {
        let a = &cache[&f.name];
        let v = if f.rows { gather_rows(a, t.clean_ids.len(), &row_pairs) } else { a.clone() };
        all.push((f.name.clone(), Value::F32(v)));
    }
    let wanted: std::collections::HashSet<&str> = stage.cut.inputs.iter().map(String::as_str).collect();
    let inputs: Vec<(String, Value)> = all.into_iter().filter(|(n, _)| wanted.contains(n.as_str())).collect();
    let mut out = stage.session.run(inputs)?;
    let metric = runtime::take_output(&mut out, names::ROW_METRIC)?;
    if let Some(pair) = check {
        let (got, want) = (metric.iter().next().copied().unwrap_or(f32::NAN) as f64, acc.baseline[first + pair]);
        let want = want.expect("the cache run recorded every baseline of the block");
        let close = (got - want).abs() <= 1e-4 * want.abs().max(1.0);
        if !close {
            let hook = &pg.hooks[stage.cut.start];
            return Err(Error::Model(format!(
                "the patching graph cut at hook '{}' (layer {}) gives pair {} an unpatched metric of {got} where the \
                 whole graph gives {want}: a tensor it reads from below the cut does not hold the rows on its first \
                 axis; run with --layer-groups off",
                hook.tensor,
                hook.layer,
                first + pair
            )));
        }
    }
    for (r, &v) in rows.iter().zip(metric.iter()).skip(check.is_some() as usize) {
        let global = Row { pair: r.pair + first, ..*r };
        check_finite(v, || format!("the metric of row (pair {}, {:?})", global.pair, global.patch))?;
        acc.add_metric(&global, v as f64);
    }
    Ok(())
}

/// Gives the cut graph's frontier inputs the shapes the cache run returned,
/// the row (or pair) axis symbolic: ONNX Runtime's fusions and memory plan
/// need the shapes it would have inferred in the whole graph.
fn declare_frontier_shapes(c: &mut Cut, cache: &HashMap<String, ArrayD<f32>>, pairs: usize) {
    let g = c.proto.graph.as_mut().expect("a cut has a graph");
    for f in &c.frontier {
        let shape = cache[&f.name].shape();
        let per_pair = shape[0] / pairs;
        let first = match (f.rows, per_pair) {
            (true, 1) => Dim::Sym("rows".into()),
            (true, k) => Dim::Sym(format!("rows_x{k}")),
            (false, 1) => Dim::Sym("pairs".into()),
            (false, k) => Dim::Sym(format!("pairs_x{k}")),
        };
        let dims: Vec<Dim> = std::iter::once(first).chain(shape[1..].iter().map(|&d| Dim::Known(d as i64))).collect();
        if let Some(vi) = g.input.iter_mut().find(|i| i.name == f.name) {
            let elem = attrpatch_onnx::consts::FLOAT;
            *vi = attrpatch_onnx::graph::value_info(&f.name, elem, &dims);
        }
    }
}

/// Rows `pairs` of a per-pair cache whose axis 0 holds `b` equal blocks,
/// rows outermost ([B, ...], or [B * k, ...] for a flattened [B, k, ...]).
fn gather_rows(a: &ArrayD<f32>, b: usize, pairs: &[usize]) -> ArrayD<f32> {
    let flat = a.as_standard_layout();
    let flat = flat.as_slice().expect("standard layout");
    let per = flat.len() / b;
    let mut v = Vec::with_capacity(per * pairs.len());
    for &p in pairs {
        v.extend_from_slice(&flat[p * per..(p + 1) * per]);
    }
    let mut shape = a.shape().to_vec();
    shape[0] = shape[0] / b * pairs.len();
    ArrayD::from_shape_vec(shape, v).expect("whole blocks")
}

/// Whether a plan can run staged: exact patching only (integrated gradients
/// differentiate every layer's rows and keep the one graph).
pub fn applies(plan: &Plan) -> bool {
    matches!(plan, Plan::Exact { .. })
}

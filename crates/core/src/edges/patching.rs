//! Exact edge patching on the host side: variants (sets of patched edges)
//! run on every pair as rows of the edge-patching graph (`patch_graph`), as
//! many rows per runtime call as memory allows, and each variant's metric
//! summed over the pairs and normalised as `run` normalises: by
//! N (CLEAN - CORR) over the whole prompt set. With an ablation
//! (`Intervention`) a patched edge carries zero or the data set's mean
//! instead of the source prompt's value.

use super::convention::Ablation;
use super::means::WriterMeans;
use super::patch_graph::{self, mask_groups, names, EdgePatchOptions};
use super::{Reader, Topology, Writer};
use crate::augment::Metric;
use crate::batches::Totals;
use crate::graph_cache::GraphKey;
use crate::job::{pair_inputs, prepare, JobGraph, JobOptions};
use crate::memory::{choose, Budget, Sizing, Workload};
use crate::runtime::{take_output, Value};
use attrpatch_onnx::error::{Error, Result};
use ndarray::{Array1, Array2, Array3};
use std::collections::HashMap;
use std::time::Instant;

/// Which prompts the rows run and which the patched edges carry values from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Rows run the corrupted prompts; a patched edge carries its clean writer's
    /// value (one edge at a time: that edge's exact effect).
    CleanIntoCorrupted,
    /// Rows run the clean prompts; a patched edge carries its corrupted writer's
    /// value (every edge outside a circuit: the circuit's faithfulness).
    CorruptedIntoClean,
}

/// What a patched edge carries into its reader.
#[derive(Clone, Copy)]
pub struct Intervention<'a> {
    /// Patching: the source prompt's value; zero; or the mean of `means`.
    pub ablation: Ablation,
    /// The writers' means (the edge job's `EdgeRun::means`), for mean and mean-positional.
    pub means: Option<&'a WriterMeans>,
}

impl Intervention<'_> {
    /// The source prompt's value (plain exact patching).
    pub const PATCHING: Intervention<'static> = Intervention { ablation: Ablation::Patching, means: None };
}

/// Every variant's normalised metric and what the run cost.
#[derive(Debug, Clone)]
pub struct EdgePatchResult {
    /// The model's edge topology.
    pub topology: Topology,
    /// Per variant: (sum over pairs of M_row - sum of CORR) / (N (CLEAN - CORR)),
    /// the metric normalised as `run`'s: 0 is the corrupted run, 1 the clean run.
    pub normalised: Vec<f64>,
    /// Mean clean metric over the pairs.
    pub clean: f64,
    /// Mean corrupted metric over the pairs.
    pub corrupted: f64,
    /// Rows run (pairs x (variants + 1 baseline)).
    pub rows: usize,
    /// Runtime calls made.
    pub runtime_calls: usize,
    /// Seconds in runtime calls.
    pub run_seconds: f64,
    /// The rows-per-call choice.
    pub sizing: Sizing,
}

/// One row: a pair and its variant (None: the unpatched baseline).
#[derive(Debug, Clone, Copy)]
struct Row {
    pair: usize,
    variant: Option<usize>,
}

/// Runs every variant on every pair. `variants` gets the model's topology and
/// returns, per variant, the indices (into `Topology::edges`) of the edges that
/// carry the source run's value. `rows_per_call`: None sizes from memory.
pub fn patch_edges(
    opts: &JobOptions,
    direction: Direction,
    rows_per_call: Option<usize>,
    variants: impl FnOnce(&Topology) -> Result<Vec<Vec<usize>>>,
) -> Result<EdgePatchResult> {
    patch_edges_with(opts, direction, rows_per_call, Intervention::PATCHING, variants)
}

/// `patch_edges` with the patched edges carrying what `carried` says (an
/// ablation only into the clean run: `Direction::CorruptedIntoClean`).
pub fn patch_edges_with(
    opts: &JobOptions,
    direction: Direction,
    rows_per_call: Option<usize>,
    carried: Intervention,
    variants: impl FnOnce(&Topology) -> Result<Vec<Vec<usize>>>,
) -> Result<EdgePatchResult> {
    let ablation = carried.ablation;
    if ablation != Ablation::Patching && direction != Direction::CorruptedIntoClean {
        return Err(Error::Input(format!(
            "exact edge patching with --ablation {}: an ablated edge is defined on the clean run only (circuit \
             faithfulness); use --ablation patching",
            ablation.label()
        )));
    }
    let means = match (ablation.is_mean(), carried.means) {
        (true, None) => {
            return Err(Error::Input(format!(
                "exact edge patching with --ablation {}: the writers' means are needed (the edge job's first pass \
                 computes them: run the scores with the same --ablation)",
                ablation.label()
            )))
        }
        (true, Some(m)) => Some(m),
        (false, _) => None,
    };
    if opts.shard.is_some() {
        return Err(Error::Input("exact edge patching runs in one process: shards are not supported".into()));
    }
    if rows_per_call == Some(0) {
        return Err(Error::Input("rows per call must be at least 1".into()));
    }
    if direction == Direction::CorruptedIntoClean && opts.metric == Metric::Kl {
        return Err(Error::Input(
            "circuit faithfulness with the KL metric: the rows run the clean prompts, and KL(clean || clean) is the \
             clean baseline's 0 only against the clean run's own distribution; use logit-diff, logprob-diff or prob"
                .into(),
        ));
    }
    let gopts = EdgePatchOptions { metric: opts.metric, heads: opts.heads, ablation };
    let mut p = prepare(opts, GraphKey::new("edge-patch", &gopts), |model| patch_graph::build(model, &gopts))?;
    let topo = p.graph.anatomy.topology();
    let variants = variants(&topo)?;
    let slots = EdgeSlots::new(&topo);
    for (i, v) in variants.iter().enumerate() {
        if let Some(&bad) = v.iter().find(|&&e| e >= slots.edges) {
            return Err(Error::Input(format!(
                "variant {i}: edge index {bad} is past the model's {} edges",
                slots.edges
            )));
        }
    }
    let n = p.tokens.clean_ids.len();
    let rows: Vec<Row> = (0..n)
        .flat_map(|pair| {
            std::iter::once(Row { pair, variant: None })
                .chain((0..variants.len()).map(move |v| Row { pair, variant: Some(v) }))
        })
        .collect();
    let sizing = sizing(rows_per_call, rows.len(), &p.shape, &topo, opts.max_memory);
    crate::progress::sizing(&opts.progress, &sizing);
    // The source copy reads the `clean` inputs, the rows the `corrupted` ones.
    let mut tokens = p.tokens.clone();
    if direction == Direction::CorruptedIntoClean {
        std::mem::swap(&mut tokens.clean_ids, &mut tokens.corrupted_ids);
    }
    crate::progress::stage(&opts.progress, "creating the runtime session");
    let mut rt = p.session(&opts.runtime)?;
    let mut source = vec![f64::NAN; n];
    let mut baseline = vec![f64::NAN; n];
    let mut sums = vec![0.0f64; variants.len()];
    let mut calls = 0;
    let clock = Instant::now();
    for chunk in rows.chunks(sizing.per_call.max(1)) {
        let (first, last) = (chunk[0].pair, chunk[chunk.len() - 1].pair);
        let t = tokens.slice(first..last + 1);
        let mut inputs = pair_inputs(&p.graph.token_inputs(), &t);
        let row_pair = Array1::from_iter(chunk.iter().map(|r| (r.pair - first) as i64)).into_dyn();
        inputs.push((names::ROW_PAIR.into(), Value::I64(row_pair)));
        inputs.push((names::ROW_WEIGHTS.into(), Value::F32(Array2::<f32>::ones((chunk.len(), 1)).into_dyn())));
        if let Some(m) = means {
            inputs.push((super::graph::ABLATION.into(), Value::F32(m.input(ablation, t.seq_len)?.into_dyn())));
        }
        for (gi, m) in slots.masks(chunk, &variants).into_iter().enumerate() {
            inputs.push((names::mask(&slots.groups[gi]), Value::F32(m.into_dyn())));
        }
        let mut out = rt.run(inputs)?;
        calls += 1;
        let s = take_output(&mut out, names::SOURCE_METRIC)?;
        for (i, &v) in s.iter().enumerate() {
            finite(v, || format!("the source run's metric of pair {}", first + i))?;
            source[first + i] = v as f64;
        }
        let m = take_output(&mut out, names::ROW_METRIC)?;
        if m.len() != chunk.len() {
            return Err(Error::Runtime(format!(
                "'{}' has {} values for {} rows",
                names::ROW_METRIC,
                m.len(),
                chunk.len()
            )));
        }
        for (r, &v) in chunk.iter().zip(m.iter()) {
            finite(v, || format!("the metric of pair {}'s row (variant {:?})", r.pair, r.variant))?;
            match r.variant {
                None => baseline[r.pair] = v as f64,
                Some(k) => sums[k] += v as f64,
            }
        }
    }
    let run_seconds = clock.elapsed().as_secs_f64();
    let (clean, corrupted) = match direction {
        Direction::CleanIntoCorrupted => (&source, &baseline),
        Direction::CorruptedIntoClean => (&baseline, &source),
    };
    let totals =
        Totals { pairs: n, sum_clean: clean.iter().sum(), sum_corrupted: corrupted.iter().sum(), ..Default::default() };
    let k = totals.normaliser()?;
    Ok(EdgePatchResult {
        topology: topo,
        normalised: sums.iter().map(|s| k * (s - totals.sum_corrupted)).collect(),
        clean: totals.clean(),
        corrupted: totals.corrupted(),
        rows: rows.len(),
        runtime_calls: calls,
        run_seconds,
        sizing,
    })
}

fn finite(v: f32, what: impl Fn() -> String) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::Numeric(format!("{} is {v}", what())))
    }
}

/// Rows per call. A row costs what an exact-patching row costs, plus the
/// writers' differences ([writers, S, d]: the rows' largest extra tensor,
/// counted three times: the pieces, a layer's concatenated prefix and the
/// source rows gathered for them) and the q/k/v reader copies of one layer.
/// Measured on the GPT-2-small-sized export, 152 rows of 14 tokens: 3.8 GB
/// peak RSS, about 20 MB a row; this gives 24 MB.
fn sizing(
    explicit: Option<usize>,
    needed: usize,
    shape: &crate::memory::ModelShape,
    topo: &Topology,
    max_memory: Option<u64>,
) -> Sizing {
    let mut s = choose(explicit, needed, shape, Workload::PatchedForward, &Budget::new(max_memory));
    let per_position = (3 * topo.writers().len() + topo.heads + 2 * topo.kv_heads) as u64;
    let extra = 4 * per_position * (shape.seq_len * shape.width) as u64;
    s.row_bytes += extra;
    if explicit.is_none() {
        let fits = s.budget_bytes.saturating_sub(s.weight_bytes + crate::memory::BASE_BYTES) / s.row_bytes;
        s.per_call = (fits as usize).clamp(1, Workload::PatchedForward.cap().min(needed.max(1)));
    }
    s
}

/// Where each edge's mask entry is: (group, reader slot, writer index).
struct EdgeSlots {
    groups: Vec<String>,
    shapes: Vec<(usize, usize)>,
    slot: Vec<(usize, usize, usize)>,
    edges: usize,
}

impl EdgeSlots {
    fn new(t: &Topology) -> Self {
        let groups = mask_groups(t);
        let writer: HashMap<Writer, usize> = t.writers().into_iter().enumerate().map(|(i, w)| (w, i)).collect();
        let mut reader: HashMap<Reader, (usize, usize)> = HashMap::new();
        for (gi, g) in groups.iter().enumerate() {
            for (i, r) in g.readers.iter().enumerate() {
                reader.insert(*r, (gi, i));
            }
        }
        let slot: Vec<(usize, usize, usize)> = t
            .edges()
            .into_iter()
            .map(|(w, r)| {
                let (gi, i) = reader[&r];
                (gi, i, writer[&w])
            })
            .collect();
        EdgeSlots {
            shapes: groups.iter().map(|g| (g.readers.len(), g.upstream)).collect(),
            groups: groups.into_iter().map(|g| g.name).collect(),
            edges: slot.len(),
            slot,
        }
    }

    /// Each group's mask for these rows.
    fn masks(&self, rows: &[Row], variants: &[Vec<usize>]) -> Vec<Array3<f32>> {
        let mut m: Vec<Array3<f32>> = self.shapes.iter().map(|&(n, u)| Array3::zeros((rows.len(), n, u))).collect();
        for (r, row) in rows.iter().enumerate() {
            for &e in row.variant.map_or(&[][..], |v| &variants[v]) {
                let (gi, i, u) = self.slot[e];
                m[gi][[r, i, u]] = 1.0;
            }
        }
        m
    }
}

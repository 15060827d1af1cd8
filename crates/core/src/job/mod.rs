//! The attribution job: prompts in, grids out. A prompt set runs in batches
//! (one runtime call each; the default is one batch for up to 64 pairs), each
//! batch's result is kept (and written to the output folder, so an
//! interrupted job resumes), and the grids are normalised once all are in.

mod inputs;
mod labeled;
mod manifest;
mod prepare;
mod rows;

pub(crate) use inputs::read_grid_rows;
pub use inputs::{pair_inputs, TokenInputs};
pub use labeled::{head_labels, layer_labels, position_labels, LabeledGrid};
pub use manifest::{Manifest, Method};
pub use prepare::{
    default_tokenizer, prepare, prepare_choosing, prepare_loaded, JobGraph, LoadedModel, Prepared, PromptSource,
};
pub use rows::{shared_inputs, shared_is_cheaper, Dedup, RowPlan, RowsRun, BACKWARD_PER_FORWARD};

use crate::augment::{augment_shared, augment_with, names, AugmentOptions, Augmented};
use crate::batches::{resumable, BatchResult, PairResult, Totals};
use crate::grids::{scaled, Grids, PairGrid};
use crate::prompts::{PromptPair, TokenizedPrompts};
use crate::runtime::{self, Runtime, RuntimeOptions};
use attrpatch_onnx::error::{Error, Result};
use ndarray::ArrayD;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The most pairs per call the memory sizing picks, and what shards use
/// unless `--batch-size` is given (every shard must split the prompts alike).
pub const DEFAULT_BATCH_SIZE: usize = 64;

/// What a job is asked to do: model, prompts, runtime, what to measure and where.
#[derive(Clone)]
pub struct JobOptions {
    /// The ONNX model file.
    pub model: PathBuf,
    /// Defaults to tokenizer.json beside the model.
    pub tokenizer: Option<PathBuf>,
    /// JSONL prompt pairs; the tutorial's IOI prompts when None.
    pub prompts: Option<PathBuf>,
    /// Prepend the tokenizer's BOS token to every prompt.
    pub bos: bool,
    /// Overrides the head count read from the graph.
    pub heads: Option<usize>,
    /// Runtime, device and threads.
    pub runtime: RuntimeOptions,
    /// Pairs per runtime call (0: all); None: as many as the memory budget
    /// holds (`memory::choose`), at most `DEFAULT_BATCH_SIZE`.
    pub batch_size: Option<usize>,
    /// The memory budget in bytes (`--max-memory`); None: from the memory available.
    pub max_memory: Option<u64>,
    /// Keep each pair's grids.
    pub per_prompt: bool,
    /// Run only this part of the batches.
    pub shard: Option<Shard>,
    /// Where batch results are written and resumed from.
    pub work_dir: Option<PathBuf>,
    /// The quantity attributed.
    pub metric: crate::augment::Metric,
    /// Which activations are attributed.
    pub hooks: crate::hooks::HookKind,
    /// Token ids given directly (no tokenizer is read); `pairs` names them in the results.
    pub tokens: Option<(Vec<PromptPair>, TokenizedPrompts)>,
    /// Where progress and the call sizing are reported; None: a silent job.
    pub progress: crate::progress::Reporter,
    /// Whether the attribution graph runs each distinct sequence once (`--dedup`).
    pub dedup: Dedup,
    /// The folder that keeps rewritten graphs between runs (`--cache`); None: no cache.
    pub cache: Option<PathBuf>,
}

impl JobOptions {
    /// The attribution graph this job builds: its grids only (no raw outputs),
    /// its heads, metric and hooks.
    pub fn augment_options(&self) -> AugmentOptions {
        AugmentOptions {
            raw_outputs: false,
            grid_outputs: true,
            heads: self.heads,
            metric: self.metric,
            hooks: self.hooks.clone(),
            atp_star: None,
        }
    }

    /// Feeds these token ids (equal-length prompts; answers as [correct, incorrect])
    /// instead of tokenizing text: for fixtures and callers with their own tokenizer.
    pub fn with_token_ids(&mut self, clean: Vec<Vec<i64>>, corrupted: Vec<Vec<i64>>, answers: &[Vec<i64>]) {
        let (n, seq) = (clean.len(), clean.first().map_or(0, |r| r.len()));
        let tokens = TokenizedPrompts {
            correct_ids: answers.iter().map(|a| a.first().copied().unwrap_or(-1)).collect(),
            incorrect_ids: answers.iter().map(|a| a.get(1).copied().unwrap_or(-1)).collect(),
            clean_ids: clean,
            corrupted_ids: corrupted,
            seq_len: seq,
            lengths: vec![seq; n],
            clean_tokens: vec![vec![]; n],
        };
        let unnamed = PromptPair {
            clean: String::new(),
            corrupted: String::new(),
            correct: String::new(),
            incorrect: String::new(),
            origin: None,
        };
        self.tokens = Some((vec![unnamed; n], tokens));
    }

    /// Every default for `model`: the tutorial's prompts, logit difference, attention hooks.
    pub fn new(model: PathBuf) -> Self {
        JobOptions {
            model,
            tokenizer: None,
            prompts: None,
            bos: false,
            heads: None,
            runtime: RuntimeOptions::default(),
            batch_size: None,
            max_memory: None,
            per_prompt: false,
            shard: None,
            work_dir: None,
            tokens: None,
            metric: Default::default(),
            hooks: crate::hooks::HookKind::AttnOut,
            progress: None,
            dedup: Dedup::Auto,
            cache: None,
        }
    }
}

/// Shard `index` of `count` (0-based, as Slurm array and Kubernetes indexed jobs number them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard's index, 0-based.
    pub index: usize,
    /// How many shards there are.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Input(format!("shard '{s}': expected K/N with 0 <= K < N, e.g. 0/4"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// The contiguous range of batch indices this shard runs.
    pub fn batches(&self, n_batches: usize) -> std::ops::Range<usize> {
        (self.index * n_batches / self.count)..((self.index + 1) * n_batches / self.count)
    }
}

/// A finished job: its manifest, baselines and normalised grids.
pub struct JobResult {
    /// What was run, on what (model, prompts, hooks, runtime).
    pub manifest: Manifest,
    /// The clean prompts' mean metric (the chosen metric: logit difference, probability, ...).
    pub clean_metric: f64,
    /// The corrupted prompts' mean metric.
    pub corrupted_metric: f64,
    /// Normalised grids over the whole prompt set.
    pub grids: Grids,
    /// Each pair's share of `grids` (normalised), when asked for and kept in memory.
    pub per_pair: Vec<PairResult>,
    /// Runtime calls made.
    pub runtime_calls: usize,
    /// Batches read back from an interrupted run instead of recomputed.
    pub batches_resumed: usize,
    /// Where the time went.
    pub seconds: Timings,
    /// Whether the baselines make the normalised grids meaningful, and the clean accuracy.
    pub baselines: crate::sanity::BaselineCheck,
    /// Each pair's raw (clean, corrupted) metric, in prompt order, always kept.
    pub pair_metrics: Vec<(f64, f64)>,
    /// Which attribution graph ran, and its forward rows (this process's calls only).
    pub rows: RowsRun,
}

/// Seconds spent in each step of a job (0 for steps a reused `Attributor` skipped).
#[derive(Default, Debug, Clone, Serialize)]
pub struct Timings {
    /// Reading the model (and the prompts).
    pub load: f64,
    /// Rewriting the graph and tokenizing.
    pub rewrite: f64,
    /// Making the runtime session.
    pub session: f64,
    /// The runtime calls.
    pub run: f64,
    /// Whether the graph came from the cache (`--cache`).
    pub cache: crate::graph_cache::CacheUse,
}

/// Runs the job; for a shard, returns None after writing its batches.
/// The graph is the shared-rows one when `opts.dedup` says so for these prompts (`rows`).
pub fn run_job(opts: &JobOptions) -> Result<Option<JobResult>> {
    let aug = opts.augment_options();
    let mut p = prepare_choosing(
        opts,
        |source| {
            let shared = choose_shared(opts, source)?;
            Ok((crate::graph_cache::GraphKey::new("attribution", &(&aug, shared)), shared))
        },
        |shared, model| match shared {
            true => augment_shared(model, aug.clone()),
            false => augment_with(model, aug.clone()),
        },
    )?;
    run_prepared(opts, &mut p, &mut None)
}

/// `opts.dedup` applied to the whole prompt set's rows (the tokens are read
/// here without the vocabulary check, which the job makes afterwards).
pub fn choose_shared(opts: &JobOptions, source: &PromptSource) -> Result<bool> {
    if opts.dedup != Dedup::Auto {
        return Ok(opts.dedup == Dedup::On);
    }
    let t = source.tokenize(opts, usize::MAX)?;
    Ok(opts.dedup.shared(RowPlan::of(&t).len(), t.clean_ids.len()))
}

/// Runs a prepared attribution job; `session` is the runtime session on its
/// graph, made here when None and a batch needs it, and kept for the next
/// call (the facade's `Attributor` reuses it). For a shard, returns None
/// after writing its batches.
pub fn run_prepared(
    opts: &JobOptions,
    p: &mut Prepared<Augmented>,
    session: &mut Option<Box<dyn Runtime>>,
) -> Result<Option<JobResult>> {
    // A shared-rows pair costs its share of the rows, each costed as a two-copy pair (conservative).
    let rows_per_pair = match p.graph.shared_rows {
        true => RowPlan::of(&p.tokens).len() as f64 / p.pairs.len().max(1) as f64,
        false => 1.0,
    };
    let sizing = batch_sizing(opts, p, rows_per_pair)?;
    let batch_size = sizing.per_call;
    let mut manifest = Manifest::new(opts, p, Method::Attribution, batch_size);
    manifest.memory = Some(sizing);
    if let Some(dir) = &opts.work_dir {
        // Written now too, so that an interrupted run's --resume finds its batch layout.
        save_manifest(dir, &manifest)?;
    }
    let mine = opts.shard.map_or(0..manifest.n_batches, |s| s.batches(manifest.n_batches));
    let keys: Vec<String> = (0..manifest.n_batches).map(|i| manifest.batch_key(i)).collect();

    // Batches finished by an earlier run of the same job are not recomputed.
    let mut done: HashMap<usize, BatchResult> = HashMap::new();
    if let Some(dir) = &opts.work_dir {
        done.extend(mine.clone().filter_map(|i| resumable(dir, i, &keys[i]).map(|b| (i, b))));
    }
    let resumed = done.len();
    if session.is_none() && done.len() < mine.len() {
        crate::progress::stage(&opts.progress, "creating the runtime session");
        *session = Some(p.session(&opts.runtime)?);
        crate::progress::stage(&opts.progress, &format!("session ready in {:.1} s; running", p.seconds.session));
    }
    let mut rt: Option<&mut dyn Runtime> = session.as_deref_mut();
    let mut rows = RowsRun { shared: p.graph.shared_rows, rows: 0, pairs: 0 };

    let bar = crate::progress::bar(&opts.progress, mine.len() as u64, "batches");
    let clock = Instant::now();
    let mut calls = 0;
    let mut batches = vec![];
    for i in mine.clone() {
        let b = match (done.remove(&i), rt.as_mut()) {
            (Some(b), _) => b,
            (None, Some(rt)) => {
                let range = i * batch_size..((i + 1) * batch_size).min(p.pairs.len());
                calls += 1;
                let (b, r) = run_batch(&mut **rt, p, opts, range.clone(), i, keys[i].clone())?;
                rows.rows += r;
                rows.pairs += range.len();
                if let Some(dir) = &opts.work_dir {
                    b.save(dir)?;
                }
                b
            }
            (None, None) => return Err(Error::Runtime(format!("batch {i}: no runtime session to run it"))),
        };
        bar.inc(1);
        batches.push(b);
    }
    bar.finish_and_clear();
    p.seconds.run = clock.elapsed().as_secs_f64();

    manifest.runtime = rt.as_ref().map_or_else(|| "none (all batches resumed)".into(), |r| r.describe());
    if let Some(dir) = &opts.work_dir {
        save_manifest(dir, &manifest)?;
    }
    if opts.shard.is_some() {
        return Ok(None);
    }
    let mut r = finish(manifest, &batches)?;
    r.runtime_calls = calls;
    r.batches_resumed = resumed;
    r.seconds = p.seconds.clone();
    r.rows = rows;
    Ok(Some(r))
}

/// Pairs per call: `--batch-size`; else the layout of the interrupted run
/// being resumed; else 64 for a shard (shards on different machines must
/// split alike); else what the memory budget holds. Printed when the job
/// shows progress. `rows_per_pair` scales the memory a pair needs.
fn batch_sizing<G>(opts: &JobOptions, p: &Prepared<G>, rows_per_pair: f64) -> Result<crate::memory::Sizing> {
    use crate::memory::{choose_scaled, Budget, Workload};
    let choose = |explicit, n, shape, w, budget| choose_scaled(explicit, n, shape, w, budget, rows_per_pair);
    let n = p.pairs.len();
    let budget = Budget::new(opts.max_memory);
    let explicit = match opts.batch_size {
        Some(0) => Some(n.max(1)),
        Some(k) => Some(k),
        None => opts.work_dir.as_deref().and_then(resumed_batch_size).or(opts.shard.map(|_| DEFAULT_BATCH_SIZE)),
    };
    let mut sizing = choose(explicit, n, &p.shape, Workload::AttributionPair, &budget);
    if opts.batch_size.is_none() && explicit.is_some() {
        sizing.explicit = false;
        let fits = choose(None, n, &p.shape, Workload::AttributionPair, &budget).per_call;
        if fits < sizing.per_call && opts.shard.is_some() {
            sizing.warning = Some(format!(
                "--shard without --batch-size runs {} pairs per call so that every shard splits the prompts alike; \
                 the {} fits {fits}: give every shard --batch-size {fits}",
                sizing.per_call,
                budget.describe()
            ));
        }
    }
    crate::progress::sizing(&opts.progress, &sizing);
    Ok(sizing)
}

/// The batch size of the interrupted run in `dir`, when it left batch files.
fn resumed_batch_size(dir: &Path) -> Option<usize> {
    if !dir.join("batches").is_dir() {
        return None;
    }
    let text = std::fs::read(dir.join("job.json")).ok()?;
    let m: Manifest = serde_json::from_slice(&text).ok()?;
    Some(m.batch_size).filter(|&k| k > 0)
}

/// The normalised result from every batch's sums, added in index order.
pub fn finish(manifest: Manifest, batches: &[BatchResult]) -> Result<JobResult> {
    let mut totals = Totals::default();
    for b in batches {
        totals.add(b)?;
    }
    let k = totals.normaliser()?;
    let per_pair = batches
        .iter()
        .flat_map(|b| &b.per_pair)
        .map(|p| PairResult {
            grid: crate::grids::PairGrid { heads: scaled(&p.grid.heads, k), positions: scaled(&p.grid.positions, k) },
            ..p.clone()
        })
        .collect();
    let clean: Vec<f64> = batches.iter().flat_map(|b| b.clean_values.iter().copied()).collect();
    let corrupted: Vec<f64> = batches.iter().flat_map(|b| b.corrupted_values.iter().copied()).collect();
    let baselines = crate::sanity::check_baselines(manifest.metric, &clean, &corrupted);
    Ok(JobResult {
        manifest,
        baselines,
        pair_metrics: clean.iter().copied().zip(corrupted.iter().copied()).collect(),
        clean_metric: totals.clean(),
        corrupted_metric: totals.corrupted(),
        grids: Grids { heads: scaled(&totals.heads, k), positions: scaled(&totals.positions, k) },
        per_pair,
        rows: RowsRun::default(),
        runtime_calls: 0,
        batches_resumed: 0,
        seconds: Timings::default(),
    })
}

/// Writes the manifest to `dir`/job.json (pretty JSON, atomically), creating `dir`.
pub fn save_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = serde_json::to_vec_pretty(m).map_err(|e| Error::Runtime(format!("serialising job.json: {e}")))?;
    attrpatch_onnx::fsutil::write_atomic(&dir.join("job.json"), &text)
}

/// Runs one batch; returns its result and the forward rows the call held.
fn run_batch(
    rt: &mut dyn Runtime,
    p: &Prepared<Augmented>,
    opts: &JobOptions,
    range: std::ops::Range<usize>,
    index: usize,
    key: String,
) -> Result<(BatchResult, usize)> {
    let t = p.tokens.slice(range.clone());
    let (feeds, forward_rows) = if p.graph.shared_rows {
        let plan = RowPlan::of(&t);
        (shared_inputs(&p.graph.token_inputs(), &t, &plan), plan.len())
    } else {
        (pair_inputs(&p.graph.token_inputs(), &t), 2 * t.clean_ids.len())
    };
    let mut out = rt.run(feeds)?;
    let row = |out: &mut HashMap<String, ArrayD<f32>>, n: &str| -> Result<Vec<f64>> {
        let v: Vec<f64> = runtime::take_output(out, n)?.iter().map(|&v| v as f64).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::Numeric(format!("'{n}' is {} for pair {}", v[i], range.start + i)));
        }
        Ok(v)
    };
    let clean = row(&mut out, names::CLEAN_LDS)?;
    let corrupted = row(&mut out, names::CORRUPTED_LDS)?;
    let (mc, mk) = (mean(&clean), mean(&corrupted));
    if crate::batches::indistinguishable(mc, mk) {
        return Err(Error::Numeric(format!(
            "batch {index} (pairs {}..{}): its clean and corrupted logit differences are equal ({mc} and {mk}, \
             within float32 precision); the normalised metric (ld - corrupted) / (clean - corrupted) divides by their \
             difference. Check that the corrupted prompts differ from the clean ones and that the answers are right",
            range.start, range.end
        )));
    }
    // The graph's gradient is of (mean ld_corr - CORR) / (CLEAN - CORR) over
    // this batch; undo that to get the attribution of each pair's ld_corr.
    let scale = clean.len() as f64 * (mc - mk);
    let mut grids = vec![PairGrid::default(); clean.len()];
    let outputs =
        read_grid_rows(&mut out, &p.graph.hooks, p.graph.heads.is_some(), clean.len(), &format!(" in batch {index}"))?;
    for g in &outputs {
        for (pair, grid) in grids.iter_mut().enumerate() {
            let row: Vec<f64> = g.row(pair).iter().map(|&v| scale * v as f64).collect();
            if g.is_heads {
                grid.heads.push(row)
            } else {
                grid.positions.push(row)
            }
        }
    }
    let pairs = grids
        .into_iter()
        .enumerate()
        .map(|(i, grid)| PairResult {
            index: range.start + i,
            clean_metric: clean[i],
            corrupted_metric: corrupted[i],
            grid,
        })
        .collect();
    Ok((BatchResult::new(index, key, pairs, opts.per_prompt)?, forward_rows))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

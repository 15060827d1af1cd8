//! The attribution job: prompts in, grids out. A prompt set runs in batches
//! (one runtime call each; the default is one batch for up to 64 pairs), each
//! batch's result is kept (and written to the output folder, so an
//! interrupted job resumes), and the grids are normalised once all are in.

use crate::augment::{augment_with, names, AugmentOptions, Augmented};
use crate::batches::{fingerprint, resumable, BatchResult, PairResult, Totals};
use crate::error::{Error, Result};
use crate::grids::{first_non_finite, scaled, Grids, PairGrid};
use crate::hooks::Hook;
use crate::onnx::graph::{model_hash, ContentHash};
use crate::onnx::pb::ModelProto;
use crate::onnx::OnnxModel;
use crate::prompts::{self, PromptPair, PromptTokenizer, TokenizedPrompts};
use crate::runtime::{self, ModelForRuntime, Runtime, RuntimeOptions, Value};
use ndarray::{Array2, Array3, ArrayD};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const DEFAULT_BATCH_SIZE: usize = 64;

pub struct JobOptions {
    pub model: PathBuf,
    /// Defaults to tokenizer.json beside the model.
    pub tokenizer: Option<PathBuf>,
    /// JSONL prompt pairs; the tutorial's IOI prompts when None.
    pub prompts: Option<PathBuf>,
    pub bos: bool,
    /// Overrides the head count read from the graph.
    pub heads: Option<usize>,
    pub runtime: RuntimeOptions,
    /// Pairs per runtime call.
    pub batch_size: usize,
    /// Keep each pair's grids.
    pub per_prompt: bool,
    /// Run only this part of the batches.
    pub shard: Option<Shard>,
    /// Where batch results are written and resumed from.
    pub work_dir: Option<PathBuf>,
    pub metric: crate::augment::Metric,
    pub hooks: crate::hooks::HookKind,
    /// Token ids given directly (no tokenizer is read); `pairs` names them in the results.
    pub tokens: Option<(Vec<PromptPair>, TokenizedPrompts)>,
    pub progress: bool,
}

impl JobOptions {
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
        };
        self.tokens = Some((vec![unnamed; n], tokens));
    }

    pub fn new(model: PathBuf) -> Self {
        JobOptions {
            model,
            tokenizer: None,
            prompts: None,
            bos: false,
            heads: None,
            runtime: RuntimeOptions::default(),
            batch_size: DEFAULT_BATCH_SIZE,
            per_prompt: false,
            shard: None,
            work_dir: None,
            tokens: None,
            metric: Default::default(),
            hooks: crate::hooks::HookKind::AttnOut,
            progress: false,
        }
    }
}

/// Shard `index` of `count` (0-based, as Slurm array and Kubernetes indexed jobs number them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
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

/// How a result's grids were computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Method {
    /// The linear estimate: gradient at the corrupted run times (clean - corrupted).
    #[default]
    Attribution,
    /// Exact activation patching: one patched forward pass per grid cell.
    ExactPatching,
    /// Integrated gradients along the straight line from the corrupted to the
    /// clean activation of each layer, midpoint rule with `steps` points.
    IntegratedGradients { steps: usize },
}

impl Method {
    pub fn label(&self) -> String {
        match self {
            Method::Attribution => "Attribution patching".into(),
            Method::ExactPatching => "Activation patching (exact)".into(),
            Method::IntegratedGradients { steps } => format!("Integrated gradients ({steps} steps)"),
        }
    }
}

/// What a merge needs besides the batch files; written as job.json. Its
/// identity fields (`Manifest::identity`) are everything that decides a
/// batch's numbers: `--resume` reuses a batch file and `merge` combines
/// shards only when they agree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub method: Method,
    pub model: String,
    /// `onnx::graph::model_hash` of the loaded model (graph and weights).
    #[serde(default)]
    pub model_hash: String,
    /// Hash of the tokenizer file's bytes, or "token ids given".
    #[serde(default)]
    pub tokenizer_hash: String,
    /// Hash of every pair's token ids, lengths and answers.
    #[serde(default)]
    pub tokens_hash: String,
    #[serde(default)]
    pub bos: bool,
    #[serde(default)]
    pub metric: crate::augment::Metric,
    #[serde(default = "default_hooks")]
    pub hooks_kind: crate::hooks::HookKind,
    pub runtime: String,
    pub n_heads: usize,
    pub hooks: Vec<Hook>,
    pub seq_len: usize,
    pub token_labels: Vec<String>,
    pub prompts: Vec<PromptPair>,
    pub batch_size: usize,
    pub n_batches: usize,
    pub shard: Option<Shard>,
}

impl Manifest {
    /// The manifest of a prepared job (its runtime is named once a session exists).
    pub fn new<G: JobGraph>(opts: &JobOptions, p: &Prepared<G>, method: Method, batch_size: usize) -> Self {
        Manifest {
            method,
            model: opts.model.display().to_string(),
            model_hash: p.model_hash.clone(),
            tokenizer_hash: p.tokenizer_hash.clone(),
            tokens_hash: tokens_hash(&p.tokens),
            bos: opts.bos,
            metric: opts.metric,
            hooks_kind: opts.hooks.clone(),
            runtime: String::new(),
            n_heads: p.graph.heads().unwrap_or(0),
            hooks: p.graph.hooks().to_vec(),
            seq_len: p.tokens.seq_len,
            token_labels: p.tokens.clean_tokens.first().cloned().unwrap_or_default(),
            prompts: p.pairs.clone(),
            batch_size,
            n_batches: p.pairs.len().div_ceil(batch_size.max(1)),
            shard: opts.shard,
        }
    }

    /// The fields that decide a batch's numbers, by name: the model's content,
    /// the tokenizer, the token ids, BOS, metric, hook set, head count, method
    /// (with IG's steps) and the batch layout. Not the model's path, the
    /// runtime or the shard.
    pub fn identity(&self) -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        vec![
            ("model_hash", json!(self.model_hash)),
            ("tokenizer_hash", json!(self.tokenizer_hash)),
            ("tokens_hash", json!(self.tokens_hash)),
            ("bos", json!(self.bos)),
            ("metric", json!(self.metric)),
            ("hooks_kind", json!(self.hooks_kind)),
            ("hooks", json!(self.hooks)),
            ("n_heads", json!(self.n_heads)),
            ("method", json!(self.method)),
            ("seq_len", json!(self.seq_len)),
            ("prompts", json!(self.prompts)),
            ("batch_size", json!(self.batch_size)),
            ("n_batches", json!(self.n_batches)),
        ]
    }

    /// A hash of `identity`, the job's part of every batch key.
    pub fn job_hash(&self) -> String {
        let mut h = ContentHash::default();
        for (name, value) in self.identity() {
            h.write_str(name);
            h.write_str(&value.to_string());
        }
        h.finish()
    }

    /// The key a batch file of this job must carry.
    pub fn batch_key(&self, index: usize) -> String {
        fingerprint(&[self.job_hash().as_bytes(), &(index as u64).to_le_bytes()])
    }

    /// The first identity field in which `other` differs: its name and both values.
    pub fn first_difference(&self, other: &Manifest) -> Option<(&'static str, String, String)> {
        let short = |v: &serde_json::Value| {
            let s = v.to_string();
            if s.chars().count() > 80 {
                format!("{}...", s.chars().take(77).collect::<String>())
            } else {
                s
            }
        };
        self.identity()
            .into_iter()
            .zip(other.identity())
            .find(|((_, a), (_, b))| a != b)
            .map(|((n, a), (_, b))| (n, short(&a), short(&b)))
    }
}

pub struct JobResult {
    pub manifest: Manifest,
    pub clean_logit_diff: f64,
    pub corrupted_logit_diff: f64,
    /// Normalised grids over the whole prompt set.
    pub grids: Grids,
    /// Each pair's share of `grids` (normalised), when asked for and kept in memory.
    pub per_pair: Vec<PairResult>,
    pub runtime_calls: usize,
    pub batches_resumed: usize,
    pub seconds: Timings,
}

#[derive(Default, Debug, Clone, Serialize)]
pub struct Timings {
    pub load: f64,
    pub rewrite: f64,
    pub session: f64,
    pub run: f64,
}

fn default_hooks() -> crate::hooks::HookKind {
    crate::hooks::HookKind::AttnOut
}

pub fn default_tokenizer(model: &Path) -> PathBuf {
    model.parent().unwrap_or(Path::new(".")).join("tokenizer.json")
}

/// The prompt pairs of a job and what turns them into token ids.
pub struct PromptSource {
    pub pairs: Vec<PromptPair>,
    tokenizer: Option<PromptTokenizer>,
    /// Hash of the tokenizer file's bytes, or "token ids given".
    tokenizer_hash: String,
}

impl PromptSource {
    /// Reads the tokenizer and the prompt file (or takes the token ids given).
    pub fn read(opts: &JobOptions) -> Result<Self> {
        let (tokenizer, tokenizer_hash) = match &opts.tokens {
            Some(_) => (None, "token ids given".to_string()),
            None => {
                let path = opts.tokenizer.clone().unwrap_or_else(|| default_tokenizer(&opts.model));
                let tok = PromptTokenizer::from_file(&path)?;
                let mut h = ContentHash::default();
                h.write(&std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
                (Some(tok), h.finish())
            }
        };
        let pairs = match (&opts.tokens, &opts.prompts) {
            (Some((pairs, _)), _) => pairs.clone(),
            (None, Some(p)) => prompts::read_jsonl(p)?,
            (None, None) => prompts::ioi_default(),
        };
        Ok(PromptSource { pairs, tokenizer, tokenizer_hash })
    }

    /// Token ids checked against the model's vocabulary.
    pub fn tokenize(&self, opts: &JobOptions, vocab: usize) -> Result<TokenizedPrompts> {
        match (&opts.tokens, &self.tokenizer) {
            (_, Some(tok)) => prompts::tokenize(tok, &self.pairs, opts.bos, vocab),
            (Some((_, t)), None) => {
                check_token_ids(t, vocab)?;
                Ok(t.clone())
            }
            (None, None) => Err(Error::Input("no tokenizer and no token ids".into())),
        }
    }
}

/// What the attribution job and the patching jobs need of their rewritten graph.
pub trait JobGraph {
    fn proto_mut(&mut self) -> &mut ModelProto;
    fn vocab(&self) -> usize;
    fn hooks(&self) -> &[Hook];
    /// Heads per hook; None for hooks that do not split into heads.
    fn heads(&self) -> Option<usize>;
    fn token_inputs(&self) -> TokenInputs<'_>;
}

impl JobGraph for Augmented {
    fn proto_mut(&mut self) -> &mut ModelProto {
        &mut self.proto
    }
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn hooks(&self) -> &[Hook] {
        &self.hooks
    }
    fn heads(&self) -> Option<usize> {
        self.heads
    }
    fn token_inputs(&self) -> TokenInputs<'_> {
        TokenInputs {
            ids: &self.input_ids,
            mask: self.attention_mask.as_ref(),
            positions: self.position_ids.as_ref(),
            vocab: self.vocab,
        }
    }
}

/// A job ready to run: the model loaded, hashed and rewritten, the prompts
/// tokenized, the graph handed over for a runtime session.
pub struct Prepared<G> {
    pub graph: G,
    pub pairs: Vec<PromptPair>,
    pub tokens: TokenizedPrompts,
    pub model_hash: String,
    pub tokenizer_hash: String,
    for_runtime: Option<ModelForRuntime>,
    pub seconds: Timings,
}

/// Loads the model, rewrites it with `build` and tokenizes the prompts: the
/// steps every job shares, timed.
pub fn prepare<G: JobGraph>(opts: &JobOptions, build: impl FnOnce(OnnxModel) -> Result<G>) -> Result<Prepared<G>> {
    // The model is named first in messages: its tokenizer is looked up beside it.
    std::fs::metadata(&opts.model).map_err(|e| Error::io(&opts.model, e))?;
    let mut seconds = Timings::default();
    let clock = Instant::now();
    // Read before the model: a wrong tokenizer path fails before the slow part.
    let source = PromptSource::read(opts)?;
    let model = OnnxModel::load(&opts.model)?;
    let model_hash = model_hash(&model.proto);
    seconds.load = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let mut graph = build(model)?;
    let tokens = source.tokenize(opts, graph.vocab())?;
    let for_runtime = Some(runtime::prepare(graph.proto_mut(), &opts.runtime));
    seconds.rewrite = clock.elapsed().as_secs_f64();
    Ok(Prepared {
        graph,
        pairs: source.pairs,
        tokens,
        model_hash,
        tokenizer_hash: source.tokenizer_hash,
        for_runtime,
        seconds,
    })
}

impl<G> Prepared<G> {
    /// Starts the runtime session on the rewritten graph (once), timed.
    pub fn session(&mut self, opts: &RuntimeOptions) -> Result<Box<dyn Runtime>> {
        let clock = Instant::now();
        let model = self
            .for_runtime
            .take()
            .ok_or_else(|| Error::Runtime("the job's runtime session was already made".into()))?;
        let rt = runtime::create_from(model, opts)?;
        self.seconds.session = clock.elapsed().as_secs_f64();
        Ok(rt)
    }
}

/// Runs the job; for a shard, returns None after writing its batches.
pub fn run_job(opts: &JobOptions) -> Result<Option<JobResult>> {
    let mut p = prepare(opts, |model| {
        augment_with(
            model,
            AugmentOptions {
                raw_outputs: false,
                grid_outputs: true,
                heads: opts.heads,
                metric: opts.metric,
                hooks: opts.hooks.clone(),
            },
        )
    })?;
    let batch_size = if opts.batch_size == 0 { p.pairs.len() } else { opts.batch_size };
    let mut manifest = Manifest::new(opts, &p, Method::Attribution, batch_size);
    let mine = opts.shard.map_or(0..manifest.n_batches, |s| s.batches(manifest.n_batches));
    let keys: Vec<String> = (0..manifest.n_batches).map(|i| manifest.batch_key(i)).collect();

    // Batches finished by an earlier run of the same job are not recomputed.
    let mut done: HashMap<usize, BatchResult> = HashMap::new();
    if let Some(dir) = &opts.work_dir {
        done.extend(mine.clone().filter_map(|i| resumable(dir, i, &keys[i]).map(|b| (i, b))));
    }
    let resumed = done.len();
    let mut rt = if done.len() < mine.len() { Some(p.session(&opts.runtime)?) } else { None };

    let bar = progress_bar(opts.progress && mine.len() > 1, mine.len() as u64, "batches");
    let clock = Instant::now();
    let mut calls = 0;
    let mut batches = vec![];
    for i in mine.clone() {
        let b = match (done.remove(&i), rt.as_mut()) {
            (Some(b), _) => b,
            (None, Some(rt)) => {
                let range = i * batch_size..((i + 1) * batch_size).min(p.pairs.len());
                calls += 1;
                let b = run_batch(rt.as_mut(), &p, opts, range, i, keys[i].clone())?;
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
    r.seconds = p.seconds;
    Ok(Some(r))
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
    Ok(JobResult {
        manifest,
        clean_logit_diff: totals.clean(),
        corrupted_logit_diff: totals.corrupted(),
        grids: Grids { heads: scaled(&totals.heads, k), positions: scaled(&totals.positions, k) },
        per_pair,
        runtime_calls: 0,
        batches_resumed: 0,
        seconds: Timings::default(),
    })
}

pub fn save_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = serde_json::to_vec_pretty(m).map_err(|e| Error::Runtime(format!("serialising job.json: {e}")))?;
    crate::fsutil::write_atomic(&dir.join("job.json"), &text)
}

pub(crate) fn progress_bar(show: bool, len: u64, unit: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {unit}, {{elapsed}} elapsed, eta {{eta}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// Every pair's token ids, length and answers, hashed.
fn tokens_hash(t: &TokenizedPrompts) -> String {
    let mut h = ContentHash::default();
    let ints = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for p in 0..t.clean_ids.len() {
        h.write(&ints(&t.clean_ids[p]));
        h.write(&ints(&t.corrupted_ids[p]));
        h.write(&ints(&[t.correct_ids[p], t.incorrect_ids[p], t.lengths[p] as i64]));
    }
    h.write(&(t.seq_len as u64).to_le_bytes());
    h.finish()
}

/// One layer's grid output of a run: `rows` rows of `width` values.
pub(crate) struct GridRows {
    /// Index into the hooks.
    pub hook: usize,
    pub is_heads: bool,
    pub width: usize,
    pub values: Vec<f32>,
}

impl GridRows {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.width..(r + 1) * self.width]
    }
}

/// Takes every hook's per-row grid outputs (heads when `heads`, and
/// positions) from a run's outputs, refusing non-finite values; `context`
/// ends the message (e.g. " in batch 3").
pub(crate) fn read_grid_rows(
    out: &mut HashMap<String, ArrayD<f32>>,
    hooks: &[Hook],
    heads: bool,
    rows: usize,
    context: &str,
) -> Result<Vec<GridRows>> {
    let mut grids = vec![];
    for (k, h) in hooks.iter().enumerate() {
        let mut wanted = vec![];
        if heads {
            wanted.push((names::heads(h.layer), true));
        }
        wanted.push((names::positions(h.layer), false));
        for (name, is_heads) in wanted {
            let a = runtime::take_output(out, &name)?;
            if let Some((i, v)) = first_non_finite(&a) {
                return Err(Error::Numeric(format!(
                    "'{name}' (layer {}, hook '{}') holds {v} at flat index {i}{context}: the activations or \
                     gradients of that layer are not finite",
                    h.layer, h.tensor
                )));
            }
            let values: Vec<f32> = a.iter().copied().collect();
            let width = values.len().checked_div(rows).unwrap_or(0);
            grids.push(GridRows { hook: k, is_heads, width, values });
        }
    }
    Ok(grids)
}

fn run_batch(
    rt: &mut dyn Runtime,
    p: &Prepared<Augmented>,
    opts: &JobOptions,
    range: std::ops::Range<usize>,
    index: usize,
    key: String,
) -> Result<BatchResult> {
    let t = p.tokens.slice(range.clone());
    let mut out = rt.run(pair_inputs(&p.graph.token_inputs(), &t, opts.metric))?;
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
            clean_logit_diff: clean[i],
            corrupted_logit_diff: corrupted[i],
            grid,
        })
        .collect();
    BatchResult::new(index, key, pairs, opts.per_prompt)
}

/// Token ids given directly must fit the model and form equal-length pairs.
fn check_token_ids(t: &TokenizedPrompts, vocab: usize) -> Result<()> {
    let all = t.clean_ids.iter().chain(&t.corrupted_ids).flatten().chain(&t.correct_ids).chain(&t.incorrect_ids);
    if let Some(bad) = all.copied().find(|&id| id < 0 || id as usize >= vocab) {
        return Err(Error::Input(format!("token id {bad} is outside the model's vocabulary of {vocab}")));
    }
    let mut rows = t.clean_ids.iter().chain(&t.corrupted_ids);
    let lengths_ok = t.lengths.len() == t.clean_ids.len() && t.lengths.iter().all(|&l| l >= 1 && l <= t.seq_len);
    if t.clean_ids.is_empty() || !lengths_ok || rows.any(|r| r.len() != t.seq_len) {
        return Err(Error::Input(format!(
            "every prompt must have {} (padded) tokens and a length in 1..={}",
            t.seq_len, t.seq_len
        )));
    }
    Ok(())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// A graph's token inputs (clean and corrupted names of each model input).
pub struct TokenInputs<'a> {
    pub ids: &'a crate::augment::TokenInput,
    pub mask: Option<&'a crate::augment::TokenInput>,
    pub positions: Option<&'a crate::augment::TokenInput>,
    pub vocab: usize,
}

/// One row per pair: clean and corrupted token inputs, the last-position and
/// answer one-hots, and equal weights.
pub fn pair_inputs(inputs: &TokenInputs, t: &TokenizedPrompts, metric: crate::augment::Metric) -> Vec<(String, Value)> {
    let (w_correct, w_incorrect) = metric.answer_weights();
    let b = t.clean_ids.len();
    let s = t.seq_len;
    let ids = |rows: &Vec<Vec<i64>>| Array2::from_shape_fn((b, s), |(r, c)| rows[r][c]).into_dyn();
    let mut pos = Array3::<f32>::zeros((b, 1, s));
    let mut ans = Array3::<f32>::zeros((b, inputs.vocab, 1));
    for p in 0..b {
        pos[[p, 0, t.lengths[p] - 1]] = 1.0;
        ans[[p, t.correct_ids[p] as usize, 0]] += w_correct;
        ans[[p, t.incorrect_ids[p] as usize, 0]] += w_incorrect;
    }
    let weights = Array2::<f32>::from_elem((b, 1), 1.0 / b as f32);
    let mut v = vec![
        (inputs.ids.clean.clone(), Value::I64(ids(&t.clean_ids))),
        (inputs.ids.corrupted.clone(), Value::I64(ids(&t.corrupted_ids))),
    ];
    if let Some(m) = inputs.mask {
        let mask = Array2::from_shape_fn((b, s), |(r, c)| (c < t.lengths[r]) as i64).into_dyn();
        v.push((m.clean.clone(), Value::I64(mask.clone())));
        v.push((m.corrupted.clone(), Value::I64(mask)));
    }
    if let Some(p) = inputs.positions {
        let positions = Array2::from_shape_fn((b, s), |(_, c)| c as i64).into_dyn();
        v.push((p.clean.clone(), Value::I64(positions.clone())));
        v.push((p.corrupted.clone(), Value::I64(positions)));
    }
    v.push((names::POSITION_ONEHOT.into(), Value::F32(pos.into_dyn())));
    v.push((names::ANSWER_ONEHOT.into(), Value::F32(ans.into_dyn())));
    v.push((names::PAIR_WEIGHTS.into(), Value::F32(weights.into_dyn())));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            method: Method::Attribution,
            model: "m.onnx".into(),
            model_hash: "aa".into(),
            tokenizer_hash: "bb".into(),
            tokens_hash: "cc".into(),
            bos: false,
            metric: crate::augment::Metric::LogitDiff,
            hooks_kind: crate::hooks::HookKind::AttnOut,
            runtime: "onnxruntime (CPU)".into(),
            n_heads: 4,
            hooks: vec![],
            seq_len: 14,
            token_labels: vec![],
            prompts: vec![],
            batch_size: 64,
            n_batches: 1,
            shard: None,
        }
    }

    /// Each thing that decides a batch's numbers changes its key and is named
    /// as the difference; the model's path, the runtime and the shard do not.
    #[test]
    fn batch_key_covers_everything_that_decides_the_numbers() {
        let base = manifest();
        type Change = (&'static str, fn(&mut Manifest));
        let changes: Vec<Change> = vec![
            ("model_hash", |m| m.model_hash = "ab".into()),
            ("tokenizer_hash", |m| m.tokenizer_hash = "bc".into()),
            ("tokens_hash", |m| m.tokens_hash = "cd".into()),
            ("bos", |m| m.bos = true),
            ("metric", |m| m.metric = crate::augment::Metric::Kl),
            ("hooks_kind", |m| m.hooks_kind = crate::hooks::HookKind::Resid),
            ("hooks", |m| {
                m.hooks = vec![Hook {
                    layer: 0,
                    node: "n".into(),
                    op_type: "MatMul".into(),
                    tensor: "t".into(),
                    matched_by: String::new(),
                }]
            }),
            ("n_heads", |m| m.n_heads = 2),
            ("method", |m| m.method = Method::IntegratedGradients { steps: 4 }),
            ("seq_len", |m| m.seq_len = 15),
            ("batch_size", |m| m.batch_size = 2),
            ("n_batches", |m| m.n_batches = 2),
        ];
        for (field, change) in changes {
            let mut m = base.clone();
            change(&mut m);
            assert_ne!(m.batch_key(0), base.batch_key(0), "{field} is not in the key");
            assert_eq!(base.first_difference(&m).map(|d| d.0), Some(field));
        }
        let mut steps = base.clone();
        steps.method = Method::IntegratedGradients { steps: 4 };
        let mut other_steps = base.clone();
        other_steps.method = Method::IntegratedGradients { steps: 8 };
        assert_ne!(steps.batch_key(0), other_steps.batch_key(0), "IG steps are in the key");
        let mut same = base.clone();
        same.model = "elsewhere/m.onnx".into();
        same.runtime = "tract (CPU)".into();
        same.shard = Some(Shard { index: 1, count: 2 });
        assert_eq!(same.batch_key(0), base.batch_key(0));
        assert_ne!(base.batch_key(0), base.batch_key(1));
        assert!(base.first_difference(&same).is_none());
    }
}

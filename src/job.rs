//! The attribution job: prompts in, grids out. A prompt set runs in batches
//! (one runtime call each; the default is one batch for up to 64 pairs), each
//! batch's result is kept (and written to the output folder, so an
//! interrupted job resumes), and the grids are normalised once all are in.

use crate::augment::{augment_with, names, AugmentOptions, Augmented};
use crate::batches::{fingerprint, resumable, BatchResult, PairResult, Totals};
use crate::error::{Error, Result};
use crate::grids::{first_non_finite, scaled, Grids, PairGrid};
use crate::hooks::Hook;
use crate::onnx::OnnxModel;
use crate::prompts::{self, PromptPair, PromptTokenizer, TokenizedPrompts};
use crate::runtime::{self, Runtime, RuntimeOptions, Value};
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
        let bad = || Error::Input(format!("--shard '{s}': expected K/N with 0 <= K < N, e.g. 0/4"));
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

/// What a merge needs besides the batch files; written as job.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub method: Method,
    pub model: String,
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
}

impl PromptSource {
    /// Reads the tokenizer and the prompt file (or takes the token ids given).
    pub fn read(opts: &JobOptions) -> Result<Self> {
        let tokenizer = match &opts.tokens {
            Some(_) => None,
            None => Some(PromptTokenizer::from_file(
                &opts.tokenizer.clone().unwrap_or_else(|| default_tokenizer(&opts.model)),
            )?),
        };
        let pairs = match (&opts.tokens, &opts.prompts) {
            (Some((pairs, _)), _) => pairs.clone(),
            (None, Some(p)) => prompts::read_jsonl(p)?,
            (None, None) => prompts::ioi_default(),
        };
        Ok(PromptSource { pairs, tokenizer })
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

/// Runs the job; for a shard, returns None after writing its batches.
pub fn run_job(opts: &JobOptions) -> Result<Option<JobResult>> {
    // The model is named first in messages: its tokenizer is looked up beside it.
    std::fs::metadata(&opts.model).map_err(|e| Error::io(&opts.model, e))?;
    let mut t = Timings::default();
    let clock = Instant::now();
    // Read before the model: a wrong tokenizer path fails before the slow part.
    let prompt_source = PromptSource::read(opts)?;
    // For ONNX Runtime the weights stay in the file: it reads them itself, once.
    let model = match opts.runtime.kind {
        runtime::RuntimeKind::Ort => OnnxModel::load_leaving_weights(&opts.model)?,
        runtime::RuntimeKind::Tract => OnnxModel::load(&opts.model)?,
    };
    let model_dir = model.dir().to_path_buf();
    t.load = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let model_path = model.path.clone();
    let aug = augment_with(
        model,
        AugmentOptions {
            raw_outputs: false,
            grid_outputs: true,
            heads: opts.heads,
            metric: opts.metric,
            hooks: opts.hooks.clone(),
        },
    )?;
    let tokens = prompt_source.tokenize(opts, aug.vocab)?;
    let pairs = prompt_source.pairs;
    // Hooks that do not split into heads (resid, mlp, patterns) have a positions grid only.
    let n_heads = match (opts.hooks.has_heads(), aug.heads) {
        (true, Some(h)) => h,
        (true, None) => return Err(Error::Model(format!("{}: no head count", model_path.display()))),
        (false, _) => 0,
    };
    let mut aug = aug;
    let mut for_runtime = runtime::prepare(&mut aug.proto, &opts.runtime);
    for_runtime.external_dir = Some(model_dir).filter(|_| opts.runtime.kind == runtime::RuntimeKind::Ort);
    t.rewrite = clock.elapsed().as_secs_f64();

    let batch_size = if opts.batch_size == 0 { pairs.len() } else { opts.batch_size };
    let n_batches = pairs.len().div_ceil(batch_size);
    let mine = opts.shard.map_or(0..n_batches, |s| s.batches(n_batches));
    let keys: Vec<String> = (0..n_batches).map(|i| batch_key(&opts.model, opts.bos, &tokens, i, batch_size)).collect();

    // Batches finished by an earlier run of the same job are not recomputed.
    let mut done: HashMap<usize, BatchResult> = HashMap::new();
    if let Some(dir) = &opts.work_dir {
        for i in mine.clone() {
            if let Some(b) = resumable(dir, i, &keys[i]) {
                done.insert(i, b);
            }
        }
    }
    let resumed = done.len();
    let clock = Instant::now();
    let mut rt = if done.len() < mine.len() { Some(runtime::create_from(for_runtime, &opts.runtime)?) } else { None };
    t.session = clock.elapsed().as_secs_f64();

    let bar = progress_bar(opts.progress && mine.len() > 1, mine.len() as u64, "batches");
    let clock = Instant::now();
    let mut calls = 0;
    let mut batches = vec![];
    for i in mine.clone() {
        let b = match done.remove(&i) {
            Some(b) => b,
            None => {
                let rt = rt.as_mut().expect("created when a batch is left to run");
                let range = i * batch_size..((i + 1) * batch_size).min(pairs.len());
                calls += 1;
                let b = run_batch(rt.as_mut(), &aug, &tokens, range, i, keys[i].clone(), opts.per_prompt, opts.metric)?;
                if let Some(dir) = &opts.work_dir {
                    b.save(dir)?;
                }
                b
            }
        };
        bar.inc(1);
        batches.push(b);
    }
    bar.finish_and_clear();
    t.run = clock.elapsed().as_secs_f64();

    let manifest = Manifest {
        method: Method::Attribution,
        model: opts.model.display().to_string(),
        metric: opts.metric,
        hooks_kind: opts.hooks.clone(),
        runtime: rt.as_ref().map_or_else(|| "none (all batches resumed)".into(), |r| r.describe()),
        n_heads,
        hooks: aug.hooks.clone(),
        seq_len: tokens.seq_len,
        token_labels: tokens.clean_tokens.first().cloned().unwrap_or_default(),
        prompts: pairs,
        batch_size,
        n_batches,
        shard: opts.shard,
    };
    if let Some(dir) = &opts.work_dir {
        save_manifest(dir, &manifest)?;
    }
    if opts.shard.is_some() {
        return Ok(None);
    }
    let mut r = finish(manifest, &batches)?;
    r.runtime_calls = calls;
    r.batches_resumed = resumed;
    r.seconds = t;
    Ok(Some(r))
}

/// The normalised result from every batch's sums, added in index order.
pub fn finish(manifest: Manifest, batches: &[BatchResult]) -> Result<JobResult> {
    let mut totals = Totals::default();
    for b in batches {
        totals.add(b);
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

fn batch_key(model: &Path, bos: bool, t: &TokenizedPrompts, i: usize, batch_size: usize) -> String {
    let range = i * batch_size..((i + 1) * batch_size).min(t.clean_ids.len());
    let model_id = std::fs::metadata(model).map(|m| format!("{}:{}", model.display(), m.len())).unwrap_or_default();
    let ids: Vec<i64> = range
        .clone()
        .flat_map(|p| t.clean_ids[p].iter().chain(&t.corrupted_ids[p]).chain([&t.correct_ids[p], &t.incorrect_ids[p]]))
        .copied()
        .collect();
    let id_bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    fingerprint(&[model_id.as_bytes(), &[bos as u8], &(i as u64).to_le_bytes(), &id_bytes])
}

fn run_batch(
    rt: &mut dyn Runtime,
    aug: &Augmented,
    all: &TokenizedPrompts,
    range: std::ops::Range<usize>,
    index: usize,
    key: String,
    keep_pairs: bool,
    metric: crate::augment::Metric,
) -> Result<BatchResult> {
    let t = all.slice(range.clone());
    let mut out = rt.run(build_inputs_for(aug, &t, metric))?;
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
    for h in &aug.hooks {
        let wanted = if aug.heads.is_some() {
            vec![(names::heads(h.layer), true), (names::positions(h.layer), false)]
        } else {
            vec![(names::positions(h.layer), false)]
        };
        for (name, is_heads) in wanted {
            let a = runtime::take_output(&mut out, &name)?;
            if let Some((i, v)) = first_non_finite(&a) {
                return Err(Error::Numeric(format!(
                    "'{name}' (layer {}, hook '{}') holds {v} at flat index {i} in batch {index}: the activations or \
                     gradients of that layer are not finite",
                    h.layer, h.tensor
                )));
            }
            let width = a.len() / grids.len();
            let rows = a.as_slice().map(|s| s.to_vec()).unwrap_or_else(|| a.iter().copied().collect());
            for (pair, grid) in grids.iter_mut().enumerate() {
                let row: Vec<f64> = rows[pair * width..(pair + 1) * width].iter().map(|&v| scale * v as f64).collect();
                if is_heads {
                    grid.heads.push(row)
                } else {
                    grid.positions.push(row)
                }
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
    Ok(BatchResult::new(index, key, pairs, keep_pairs))
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

/// The token inputs of both copies and the logit-difference metric's selectors.
pub fn build_inputs(aug: &Augmented, t: &TokenizedPrompts) -> Vec<(String, Value)> {
    build_inputs_for(aug, t, crate::augment::Metric::LogitDiff)
}

/// The token inputs of both copies and the metric's one-hot selectors.
pub fn build_inputs_for(aug: &Augmented, t: &TokenizedPrompts, metric: crate::augment::Metric) -> Vec<(String, Value)> {
    let inputs = TokenInputs {
        ids: &aug.input_ids,
        mask: aug.attention_mask.as_ref(),
        positions: aug.position_ids.as_ref(),
        vocab: aug.vocab,
    };
    pair_inputs(&inputs, t, metric)
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

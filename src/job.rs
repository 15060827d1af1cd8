//! The attribution job: prompts in, grids out, in one runtime call.

use crate::augment::{augment, names, Augmented};
use crate::error::{Error, Result};
use crate::grids::{attribution_grids, first_non_finite, Grids};
use crate::hooks::Hook;
use crate::onnx::OnnxModel;
use crate::prompts::{self, PromptPair, PromptTokenizer, TokenizedPrompts};
use crate::runtime::{self, RuntimeOptions, Value};
use ndarray::{Array2, Array3, ArrayD};
use prost::Message;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
}

pub struct JobResult {
    pub clean_logit_diff: f64,
    pub corrupted_logit_diff: f64,
    pub grids: Grids,
    pub n_heads: usize,
    pub hooks: Vec<Hook>,
    pub pairs: Vec<PromptPair>,
    pub tokens: TokenizedPrompts,
    /// Token strings of the first clean prompt, for the positions axis.
    pub token_labels: Vec<String>,
    pub runtime: String,
    pub runtime_calls: usize,
    pub seconds: Timings,
}

#[derive(Default, Debug, Clone, serde::Serialize)]
pub struct Timings {
    pub load: f64,
    pub rewrite: f64,
    pub session: f64,
    pub run: f64,
}

pub fn default_tokenizer(model: &Path) -> PathBuf {
    model.parent().unwrap_or(Path::new(".")).join("tokenizer.json")
}

pub fn run_job(opts: &JobOptions) -> Result<JobResult> {
    let mut t = Timings::default();
    let clock = Instant::now();
    let tok_path = opts.tokenizer.clone().unwrap_or_else(|| default_tokenizer(&opts.model));
    let tok = PromptTokenizer::from_file(&tok_path)?;
    let pairs = match &opts.prompts {
        Some(p) => prompts::read_jsonl(p)?,
        None => prompts::ioi_default(),
    };
    let model = OnnxModel::load(&opts.model)?;
    t.load = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let model_path = model.path.clone();
    let aug = augment(model)?;
    let tokens = prompts::tokenize(&tok, &pairs, opts.bos, aug.vocab)?;
    let n_heads = match opts.heads {
        Some(h) => h,
        None => aug.heads.ok_or_else(|| {
            Error::Model(format!(
                "{}: could not read the number of attention heads from the graph around '{}'; pass --heads N",
                model_path.display(),
                aug.hooks[0].tensor
            ))
        })?,
    };
    let bytes = aug.proto.encode_to_vec();
    t.rewrite = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let mut rt = runtime::create(&bytes, &opts.runtime)?;
    t.session = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let inputs = build_inputs(&aug, &tokens);
    let mut out = rt.run(inputs)?;
    t.run = clock.elapsed().as_secs_f64();

    let scalar = |out: &std::collections::HashMap<String, ArrayD<f32>>, n: &str| -> Result<f64> {
        out.get(n)
            .and_then(|a| a.iter().next().copied())
            .map(|v| v as f64)
            .ok_or_else(|| Error::Runtime(format!("the runtime returned no '{n}'")))
    };
    let clean = scalar(&out, names::CLEAN_LD)?;
    let corrupted = scalar(&out, names::CORRUPTED_LD)?;
    check_baselines(clean, corrupted)?;
    let (mut clean_acts, mut corrupted_acts, mut grads) = (vec![], vec![], vec![]);
    for h in &aug.hooks {
        let wanted = [
            (names::clean_act(h.layer), &mut clean_acts),
            (names::corrupted_act(h.layer), &mut corrupted_acts),
            (names::grad(h.layer), &mut grads),
        ];
        for (name, list) in wanted {
            let a = out.remove(&name).ok_or_else(|| Error::Runtime(format!("the runtime returned no '{name}'")))?;
            if let Some((i, v)) = first_non_finite(&a) {
                return Err(Error::Numeric(format!(
                    "'{name}' (layer {}, hook '{}') holds {v} at flat index {i}",
                    h.layer, h.tensor
                )));
            }
            list.push(a);
        }
    }
    let grids = attribution_grids(&clean_acts, &corrupted_acts, &grads, tokens.seq_len, n_heads)?;
    let token_labels = tokens.clean_tokens.first().cloned().unwrap_or_default();
    Ok(JobResult {
        clean_logit_diff: clean,
        corrupted_logit_diff: corrupted,
        grids,
        n_heads,
        hooks: aug.hooks,
        pairs,
        tokens,
        token_labels,
        runtime: rt.describe(),
        runtime_calls: 1,
        seconds: t,
    })
}

fn check_baselines(clean: f64, corrupted: f64) -> Result<()> {
    if !clean.is_finite() || !corrupted.is_finite() {
        return Err(Error::Numeric(format!(
            "the baselines are not finite (clean logit diff {clean}, corrupted {corrupted})"
        )));
    }
    if clean == corrupted {
        return Err(Error::Numeric(format!(
            "the clean and corrupted logit differences are equal ({clean}); the normalised metric \
             (ld - corrupted) / (clean - corrupted) divides by their difference. Check that the corrupted prompts differ \
             from the clean ones and that the answers are right"
        )));
    }
    Ok(())
}

/// The token inputs of both copies and the metric's one-hot selectors.
pub fn build_inputs(aug: &Augmented, t: &TokenizedPrompts) -> Vec<(String, Value)> {
    let b = t.clean_ids.len();
    let s = t.seq_len;
    let ids = |rows: &Vec<Vec<i64>>| Array2::from_shape_fn((b, s), |(r, c)| rows[r][c]).into_dyn();
    let mut pos = Array3::<f32>::zeros((b, 1, s));
    let mut ans = Array3::<f32>::zeros((b, aug.vocab, 1));
    for p in 0..b {
        pos[[p, 0, s - 1]] = 1.0;
        ans[[p, t.correct_ids[p] as usize, 0]] += 1.0;
        ans[[p, t.incorrect_ids[p] as usize, 0]] -= 1.0;
    }
    let weights = Array2::<f32>::from_elem((b, 1), 1.0 / b as f32);
    let mut v = vec![
        (aug.input_ids.clean.clone(), Value::I64(ids(&t.clean_ids))),
        (aug.input_ids.corrupted.clone(), Value::I64(ids(&t.corrupted_ids))),
    ];
    if let Some(m) = &aug.attention_mask {
        v.push((m.clean.clone(), Value::I64(ArrayD::from_elem(vec![b, s], 1i64))));
        v.push((m.corrupted.clone(), Value::I64(ArrayD::from_elem(vec![b, s], 1i64))));
    }
    v.push((names::POSITION_ONEHOT.into(), Value::F32(pos.into_dyn())));
    v.push((names::ANSWER_ONEHOT.into(), Value::F32(ans.into_dyn())));
    v.push((names::PAIR_WEIGHTS.into(), Value::F32(weights.into_dyn())));
    v
}

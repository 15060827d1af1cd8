//! What identifies a job: how its grids are computed (`Method`) and the
//! manifest written as job.json, whose identity fields decide whether a
//! batch file may be resumed or merged.

use super::prepare::{JobGraph, Prepared};
use super::{JobOptions, Shard};
use crate::batches::fingerprint;
use crate::hooks::Hook;
use crate::prompts::{PromptPair, TokenizedPrompts};
use attrpatch_onnx::hash::ContentHash;
use serde::{Deserialize, Serialize};

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
    IntegratedGradients {
        /// Points of the midpoint rule.
        steps: usize,
    },
    /// AtP* (`atp_star`): the QK-fix of queries and keys, and GradDrop's
    /// sweeps when `grad_drop`.
    AtpStar {
        /// Whether GradDrop's sweeps ran.
        grad_drop: bool,
    },
}

impl Method {
    /// Whether the grids hold magnitudes (AtP*'s GradDrop), not signed effects.
    pub fn magnitudes(&self) -> bool {
        matches!(self, Method::AtpStar { grad_drop: true })
    }

    /// How the method is named in reports and figures.
    pub fn label(&self) -> String {
        match self {
            Method::Attribution => "Attribution patching".into(),
            Method::ExactPatching => "Activation patching (exact)".into(),
            Method::IntegratedGradients { steps } => format!("Integrated gradients ({steps} steps)"),
            Method::AtpStar { grad_drop: true } => "AtP* (QK-fix, GradDrop)".into(),
            Method::AtpStar { grad_drop: false } => "AtP* (QK-fix only)".into(),
        }
    }
}

/// What a merge needs besides the batch files; written as job.json. Its
/// identity fields (`Manifest::identity`) are everything that decides a
/// batch's numbers: `--resume` reuses a batch file and `merge` combines
/// shards only when they agree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// How the grids were computed.
    #[serde(default)]
    pub method: Method,
    /// The model's path (or `IN_MEMORY_MODEL`).
    pub model: String,
    /// `onnx::hash::model_hash` of the loaded model (graph and weights).
    #[serde(default)]
    pub model_hash: String,
    /// Hash of the tokenizer file's bytes, or "token ids given".
    #[serde(default)]
    pub tokenizer_hash: String,
    /// Hash of every pair's token ids, lengths and answers.
    #[serde(default)]
    pub tokens_hash: String,
    /// Whether BOS was prepended to every prompt.
    #[serde(default)]
    pub bos: bool,
    /// The metric attributed.
    #[serde(default)]
    pub metric: crate::augment::Metric,
    /// The hook choice.
    #[serde(default = "default_hooks")]
    pub hooks_kind: crate::hooks::HookKind,
    /// What ran the graph, e.g. "onnxruntime 1.31.1 (CPU)".
    pub runtime: String,
    /// Heads per hook (0 for hooks without heads).
    pub n_heads: usize,
    /// The hooks, one per layer.
    pub hooks: Vec<Hook>,
    /// Tokens per (padded) prompt.
    pub seq_len: usize,
    /// The shortest pair's length (pairs are right-padded to `seq_len`).
    #[serde(default)]
    pub min_len: usize,
    /// The first clean prompt's tokens (the positions grid's labels).
    pub token_labels: Vec<String>,
    /// The prompt pairs (empty texts when token ids were given).
    pub prompts: Vec<PromptPair>,
    /// Pairs (or patching rows) per runtime call.
    pub batch_size: usize,
    /// Runtime calls the job was split into.
    pub n_batches: usize,
    /// The shard this process ran, if any.
    pub shard: Option<Shard>,
    /// How the rows per call were chosen (not part of the identity: the
    /// layout it gives is, through `batch_size`).
    #[serde(default)]
    pub memory: Option<crate::memory::Sizing>,
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
            min_len: p.tokens.lengths.iter().copied().min().unwrap_or(p.tokens.seq_len),
            token_labels: p.tokens.clean_tokens.first().cloned().unwrap_or_default(),
            prompts: p.pairs.clone(),
            batch_size,
            n_batches: p.pairs.len().div_ceil(batch_size.max(1)),
            shard: opts.shard,
            memory: None,
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

fn default_hooks() -> crate::hooks::HookKind {
    crate::hooks::HookKind::AttnOut
}

/// Every pair's token ids, length and answers, hashed.
pub(crate) fn tokens_hash(t: &TokenizedPrompts) -> String {
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
            min_len: 14,
            token_labels: vec![],
            prompts: vec![],
            batch_size: 64,
            n_batches: 1,
            shard: None,
            memory: None,
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

//! The steps every job shares before it runs: the prompts read and
//! tokenized, the model loaded, hashed and rewritten, the runtime session.

use super::inputs::TokenInputs;
use super::{JobOptions, Timings};
use crate::augment::Augmented;
use crate::error::{Error, Result};
use crate::hooks::Hook;
use crate::memory::ModelShape;
use crate::onnx::graph::{model_hash, model_hash_external, ContentHash};
use crate::onnx::pb::ModelProto;
use crate::onnx::OnnxModel;
use crate::prompts::{self, PromptPair, PromptTokenizer, TokenizedPrompts};
use crate::runtime::{self, ModelForRuntime, Runtime, RuntimeOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
            (_, Some(tok)) => {
                let answers = if opts.metric == crate::augment::Metric::Kl {
                    prompts::Answers::Unused
                } else {
                    prompts::Answers::Required
                };
                prompts::tokenize_for(tok, &self.pairs, opts.bos, vocab, answers)
            }
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

/// `JobGraph` for a rewritten graph struct with the fields both builders
/// give theirs (`proto`, `vocab`, `hooks`, `heads`, `input_ids`,
/// `attention_mask`, `position_ids`).
macro_rules! impl_job_graph {
    ($graph:ty) => {
        impl JobGraph for $graph {
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
    };
}
impl_job_graph!(Augmented);
impl_job_graph!(crate::patch::graph::PatchGraph);

/// A job ready to run: the model loaded, hashed and rewritten, the prompts
/// tokenized, the graph handed over for a runtime session.
pub struct Prepared<G> {
    pub graph: G,
    pub pairs: Vec<PromptPair>,
    pub tokens: TokenizedPrompts,
    pub model_hash: String,
    pub tokenizer_hash: String,
    /// What the memory sizing reads of the model and prompts.
    pub shape: ModelShape,
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
    // For ONNX Runtime the float32 weights stay in the file: it reads them
    // itself, once, and this process never holds a copy. The hash streams them.
    let (model, model_hash) = match opts.runtime.kind {
        runtime::RuntimeKind::Ort => {
            let m = OnnxModel::load_leaving_weights(&opts.model)?;
            let h = model_hash_external(&m.proto, m.dir(), &opts.model)?;
            (m, h)
        }
        runtime::RuntimeKind::Tract => {
            let m = OnnxModel::load(&opts.model)?;
            let h = model_hash(&m.proto);
            (m, h)
        }
    };
    let model_dir = model.dir().to_path_buf();
    seconds.load = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let mut graph = build(model)?;
    let tokens = source.tokenize(opts, graph.vocab())?;
    // Read before the weights are handed over to the runtime.
    let hook_nodes: Vec<String> = graph.hooks().iter().map(|h| h.node.clone()).collect();
    let hook_nodes: Vec<&str> = hook_nodes.iter().map(String::as_str).collect();
    let (heads, vocab) = (graph.heads(), graph.vocab());
    let shape = ModelShape::of(graph.proto_mut(), &hook_nodes, heads, vocab, tokens.seq_len);
    let mut for_runtime = runtime::prepare(graph.proto_mut(), &opts.runtime);
    if opts.runtime.kind == runtime::RuntimeKind::Ort {
        for_runtime.external_dir = Some(model_dir);
    }
    let for_runtime = Some(for_runtime);
    seconds.rewrite = clock.elapsed().as_secs_f64();
    Ok(Prepared {
        graph,
        pairs: source.pairs,
        tokens,
        model_hash,
        tokenizer_hash: source.tokenizer_hash,
        shape,
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

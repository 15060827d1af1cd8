//! The steps every job shares before it runs: the prompts read and
//! tokenized, the model loaded, hashed and rewritten, the runtime session.

use super::inputs::TokenInputs;
use super::{JobOptions, Timings};
use crate::augment::anatomy::GraphBase;
use crate::graph_cache::key::external_files;
use crate::graph_cache::{CacheUse, CachedGraph, GraphCache, GraphKey, Lookup, Restored};
use crate::hooks::Hook;
use crate::memory::ModelShape;
use crate::prompts::{self, PromptPair, PromptTokenizer, TokenizedPrompts};
use crate::runtime::{self, ModelForRuntime, Runtime, RuntimeOptions};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::hash::{model_hash, model_hash_external, ContentHash};
use attrpatch_onnx::pb::ModelProto;
use attrpatch_onnx::OnnxModel;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The tokenizer used when none is given: tokenizer.json beside the model.
pub fn default_tokenizer(model: &Path) -> PathBuf {
    model.parent().unwrap_or(Path::new(".")).join("tokenizer.json")
}

/// The prompt pairs of a job and what turns them into token ids.
pub struct PromptSource {
    /// The prompt pairs, in order.
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

    /// Pairs given in memory, with the tokenizer that reads them (None: the
    /// token ids come from `JobOptions::tokens`); `tokenizer_hash` identifies it.
    pub fn new(pairs: Vec<PromptPair>, tokenizer: Option<PromptTokenizer>, tokenizer_hash: String) -> Self {
        PromptSource { pairs, tokenizer, tokenizer_hash }
    }

    /// `tokenize` for the job itself: what the prompts may mislead with
    /// (`prompts::warnings`) goes to the job's progress reporter.
    pub fn tokenize_warning(&self, opts: &JobOptions, vocab: usize) -> Result<TokenizedPrompts> {
        let t = self.tokenize(opts, vocab)?;
        if let Some(tok) = &self.tokenizer {
            for w in prompts::warnings(tok, &self.pairs, &t) {
                crate::progress::warn(&opts.progress, &w);
            }
        }
        Ok(t)
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
    /// The rewritten model, for the steps that read or replace it before the session (memory sizing, runtime
    /// preparation, the cache).
    fn proto_mut(&mut self) -> &mut ModelProto;
    /// Vocabulary size of the model's logits.
    fn vocab(&self) -> usize;
    /// The hooks the graph patches or attributes.
    fn hooks(&self) -> &[Hook];
    /// Heads per hook; None for hooks that do not split into heads.
    fn heads(&self) -> Option<usize>;
    /// The graph's token inputs and the metric its selectors are fed for.
    fn token_inputs(&self) -> TokenInputs<'_>;
}

impl<G: JobGraph + serde::Serialize + serde::de::DeserializeOwned> CachedGraph for G {
    fn model_mut(&mut self) -> &mut ModelProto {
        self.proto_mut()
    }
}

/// Every rewritten graph struct (`Augmented`, `PatchGraph`, `EdgeGraph`,
/// `EdgePatchGraph`) holds a `GraphBase` and derefs to it.
impl<G: std::ops::DerefMut<Target = GraphBase>> JobGraph for G {
    fn proto_mut(&mut self) -> &mut ModelProto {
        &mut self.deref_mut().proto
    }
    fn vocab(&self) -> usize {
        self.deref().vocab
    }
    fn hooks(&self) -> &[Hook] {
        &self.deref().hooks
    }
    fn heads(&self) -> Option<usize> {
        self.deref().heads
    }
    fn token_inputs(&self) -> TokenInputs<'_> {
        let g = self.deref();
        TokenInputs {
            ids: &g.input_ids,
            mask: g.attention_mask.as_ref(),
            positions: g.position_ids.as_ref(),
            vocab: g.vocab,
            metric: g.metric,
        }
    }
}

/// A job ready to run: the model loaded, hashed and rewritten, the prompts
/// tokenized, the graph handed over for a runtime session.
pub struct Prepared<G> {
    /// The rewritten graph.
    pub graph: G,
    /// The job's prompt pairs.
    pub pairs: Vec<PromptPair>,
    /// The pairs' token ids, checked against the model's vocabulary.
    pub tokens: TokenizedPrompts,
    /// Content hash of the loaded model (`LoadedModel::hash`).
    pub model_hash: String,
    /// Hash of the tokenizer file's bytes, or "token ids given".
    pub tokenizer_hash: String,
    /// What the memory sizing reads of the model and prompts.
    pub shape: ModelShape,
    for_runtime: Option<ModelForRuntime>,
    /// Time spent so far, by step.
    pub seconds: Timings,
}

/// A model read for a job: the (normalised) protobuf, its content hash, and
/// the folder ONNX Runtime reads weights left in the file from.
pub struct LoadedModel {
    /// The model, normalised at load.
    pub model: OnnxModel,
    /// Content hash of the model's graph and weights (`onnx::hash::model_hash`).
    pub hash: String,
    /// Set when the float32 weights stayed in the model's files (ONNX Runtime reads them there).
    pub external_dir: Option<PathBuf>,
}

impl LoadedModel {
    /// Reads `opts.model` as the runtime wants it: for ONNX Runtime the float32
    /// weights stay in the file (it reads them itself, once, and this process
    /// never holds a copy; the hash streams them), tract gets them inline.
    pub fn read(opts: &JobOptions) -> Result<Self> {
        match opts.runtime.kind {
            runtime::RuntimeKind::Ort => Self::read_leaving_weights(&opts.model),
            runtime::RuntimeKind::Tract => Self::in_memory(OnnxModel::load(&opts.model)?),
        }
    }

    /// The model file with its float32 weights left in the file, for ONNX Runtime.
    pub fn read_leaving_weights(path: &Path) -> Result<Self> {
        let m = OnnxModel::load_leaving_weights(path)?;
        let hash = model_hash_external(&m.proto, m.dir(), path)?;
        let external_dir = Some(m.dir().to_path_buf());
        Ok(LoadedModel { model: m, hash, external_dir })
    }

    /// A model already in memory with every weight inline.
    pub fn in_memory(model: OnnxModel) -> Result<Self> {
        let hash = model_hash(&model.proto);
        Ok(LoadedModel { model, hash, external_dir: None })
    }
}

/// Loads the model, rewrites it with `build` and tokenizes the prompts: the
/// steps every job shares, timed. With `opts.cache`, the rewritten graph
/// comes from the cache entry for the model and `key` when there is a valid
/// one (load and rewrite skipped), and is stored there when not.
pub fn prepare<G: JobGraph + CachedGraph>(
    opts: &JobOptions,
    key: GraphKey,
    build: impl FnOnce(OnnxModel) -> Result<G>,
) -> Result<Prepared<G>> {
    prepare_choosing(opts, |_| Ok((key, ())), |(), model| build(model))
}

/// `prepare` for a job whose graph depends on its prompts (read before the
/// model): `choose` sees them and returns the cache key and the choice that
/// `build` gets, so the key covers the choice.
pub fn prepare_choosing<G: JobGraph + CachedGraph, C>(
    opts: &JobOptions,
    choose: impl FnOnce(&PromptSource) -> Result<(GraphKey, C)>,
    build: impl FnOnce(C, OnnxModel) -> Result<G>,
) -> Result<Prepared<G>> {
    // The model is named first in messages: its tokenizer is looked up beside it.
    std::fs::metadata(&opts.model).map_err(|e| Error::io(&opts.model, e))?;
    let clock = Instant::now();
    // Read before the model: a wrong tokenizer path fails before the slow part.
    let source = PromptSource::read(opts)?;
    let (key, choice) = choose(&source)?;
    let cache = job_cache(opts);
    let mut invalid = None;
    let probe = match &cache {
        Some(c) => Some(c.probe(&opts.model, &key, opts.runtime.kind)?),
        None => None,
    };
    if let (Some(c), Some(probe)) = (&cache, &probe) {
        match c.lookup::<G>(probe) {
            Lookup::Hit(r) => return prepare_restored(opts, &source, r, clock),
            Lookup::Miss => {}
            Lookup::Invalid(why) => {
                crate::progress::warn(
                    &opts.progress,
                    &format!(
                        "the cache entry for this model and job in {} is unusable ({why}); rebuilding it",
                        c.dir().display()
                    ),
                );
                invalid = Some(why);
            }
        }
    }
    crate::progress::stage(&opts.progress, &format!("reading {}", opts.model.display()));
    let model = LoadedModel::read(opts)?;
    crate::progress::stage(
        &opts.progress,
        &format!("read in {:.1} s; rewriting the graph", clock.elapsed().as_secs_f64()),
    );
    let external = match &probe {
        Some(_) => external_files(&model.model.proto, &model_file_name(&opts.model)),
        None => vec![],
    };
    let load = clock.elapsed().as_secs_f64();
    let mut p = prepare_loaded(opts, &source, model, |m| build(choice, m))?;
    p.seconds.load = load;
    if let (Some(c), Some(probe)) = (&cache, &probe) {
        let clock = Instant::now();
        let for_runtime = p.for_runtime.as_ref().expect("made by prepare_loaded");
        // A cache that cannot be written costs the next run its speed, not this run its result.
        match c.store(probe, &p.graph, &p.model_hash, p.shape, for_runtime, &external) {
            Ok(()) => {
                // The session saves ONNX Runtime's optimised graph into the new entry.
                let entry = GraphCache::entry(probe).to_path_buf();
                p.for_runtime.as_mut().expect("made by prepare_loaded").saved_dir = Some(entry);
            }
            Err(e) => crate::progress::warn(&opts.progress, &format!("the graph was not cached: {e}")),
        }
        p.seconds.rewrite += clock.elapsed().as_secs_f64();
        p.seconds.cache = match invalid {
            Some(reason) => CacheUse::Rebuilt { reason },
            None => CacheUse::Miss,
        };
    }
    Ok(p)
}

/// The job's cache: ONNX Runtime jobs with `opts.cache` set (tract's graph holds
/// every weight inline, so an entry would be a second copy of the model).
fn job_cache(opts: &JobOptions) -> Option<GraphCache> {
    let dir = opts.cache.as_ref()?;
    if opts.runtime.kind != runtime::RuntimeKind::Ort {
        crate::progress::warn(
            &opts.progress,
            "--cache keeps ONNX Runtime graphs only; this tract job builds its graph",
        );
        return None;
    }
    Some(GraphCache::new(dir))
}

fn model_file_name(model: &Path) -> String {
    model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A job from a cache entry: the prompts tokenized for the restored graph.
fn prepare_restored<G: JobGraph>(
    opts: &JobOptions,
    source: &PromptSource,
    r: Restored<G>,
    clock: Instant,
) -> Result<Prepared<G>> {
    let tokens = source.tokenize_warning(opts, r.graph.vocab())?;
    let shape = ModelShape { seq_len: tokens.seq_len, ..r.shape };
    let seconds = Timings { load: clock.elapsed().as_secs_f64(), cache: CacheUse::Hit, ..Timings::default() };
    Ok(Prepared {
        graph: r.graph,
        pairs: source.pairs.clone(),
        tokens,
        model_hash: r.model_hash,
        tokenizer_hash: source.tokenizer_hash.clone(),
        shape,
        for_runtime: Some(r.for_runtime),
        seconds,
    })
}

/// `prepare` for a model already loaded (from a file or from memory) and
/// prompts already read: rewrites, tokenizes and readies the runtime's copy.
pub fn prepare_loaded<G: JobGraph>(
    opts: &JobOptions,
    source: &PromptSource,
    loaded: LoadedModel,
    build: impl FnOnce(OnnxModel) -> Result<G>,
) -> Result<Prepared<G>> {
    let mut seconds = Timings::default();
    let clock = Instant::now();
    let mut graph = build(loaded.model)?;
    let tokens = source.tokenize_warning(opts, graph.vocab())?;
    // Read before the weights are handed over to the runtime.
    let hook_nodes: Vec<String> = graph.hooks().iter().map(|h| h.node.clone()).collect();
    let hook_nodes: Vec<&str> = hook_nodes.iter().map(String::as_str).collect();
    let (heads, vocab) = (graph.heads(), graph.vocab());
    let shape = ModelShape::of(graph.proto_mut(), &hook_nodes, heads, vocab, tokens.seq_len);
    let mut for_runtime = runtime::prepare(graph.proto_mut(), &opts.runtime);
    for_runtime.external_dir = loaded.external_dir;
    seconds.rewrite = clock.elapsed().as_secs_f64();
    Ok(Prepared {
        graph,
        pairs: source.pairs.clone(),
        tokens,
        model_hash: loaded.hash,
        tokenizer_hash: source.tokenizer_hash.clone(),
        shape,
        for_runtime: Some(for_runtime),
        seconds,
    })
}

impl<G: JobGraph> Prepared<G> {
    /// Puts other prompts into an already prepared job (the graph and its
    /// runtime session stay): what a reused `Attributor` does per call.
    pub fn set_prompts(&mut self, opts: &JobOptions, source: &PromptSource) -> Result<()> {
        self.tokens = source.tokenize_warning(opts, self.graph.vocab())?;
        self.pairs = source.pairs.clone();
        self.tokenizer_hash = source.tokenizer_hash.clone();
        self.shape.seq_len = self.tokens.seq_len;
        self.seconds = Timings::default();
        Ok(())
    }
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

impl<G> Prepared<G> {
    /// The rewritten graph as handed to the runtime, for a job that makes its
    /// sessions on graphs derived from it (`ModelForRuntime::derived`) instead
    /// of on the graph itself (`session` fails afterwards).
    pub fn take_runtime_model(&mut self) -> Result<ModelForRuntime> {
        self.for_runtime.take().ok_or_else(|| Error::Runtime("the job's runtime session was already made".into()))
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

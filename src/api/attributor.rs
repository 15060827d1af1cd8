//! `Attributor`: a model rewritten once and kept, with its runtime session,
//! for any number of jobs (attribution, integrated gradients, exact patching,
//! comparison, edge scores) on any prompt pairs. The CLI's run, patch, compare
//! and edges run the same job code (`job::run_prepared`, `patch::run_prepared`,
//! `edges::run::run_prepared`).

use super::pairs::Pairs;
use super::source::{ModelSource, TokenizerSource};
use attrpatch_core::augment::{augment_shared, augment_with, Augmented, Metric};
use attrpatch_core::compare::{CompareOptions, Comparison};
use attrpatch_core::edges::{self, graph::EdgeGraph, EdgeRun};
use attrpatch_core::hooks::HookKind;
use attrpatch_core::job::{self, JobOptions, JobResult, LoadedModel, Prepared, PromptSource};
use attrpatch_core::patch::{self, graph::PatchGraph, Estimator};
use attrpatch_core::prompts::PromptTokenizer;
use attrpatch_core::runtime::{Runtime, RuntimeOptions};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::hash::ContentHash;
use std::time::Instant;

/// A rewritten graph, its runtime session once made, and how often it was built.
struct Slot<G> {
    prepared: Prepared<G>,
    session: Option<Box<dyn Runtime>>,
}

/// Builds an `Attributor`: the model, then optional settings.
pub struct AttributorBuilder {
    model: ModelSource,
    tokenizer: Option<TokenizerSource>,
    opts: JobOptions,
}

impl AttributorBuilder {
    /// The tokenizer for text pairs [default: tokenizer.json beside a model file].
    pub fn tokenizer(mut self, t: impl Into<TokenizerSource>) -> Self {
        self.tokenizer = Some(t.into());
        self
    }

    /// The quantity attributed [default: logit difference].
    pub fn metric(mut self, m: Metric) -> Self {
        self.opts.metric = m;
        self
    }

    /// Which activations [default: each attention out-projection's input, per head].
    pub fn hooks(mut self, h: HookKind) -> Self {
        self.opts.hooks = h;
        self
    }

    /// The head count, when the graph does not tell it.
    pub fn heads(mut self, n: usize) -> Self {
        self.opts.heads = Some(n);
        self
    }

    /// Runtime, device, ONNX Runtime library and threads [default: ONNX Runtime, device auto].
    pub fn runtime(mut self, r: RuntimeOptions) -> Self {
        self.opts.runtime = r;
        self
    }

    /// Prepend the tokenizer's BOS token to every prompt.
    pub fn bos(mut self, bos: bool) -> Self {
        self.opts.bos = bos;
        self
    }

    /// Pairs per attribution call [default: as many as the memory budget holds, at most 64].
    pub fn batch_size(mut self, n: usize) -> Self {
        self.opts.batch_size = Some(n);
        self
    }

    /// Whether attribution runs each distinct sequence once (the shared-rows
    /// graph); `Dedup::Auto` (default) decides on the first call's pairs, and
    /// the graph then serves every later call.
    pub fn dedup(mut self, d: crate::Dedup) -> Self {
        self.opts.dedup = d;
        self
    }

    /// The memory budget in bytes that sizes the calls [default: 70% of the memory available].
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.opts.max_memory = Some(bytes);
        self
    }

    /// Keep each pair's grids in the results (`JobResult::per_pair`).
    pub fn per_pair(mut self, keep: bool) -> Self {
        self.opts.per_prompt = keep;
        self
    }

    /// Where progress and the call sizing are reported [default: nowhere].
    pub fn progress(mut self, p: std::sync::Arc<dyn attrpatch_core::progress::Progress>) -> Self {
        self.opts.progress = Some(p);
        self
    }

    /// The attributor (reads the tokenizer now, the one given or else the
    /// tokenizer.json beside a model file if there is one; the graphs are built
    /// on first use).
    pub fn build(self) -> Result<Attributor> {
        // The default is optional: a model without a tokenizer.json beside it still runs token ids,
        // and text pairs are refused when they come (`job_inputs`).
        let tokenizer_source = self
            .tokenizer
            .or_else(|| self.model.default_tokenizer().filter(|p| p.is_file()).map(TokenizerSource::Path));
        let tokenizer = match &tokenizer_source {
            Some(src) => {
                let bytes = src.bytes()?;
                let tok = PromptTokenizer::from_bytes(&bytes, &src.label())?;
                let mut h = ContentHash::default();
                h.write(&bytes);
                Some((tok, h.finish()))
            }
            None => None,
        };
        let mut opts = self.opts;
        opts.model = self.model.name();
        Ok(Attributor {
            model: self.model,
            tokenizer,
            opts,
            attribution: None,
            exact: None,
            ig: None,
            edges: vec![],
            builds: 0,
        })
    }
}

/// A model rewritten once for each kind of job and kept with its runtime
/// session: the first call of a kind pays the load, rewrite and session, the
/// next ones only the run (`JobResult::seconds` shows it).
pub struct Attributor {
    model: ModelSource,
    /// The tokenizer and the hash of its bytes; None: token ids only.
    tokenizer: Option<(PromptTokenizer, String)>,
    opts: JobOptions,
    attribution: Option<Slot<Augmented>>,
    exact: Option<Slot<PatchGraph>>,
    ig: Option<Slot<PatchGraph>>,
    /// One edge graph per integration step count (EAP-IG tiles its corrupted runs).
    edges: Vec<(edges::EdgeMethod, Slot<EdgeGraph>)>,
    builds: usize,
}

impl Attributor {
    /// Starts building an attributor for `model` (a path, bytes or a `ModelProto`).
    pub fn builder(model: impl Into<ModelSource>) -> AttributorBuilder {
        let model = model.into();
        AttributorBuilder { opts: JobOptions::new(model.name()), model, tokenizer: None }
    }

    /// An attributor with every default (tokenizer beside the model file).
    pub fn new(model: impl Into<ModelSource>) -> Result<Self> {
        Self::builder(model).build()
    }

    /// How many graphs (and sessions) were built so far: one per kind of job used.
    pub fn graphs_built(&self) -> usize {
        self.builds
    }

    /// Attribution patching: one forward and backward pass per batch of pairs.
    pub fn attribute(&mut self, pairs: &Pairs) -> Result<JobResult> {
        let (opts, source) = self.job_inputs(pairs)?;
        if self.attribution.is_none() {
            let aug = opts.augment_options();
            let shared = job::choose_shared(&opts, &source)?;
            let prepared = self.prepare(&opts, &source, |m| match shared {
                true => augment_shared(m, aug),
                false => augment_with(m, aug),
            })?;
            self.attribution = Some(Slot { prepared, session: None });
        } else if let Some(s) = self.attribution.as_mut() {
            s.prepared.set_prompts(&opts, &source)?;
        }
        let slot = self.attribution.as_mut().expect("built above");
        job::run_prepared(&opts, &mut slot.prepared, &mut slot.session)?
            .ok_or_else(|| Error::Input("an attributor runs whole jobs, not shards".into()))
    }

    /// Integrated gradients with `steps` steps along each layer's corrupted-to-clean line.
    pub fn integrated_gradients(&mut self, pairs: &Pairs, steps: usize) -> Result<JobResult> {
        self.patching(pairs, Estimator::IntegratedGradients { steps }, None)
    }

    /// Exact activation patching of every head (and every position when `positions`).
    pub fn patch(&mut self, pairs: &Pairs, positions: bool) -> Result<JobResult> {
        self.patching(pairs, Estimator::Exact { positions }, None)
    }

    /// Exact patching, attribution and (with `ig_steps`) integrated gradients
    /// side by side, with their agreement (as `attrpatch compare`).
    pub fn compare(&mut self, pairs: &Pairs, c: &CompareOptions) -> Result<Comparison> {
        let exact = self.patching(pairs, Estimator::Exact { positions: c.positions }, c.rows_per_call)?;
        let mut results = vec![("attribution", self.attribute(pairs)?)];
        if let Some(steps) = c.ig_steps {
            results.push(("ig", self.patching(pairs, Estimator::IntegratedGradients { steps }, c.rows_per_call)?));
        }
        if c.atp_star {
            let (opts, _) = self.job_inputs(pairs)?;
            results.push(("atp-star", attrpatch_core::atp_star::run_atp_star(&opts, true)?.result));
        }
        Ok(attrpatch_core::compare::assemble(exact, results))
    }

    /// Runs a patching estimator on its kept graph (built on first use).
    pub fn patching(&mut self, pairs: &Pairs, e: Estimator, rows_per_call: Option<usize>) -> Result<JobResult> {
        patch::check_counts(e, rows_per_call)?;
        let (opts, source) = self.job_inputs(pairs)?;
        let is_ig = matches!(e, Estimator::IntegratedGradients { .. });
        if self.slot_of(is_ig).is_none() {
            let g = patch::graph_options(&opts, e);
            let prepared = self.prepare(&opts, &source, |m| patch::graph::build(m, &g))?;
            *self.slot_of(is_ig) = Some(Slot { prepared, session: None });
        } else if let Some(s) = self.slot_of(is_ig).as_mut() {
            s.prepared.set_prompts(&opts, &source)?;
        }
        let slot = self.slot_of(is_ig).as_mut().expect("built above");
        patch::run_prepared(&opts, e, rows_per_call, &mut slot.prepared, &mut slot.session)
    }

    /// Every edge's score: EAP with `ig_steps` = 1, EAP-IG-inputs with more (as
    /// `attrpatch edges [--ig-steps N]`: the same names, order and numbers). The
    /// scores are summed over the pairs (`per_pair` does not apply); the edge graph
    /// for `ig_steps` is built on first use and kept.
    pub fn edges(&mut self, pairs: &Pairs, ig_steps: usize) -> Result<EdgeRun> {
        if ig_steps == 0 {
            // graph::build's message, before the model is read.
            return Err(Error::Input("the integration steps of EAP-IG must be at least 1 (1 is plain EAP)".into()));
        }
        self.edges_method(pairs, &edges::EdgeMethod::steps(ig_steps))
    }

    /// Every edge's score by any method, convention and ablation (as `attrpatch edges
    /// --method M --ig-steps N --convention C --ablation A`); one edge graph is built per
    /// method on first use and kept.
    pub fn edges_method(&mut self, pairs: &Pairs, method: &edges::EdgeMethod) -> Result<EdgeRun> {
        edges::run::check_method(method, self.opts.metric)?;
        if self.opts.hooks != attrpatch_core::hooks::HookKind::AttnOut {
            return Err(Error::Input(
                "hook: edge scores are defined by the attention heads, MLPs and residual stream, not by hooks; make \
                 the attributor without a hook choice"
                    .into(),
            ));
        }
        let (opts, source) = self.job_inputs(pairs)?;
        let i = match self.edges.iter().position(|(m, _)| m == method) {
            Some(i) => {
                self.edges[i].1.prepared.set_prompts(&opts, &source)?;
                i
            }
            None => {
                let g = edges::run::graph_options_for(&opts, method);
                let prepared = self.prepare(&opts, &source, |m| edges::graph::build(m, &g))?;
                self.edges.push((*method, Slot { prepared, session: None }));
                self.edges.len() - 1
            }
        };
        let slot = &mut self.edges[i].1;
        edges::run::run_prepared(&opts, method.ig_steps, &mut slot.prepared, &mut slot.session)
    }

    fn slot_of(&mut self, ig: bool) -> &mut Option<Slot<PatchGraph>> {
        if ig {
            &mut self.ig
        } else {
            &mut self.exact
        }
    }

    /// Loads the model and builds a graph with `build`, timed as a job's set-up.
    fn prepare<G: job::JobGraph>(
        &mut self,
        opts: &JobOptions,
        source: &PromptSource,
        build: impl FnOnce(attrpatch_onnx::OnnxModel) -> Result<G>,
    ) -> Result<Prepared<G>> {
        let clock = Instant::now();
        let loaded: LoadedModel = self.model.load_for_job(opts.runtime.kind)?;
        let load = clock.elapsed().as_secs_f64();
        let mut p = job::prepare_loaded(opts, source, loaded, build)?;
        p.seconds.load = load;
        self.builds += 1;
        Ok(p)
    }

    /// The job options and prompts of one call on `pairs`.
    fn job_inputs(&self, pairs: &Pairs) -> Result<(JobOptions, PromptSource)> {
        let mut opts = self.opts.clone();
        let texts = pairs.texts();
        let source = match (pairs, &self.tokenizer) {
            (Pairs::Tokens(t), _) => {
                opts.tokens = Some((texts.clone(), t.to_tokenized(usize::MAX)?));
                PromptSource::new(texts, None, "token ids given".into())
            }
            (_, Some((tok, hash))) => PromptSource::new(texts, Some(tok.clone()), hash.clone()),
            (_, None) => {
                let looked = match self.model.default_tokenizer() {
                    Some(p) => format!(" (none was given, and there is no {})", p.display()),
                    None => String::new(),
                };
                return Err(Error::Input(format!(
                    "{}: text prompt pairs need a tokenizer{looked}: give one (a tokenizer.json path or its bytes) \
                     or pass token ids",
                    self.model.name().display()
                )));
            }
        };
        Ok((opts, source))
    }
}

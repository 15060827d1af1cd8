//! What the rewrites need to know about a model before they touch it: its
//! hooks, logits, vocabulary, token inputs and how the logits are made.

use super::metric::{self, LogitsSource, Metric};
use super::names;
use crate::hooks::{constant_tensors, find_logits, Hook, HookKind};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::facts::{analyse, Dim, Facts};
use attrpatch_onnx::graph::declared_dims;
use attrpatch_onnx::pb::ModelProto;
use attrpatch_onnx::OnnxModel;
use std::collections::HashSet;

/// A model input fed with tokens: its name in the clean and corrupted copies.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenInput {
    /// The input's name in the original model.
    pub model_name: String,
    /// Its name in the clean copy (`names::clean_input`).
    pub clean: String,
    /// Its name in the corrupted copy (`names::corrupted_input`).
    pub corrupted: String,
}

/// What the rewrites read of a model before they touch it (`Anatomy::read`).
pub struct Anatomy {
    /// The hooks of the chosen kind (`hooks::find_hooks`), one per layer.
    pub hooks: Vec<Hook>,
    /// Facts of the model as it is, with its symbolic sizes.
    pub facts0: Facts,
    /// Name of the graph output holding the logits (`hooks::find_logits`).
    pub logits: String,
    /// ONNX element type of the logits; always float32, as `read` refuses others.
    pub dtype: i32,
    /// Vocabulary size: the logits' last dim, which must be fixed.
    pub vocab: usize,
    /// The batch and sequence dims of the token input, as declared.
    pub batch: Dim,
    /// The sequence dim of the token input, as declared.
    pub seq: Dim,
    /// The token-id input (`input_ids`, else the graph's first input) and its names in the copies.
    pub ids_in: TokenInput,
    /// The `attention_mask` input, when the model has one.
    pub mask_in: Option<TokenInput>,
    /// The `position_ids` input, when the model has one.
    pub pos_in: Option<TokenInput>,
    /// Tensors whose value depends on no graph input (`hooks::constant_tensors`): the clean copy shares them.
    pub constants: HashSet<String>,
    /// How the logits are made: from a constant lm_head MatMul, or opaque.
    pub src: LogitsSource,
}

/// What every rewritten graph holds besides its own settings: the graph, its
/// hooks, its token inputs, the vocabulary, heads and the metric it computes.
/// `Augmented`, `PatchGraph`, `EdgeGraph` and `EdgePatchGraph` each hold one
/// (flattened in their cache metadata) and read its fields through `Deref`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct GraphBase {
    /// The rewritten graph; not serialised (the cache stores it beside the metadata).
    #[serde(skip)]
    pub proto: ModelProto,
    /// The hooks the graph attributes or patches, one per layer.
    pub hooks: Vec<Hook>,
    /// The token-id input and its names in the graph's copies.
    pub input_ids: TokenInput,
    /// The attention-mask input, when the model has one (fed 1 on real tokens, 0 on padding).
    pub attention_mask: Option<TokenInput>,
    /// The position-ids input, when the model has one (fed 0..S for every row; prompts are right-padded).
    pub position_ids: Option<TokenInput>,
    /// Vocabulary size, the answer one-hot's length.
    pub vocab: usize,
    /// Heads per hook; None for hooks that do not split into heads.
    pub heads: Option<usize>,
    /// The metric the graph computes: it decides the answer selectors fed to it.
    pub metric: Metric,
}

/// `Deref` to the graph's `GraphBase` (`g.hooks`, `g.proto`, ...).
macro_rules! deref_base {
    ($graph:ty) => {
        impl std::ops::Deref for $graph {
            type Target = $crate::augment::anatomy::GraphBase;
            fn deref(&self) -> &Self::Target {
                &self.base
            }
        }
        impl std::ops::DerefMut for $graph {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.base
            }
        }
    };
}
pub(crate) use deref_base;

impl Anatomy {
    /// The graph's `GraphBase`: the finished `proto` with this anatomy's hooks and inputs.
    pub fn into_base(self, proto: ModelProto, heads: Option<usize>, metric: Metric) -> GraphBase {
        GraphBase {
            proto,
            hooks: self.hooks,
            input_ids: self.ids_in,
            attention_mask: self.mask_in,
            position_ids: self.pos_in,
            vocab: self.vocab,
            heads,
            metric,
        }
    }

    /// Reads a model's anatomy; refuses unsupported inputs, logits that are not float32, a vocabulary size that is not
    /// fixed and hooks that are constants.
    pub fn read(model: &OnnxModel, hook_kind: &HookKind) -> Result<Anatomy> {
        check_inputs(model)?;
        let hooks = crate::hooks::find_hooks(model, hook_kind)?;
        let facts0 = analyse(&model.proto, &model.path)?;
        let logits = find_logits(model, &facts0)?;
        let g0 = model.graph();
        let input_ids = g0
            .input
            .iter()
            .find(|i| i.name == "input_ids")
            .or_else(|| g0.input.first())
            .map(|i| i.name.clone())
            .ok_or_else(|| Error::Model(format!("{}: the graph has no inputs", model.path.display())))?;
        let attention_mask = g0.input.iter().find(|i| i.name == "attention_mask").map(|i| i.name.clone());
        let position_ids = g0.input.iter().find(|i| i.name == "position_ids").map(|i| i.name.clone());
        let dtype = facts0.dtype(&logits).unwrap_or(attrpatch_onnx::consts::FLOAT);
        if dtype != attrpatch_onnx::consts::FLOAT {
            return Err(Error::Unsupported(format!(
                "{}: logits '{logits}' are {}; attrpatch supports float32 models",
                model.path.display(),
                attrpatch_onnx::consts::type_name(dtype)
            )));
        }
        let declared = g0.output.iter().find(|o| o.name == logits).map(declared_dims).unwrap_or_default();
        let vocab_dim = match declared.last() {
            Some(Dim::Known(v)) => Some(Dim::Known(*v)),
            _ => facts0.shape(&logits).and_then(|s| s.last().cloned()),
        };
        let vocab = match vocab_dim {
            Some(Dim::Known(v)) if v > 0 => v as usize,
            other => {
                return Err(Error::Model(format!(
                    "{}: the vocabulary size (last dim of '{logits}') must be fixed, found {other:?}",
                    model.path.display()
                )))
            }
        };
        let (batch, seq) = token_dims(model, &input_ids)?;
        let token_input = |n: &str| TokenInput {
            model_name: n.into(),
            clean: names::clean_input(n),
            corrupted: names::corrupted_input(n),
        };
        let ids_in = token_input(&input_ids);
        let mask_in = attention_mask.as_deref().map(token_input);
        let pos_in = position_ids.as_deref().map(token_input);

        let constants = constant_tensors(model);
        // A constant is the same in the clean and corrupted runs: there is nothing to patch or attribute.
        if let Some(h) = hooks.iter().find(|h| constants.contains(&h.tensor)) {
            return Err(Error::Input(format!(
                "{}: hook tensor '{}' (layer {}, from {} '{}') is a constant: it does not depend on the prompts, \
                 so patching it changes nothing; choose a hook computed from the input",
                model.path.display(),
                h.tensor,
                h.layer,
                h.op_type,
                h.node
            )));
        }
        let logits_rank = if declared.is_empty() { facts0.rank(&logits) } else { Some(declared.len()) };
        let init_rank = |t: &str| model.graph().initializer.iter().find(|i| i.name == t).map(|i| i.dims.len());
        let src = metric::logits_source(&model.graph().node, &logits, logits_rank, &constants, |t| {
            facts0.rank(t).or_else(|| init_rank(t))
        });
        Ok(Anatomy { hooks, facts0, logits, dtype, vocab, batch, seq, ids_in, mask_in, pos_in, constants, src })
    }

    /// The head count read from the graph around the first hook.
    pub fn infer_heads(&self, model: &OnnxModel) -> Result<Option<usize>> {
        match self.hooks.first() {
            Some(h) => crate::hooks::infer_heads_probed(model, &h.tensor),
            None => Ok(None),
        }
    }

    /// The head count a graph that needs one uses: `given` once checked, else the
    /// one read from the graph, else an error that asks for `--heads`.
    pub fn required_heads(&self, model: &OnnxModel, given: Option<usize>) -> Result<usize> {
        match given {
            Some(h) => {
                self.check_heads(model, h)?;
                Ok(h)
            }
            None => self.infer_heads(model)?.ok_or_else(|| heads_unknown(&model.path, &self.hooks[0].tensor)),
        }
    }

    /// A head count must split every hook's width evenly.
    pub fn check_heads(&self, model: &OnnxModel, heads: usize) -> Result<()> {
        for h in &self.hooks {
            if let Some(Dim::Known(w)) = self.facts0.shape(&h.tensor).and_then(|s| s.last()) {
                if heads == 0 || *w % heads as i64 != 0 {
                    return Err(Error::Input(format!(
                        "{}: {heads} heads do not split the width {w} of hook '{}' (layer {}) evenly",
                        model.path.display(),
                        h.tensor,
                        h.layer
                    )));
                }
            }
        }
        Ok(())
    }

    /// The token inputs present, input_ids first.
    pub fn token_inputs(&self) -> Vec<&TokenInput> {
        std::iter::once(&self.ids_in).chain(self.mask_in.as_ref()).chain(self.pos_in.as_ref()).collect()
    }
}

/// The graph did not say how many heads feed `hook`, and no head count was given.
/// The message says "a head count", which the binary spells as its flag.
pub fn heads_unknown(path: &std::path::Path, hook: &str) -> Error {
    Error::Model(format!(
        "{}: could not read the number of attention heads from the graph around '{hook}'; pass a head count N",
        path.display()
    ))
}

/// KV caches and merged decoders' fixed `If`s are normalised at load
/// (`normalize::kv_cache`, `normalize::if_inline`); an `If` whose condition is
/// computed at run time is left, and no gradient flows through it.
pub fn check_inputs(model: &OnnxModel) -> Result<()> {
    let g = model.graph();
    let known = ["input_ids", "attention_mask", "position_ids"];
    if let Some(n) = g.node.iter().find(|n| n.op_type == "If") {
        return Err(Error::Unsupported(format!(
            "{}: If node '{}' branches on '{}', which is computed at run time; attrpatch inlines If nodes whose \
             condition is a constant (such as a merged decoder's use_cache_branch) and cannot differentiate \
             through a branch chosen at run time",
            model.path.display(),
            n.name,
            n.input.first().map(String::as_str).unwrap_or("")
        )));
    }
    let first = g.input.first().map(|i| i.name.as_str());
    for i in &g.input {
        let is_initializer = g.initializer.iter().any(|t| t.name == i.name);
        if !known.contains(&i.name.as_str()) && Some(i.name.as_str()) != first && !is_initializer {
            return Err(Error::Unsupported(format!(
                "{}: input '{}' is not supported: attrpatch feeds input_ids, attention_mask and position_ids",
                model.path.display(),
                i.name
            )));
        }
    }
    Ok(())
}

/// The batch and sequence dims of the token input, as the model declares them.
fn token_dims(model: &OnnxModel, input: &str) -> Result<(Dim, Dim)> {
    let vi = model.graph().input.iter().find(|i| i.name == input).unwrap();
    let dims = declared_dims(vi);
    match dims.as_slice() {
        [b, s] => Ok((b.clone(), s.clone())),
        _ => Err(Error::Model(format!(
            "{}: input '{input}' should be [batch, sequence], found rank {}",
            model.path.display(),
            dims.len()
        ))),
    }
}

//! `rewrite`: the augmented model (metric, backward graph, hook outputs) as a
//! standard ONNX model that records what it computes and builds its own feeds.

use super::describe::TensorSpec;
use super::pairs::TokenPairs;
use super::source::ModelSource;
use attrpatch_core::augment::{augment_with, AugmentOptions, Augmented, Metric};
use attrpatch_core::hooks::{Hook, HookKind};
use attrpatch_core::job::{pair_inputs, JobGraph};
use attrpatch_core::runtime::Value;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::io::{needs_external_data, save_model, PROTOBUF_LIMIT};
use attrpatch_onnx::pb::ModelProto;
use prost::Message;
use std::path::{Path, PathBuf};

/// What `rewrite` builds.
#[derive(Debug, Clone)]
pub struct RewriteOptions {
    /// The quantity attributed (default: the tutorial's logit difference).
    pub metric: Metric,
    /// Which activations: attention out-projection inputs (default), resid, mlp or a regex.
    pub hooks: HookKind,
    /// The head count, when the graph does not tell it.
    pub heads: Option<usize>,
    /// Output each hook's clean and corrupted activation and its gradient (default true).
    pub raw_outputs: bool,
    /// Output each pair's grid rows computed in the graph (default true).
    pub grid_outputs: bool,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        let d = AugmentOptions::default();
        RewriteOptions {
            metric: d.metric,
            hooks: d.hooks,
            heads: d.heads,
            raw_outputs: d.raw_outputs,
            grid_outputs: d.grid_outputs,
        }
    }
}

/// The augmented model: an ordinary ONNX model that runs the original twice
/// (clean and corrupted copies), computes the metric and its gradient with
/// respect to every hook. It records the metric, hooks and head count it was
/// built with, and builds the inputs it must be fed (`feeds`).
pub struct AugmentedModel {
    inner: Augmented,
    source_had_external_data: bool,
}

/// Rewrites `model` into its augmented model (see `AugmentedModel`).
pub fn rewrite(model: impl Into<ModelSource>, opts: &RewriteOptions) -> Result<AugmentedModel> {
    let m = model.into().load()?;
    let source_had_external_data = m.had_external_data;
    let inner = augment_with(
        m,
        AugmentOptions {
            raw_outputs: opts.raw_outputs,
            grid_outputs: opts.grid_outputs,
            heads: opts.heads,
            metric: opts.metric,
            hooks: opts.hooks.clone(),
            atp_star: None,
        },
    )?;
    Ok(AugmentedModel { inner, source_had_external_data })
}

impl AugmentedModel {
    /// The metric the graph computes (the answer selectors `feeds` builds follow it).
    pub fn metric(&self) -> Metric {
        self.inner.metric
    }

    /// The hook tensors, one per layer, in layer order.
    pub fn hooks(&self) -> &[Hook] {
        &self.inner.hooks
    }

    /// Attention heads per hook; None for hooks that do not split into heads.
    pub fn heads(&self) -> Option<usize> {
        self.inner.heads
    }

    /// The model's vocabulary size (the logits' last dim).
    pub fn vocab(&self) -> usize {
        self.inner.vocab
    }

    /// The graph's inputs (token ids of both copies, selectors, pair weights).
    pub fn inputs(&self) -> Vec<TensorSpec> {
        self.graph().map(|g| g.input.iter().map(TensorSpec::declared).collect()).unwrap_or_default()
    }

    /// The graph's outputs (baselines, metric, per-pair values, hook tensors, grid rows).
    pub fn outputs(&self) -> Vec<TensorSpec> {
        self.graph().map(|g| g.output.iter().map(TensorSpec::declared).collect()).unwrap_or_default()
    }

    fn graph(&self) -> Option<&attrpatch_onnx::pb::GraphProto> {
        self.inner.proto.graph.as_ref()
    }

    /// The augmented protobuf.
    pub fn proto(&self) -> &ModelProto {
        &self.inner.proto
    }

    /// The augmented protobuf, taken.
    pub fn into_proto(self) -> ModelProto {
        self.inner.base.proto
    }

    /// The model serialised with every weight inline (what `onnx.load_from_string`
    /// and `onnxruntime.InferenceSession` read). A model over protobuf's 2 GB limit
    /// cannot be one message: that is an error, and `save` writes it with external data.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let len = self.inner.proto.encoded_len() as u64;
        if len > PROTOBUF_LIMIT {
            return Err(Error::Model(format!(
                "the augmented model is {len} bytes, over protobuf's 2 GB limit ({PROTOBUF_LIMIT} bytes): it cannot be \
                 serialised as one message; save it to a file instead (AugmentedModel::save, the CLI's rewrite), which \
                 writes the weights as external data beside it"
            )));
        }
        Ok(self.inner.proto.encode_to_vec())
    }

    /// Writes the model to `path`, its weights in an external data file beside
    /// it when it is over 2 GB or the source model had one; returns the files written.
    pub fn save(&mut self, path: &Path) -> Result<Vec<PathBuf>> {
        let external = needs_external_data(&self.inner.proto, self.source_had_external_data, PROTOBUF_LIMIT);
        save_model(&mut self.inner.proto, path, external)
    }

    /// Every input of one run over `pairs`, by name: token ids (and mask and
    /// positions when the model takes them) of both copies, the last-position
    /// and answer selectors for this graph's metric, and the pair weights.
    pub fn feeds(&self, pairs: &TokenPairs) -> Result<Vec<(String, Value)>> {
        let t = pairs.to_tokenized(self.inner.vocab)?;
        Ok(pair_inputs(&self.inner.token_inputs(), &t))
    }
}

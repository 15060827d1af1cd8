//! What the edge graph (`graph`) and the edge-patching graph (`patch_graph`)
//! start from: the model's hooks, heads and blocks read, and every reader
//! given its own input copy (`rewrite`). Each builder then adds its own copies,
//! inputs and outputs.

use super::anatomy::{self, BlockAnatomy};
use super::rewrite;
use crate::augment::anatomy::Anatomy;
use crate::augment::skeleton;
use crate::hooks::HookKind;
use attrpatch_onnx::builder::GraphBuilder;
use attrpatch_onnx::error::Result;
use attrpatch_onnx::facts::Facts;
use attrpatch_onnx::graph::all_names;
use attrpatch_onnx::pb::ModelProto;
use attrpatch_onnx::OnnxModel;
use std::collections::HashSet;
use std::path::PathBuf;

/// The model with its readers on their own copies, and what was read of it.
pub(crate) struct Start {
    /// The hooks and token inputs; its constants are those of the rewritten
    /// graph, so the copies share the weight slices.
    pub anat: Anatomy,
    /// The query head count (read, or the caller's override).
    pub heads: usize,
    /// The blocks as found.
    pub blocks: BlockAnatomy,
    /// The model file (external data is found beside it).
    pub path: PathBuf,
    /// The rewritten model.
    pub proto: ModelProto,
    /// The builder the copies were made with; its names are unique in `proto`.
    pub builder: GraphBuilder,
}

impl Start {
    /// Reads `model` and gives its readers copies; new names start with `prefix`.
    pub(crate) fn read(model: OnnxModel, heads: Option<usize>, prefix: &str) -> Result<Start> {
        let mut anat = Anatomy::read(&model, &HookKind::AttnOut)?;
        let heads = anat.required_heads(&model, heads)?;
        // Ranks at a probe size: the symbolic facts lose them in legacy exports' shape chains.
        let facts = probed_facts(&model)?;
        let blocks =
            anatomy::read(model.graph(), &anat.constants, &facts, &model.path, &anat.hooks, heads, &anat.logits)?;
        let (path, opset) = (model.path, model.opset);
        let mut proto = model.proto;
        // `OnnxModel::read` refuses a file without a graph.
        let g = proto.graph.as_mut().unwrap();
        let mut builder = GraphBuilder::new(opset, prefix, all_names(g));
        rewrite::give_readers_copies(g, &blocks, &facts, &mut builder, &path)?;
        // The copies share what is constant now, the weight slices included.
        anat.constants = crate::hooks::constant_tensors_of(g);
        Ok(Start { anat, heads, blocks, path, proto, builder })
    }
}

/// The model's facts with its token inputs at the probe size.
pub(crate) fn probed_facts(model: &OnnxModel) -> Result<Facts> {
    let g = model.graph();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let probe: Vec<(&str, Vec<usize>)> = g
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| (i.name.as_str(), vec![skeleton::PROBE_PAIRS, skeleton::PROBE_SEQ]))
        .collect();
    attrpatch_onnx::facts::analyse_with_probe(&model.proto, &model.path, &probe)
}

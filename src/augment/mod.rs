//! The augmented model: the original graph run twice (a copy for the clean
//! prompts, the original for the corrupted ones), metric nodes, a backward
//! graph for the corrupted copy, and outputs for every hook's clean and
//! corrupted activation and its gradient.
//!
//! The metric is the tutorial's normalised logit difference of the corrupted
//! prompts, (ld_corr - CORR) / (CLEAN - CORR), where CLEAN and CORR are the
//! same run's baselines held constant (stop-gradient), or the same
//! normalisation of another metric (metric.rs). Its value is 0 by
//! construction; its gradient is d ld_corr / (CLEAN - CORR). The outputs
//! named `*_logit_diff*` hold the chosen metric's raw values.

mod anatomy;
pub(crate) mod copy;
pub(crate) mod grid_nodes;
pub(crate) mod metric;

/// Re-exported from `onnx::graph`, where it lives, for callers of the old path.
pub use crate::onnx::graph::value_info;
pub use anatomy::{check_inputs, heads_unknown, Anatomy};
pub use metric::Metric;

use crate::autodiff::Backward;
use crate::error::Result;
use crate::hooks::Hook;
use crate::onnx::builder::GraphBuilder;
use crate::onnx::facts::{analyse_with_probe, Dim};
use crate::onnx::graph::all_names;
use crate::onnx::pb::{ModelProto, ValueInfoProto};
use crate::onnx::OnnxModel;
use std::collections::{HashMap, HashSet};

pub mod names {
    /// Prefix of every tensor of the clean copy of the forward graph.
    pub const CLEAN_PREFIX: &str = "clean/";
    pub const POSITION_ONEHOT: &str = "attrpatch.last_position_onehot";
    pub const ANSWER_ONEHOT: &str = "attrpatch.answer_onehot";
    pub const PAIR_WEIGHTS: &str = "attrpatch.pair_weights";
    pub const CLEAN_LD: &str = "attrpatch.clean_logit_diff";
    pub const CORRUPTED_LD: &str = "attrpatch.corrupted_logit_diff";
    pub const METRIC: &str = "attrpatch.metric";
    /// Each pair's logit difference, [1, B].
    pub const CLEAN_LDS: &str = "attrpatch.clean_logit_diffs";
    pub const CORRUPTED_LDS: &str = "attrpatch.corrupted_logit_diffs";
    pub fn clean_input(model_input: &str) -> String {
        format!("clean.{model_input}")
    }
    pub fn corrupted_input(model_input: &str) -> String {
        format!("corrupted.{model_input}")
    }
    pub fn clean_act(layer: usize) -> String {
        format!("attrpatch.clean_act.{layer}")
    }
    pub fn corrupted_act(layer: usize) -> String {
        format!("attrpatch.corrupted_act.{layer}")
    }
    pub fn grad(layer: usize) -> String {
        format!("attrpatch.grad.{layer}")
    }
    /// Per pair, the heads grid row of a layer (gradient of the graph's metric), [B, H].
    pub fn heads(layer: usize) -> String {
        format!("attrpatch.heads.{layer}")
    }
    /// Per pair, the positions grid row of a layer, [B, S].
    pub fn positions(layer: usize) -> String {
        format!("attrpatch.positions.{layer}")
    }
}

/// Probe sizes for shape analysis: pairs and positions, neither 1.
const PROBE_PAIRS: usize = 3;
const PROBE_SEQ: usize = 7;

/// A model input fed with tokens: its name in the clean and corrupted copies.
#[derive(Debug, Clone)]
pub struct TokenInput {
    pub model_name: String,
    pub clean: String,
    pub corrupted: String,
}

pub struct Augmented {
    pub proto: ModelProto,
    pub hooks: Vec<Hook>,
    pub input_ids: TokenInput,
    pub attention_mask: Option<TokenInput>,
    /// Fed with 0..S for every row (prompts are right-padded).
    pub position_ids: Option<TokenInput>,
    pub vocab: usize,
    /// Attention heads, as read from the graph around the first hook.
    pub heads: Option<usize>,
    /// Whether the lm_head runs on the last positions only.
    pub lm_head_last_position_only: bool,
}

/// What the augmented graph outputs besides the baselines.
#[derive(Debug, Clone)]
pub struct AugmentOptions {
    /// The hook activations (clean, corrupted) and gradients themselves.
    pub raw_outputs: bool,
    /// Per-pair grids computed in the graph (needs the head count).
    pub grid_outputs: bool,
    /// Overrides the head count read from the graph.
    pub heads: Option<usize>,
    pub metric: Metric,
    pub hooks: crate::hooks::HookKind,
}

impl Default for AugmentOptions {
    fn default() -> Self {
        AugmentOptions {
            raw_outputs: true,
            grid_outputs: true,
            heads: None,
            metric: Metric::LogitDiff,
            hooks: crate::hooks::HookKind::AttnOut,
        }
    }
}

/// Builds the augmented model with every output. Takes the model by value:
/// the weights move into the result instead of being copied.
pub fn augment(model: OnnxModel) -> Result<Augmented> {
    augment_with(model, AugmentOptions::default())
}

pub fn augment_with(model: OnnxModel, opts: AugmentOptions) -> Result<Augmented> {
    let anatomy = Anatomy::read(&model, &opts.hooks)?;
    if let Some(h) = opts.heads {
        anatomy.check_heads(&model, h)?;
    }
    let Anatomy { hooks, facts0, logits, dtype, vocab, batch, seq, ids_in, mask_in, pos_in, constants, src } = anatomy;
    let token_inputs: Vec<&TokenInput> =
        std::iter::once(&ids_in).chain(mask_in.as_ref()).chain(pos_in.as_ref()).collect();
    let lm_head_last_position_only = matches!(src, metric::LogitsSource::LmHead { .. });
    let (path, opset) = (model.path.clone(), model.opset);
    let mut proto = model.proto;
    let g = proto.graph.as_mut().unwrap();

    // The corrupted copy is the original graph with its inputs renamed; the
    // clean copy renames everything that is not constant.
    let corrupted_map: HashMap<String, String> =
        token_inputs.iter().map(|t| (t.model_name.clone(), t.corrupted.clone())).collect();
    let clean_map: HashMap<String, String> =
        token_inputs.iter().map(|t| (t.model_name.clone(), t.clean.clone())).collect();
    let clean = copy::Renamer { prefix: names::CLEAN_PREFIX, inputs: &clean_map, constants: &constants };
    let clean_nodes = clean.copy(&g.node);
    copy::rename_inputs(&mut g.node, &corrupted_map);
    let corrupted_name = |t: &str| corrupted_map.get(t).cloned().unwrap_or_else(|| t.to_string());
    let clean_name = |t: &str| clean.name(t);
    g.node.extend(clean_nodes);

    let mut inputs = vec![];
    for t in &token_inputs {
        let vi = g.input.iter().find(|i| i.name == t.model_name).unwrap().clone();
        inputs.push(ValueInfoProto { name: t.clean.clone(), ..vi.clone() });
        inputs.push(ValueInfoProto { name: t.corrupted.clone(), ..vi });
    }
    g.input.retain(|i| !token_inputs.iter().any(|t| t.model_name == i.name));
    g.input.splice(0..0, inputs);
    g.input.push(value_info(names::POSITION_ONEHOT, dtype, &[batch.clone(), Dim::Known(1), seq.clone()]));
    g.input.push(value_info(names::ANSWER_ONEHOT, dtype, &[batch.clone(), Dim::Known(vocab as i64), Dim::Known(1)]));
    g.input.push(value_info(names::PAIR_WEIGHTS, dtype, &[batch.clone(), Dim::Known(1)]));

    // Metric nodes.
    let mut b = GraphBuilder::new(opset, "attrpatch/", all_names(g));
    let pairs = metric::PAIR_SELECTORS;
    let clean_sel = metric::last_logits(&mut b, &src, &logits, &clean_name, pairs);
    let corrupted_sel = metric::last_logits(&mut b, &src, &logits, &corrupted_name, pairs);
    metric::metric_values(&mut b, opts.metric, &clean_sel, &clean_sel, pairs, names::CLEAN_LDS, names::CLEAN_LD);
    metric::metric_values(
        &mut b,
        opts.metric,
        &corrupted_sel,
        &clean_sel,
        pairs,
        names::CORRUPTED_LDS,
        names::CORRUPTED_LD,
    );
    let clean_const = b.node("Identity", &[names::CLEAN_LD], vec![]);
    let corr_const = b.node("Identity", &[names::CORRUPTED_LD], vec![]);
    let num = b.sub(names::CORRUPTED_LD, &corr_const);
    let den = b.sub(&clean_const, &corr_const);
    b.node_named("Div", &[&num, &den], names::METRIC, vec![]);
    let stop: HashSet<String> = [clean_const, corr_const].into_iter().collect();
    g.node.append(&mut b.nodes);
    g.initializer.append(&mut b.initializers);
    // The original outputs (full logits) are not needed: dropping them lets
    // the runtime skip the lm_head on every position but the last.
    g.output.clear();

    // Facts of the graph with the metric, for the rules, at a probe shape.
    let (pp, ps) = (PROBE_PAIRS, PROBE_SEQ);
    let mut probe: Vec<(&str, Vec<usize>)> = vec![];
    for t in &token_inputs {
        probe.push((t.clean.as_str(), vec![pp, ps]));
        probe.push((t.corrupted.as_str(), vec![pp, ps]));
    }
    probe.extend([
        (names::POSITION_ONEHOT, vec![pp, 1, ps]),
        (names::ANSWER_ONEHOT, vec![pp, vocab, 1]),
        (names::PAIR_WEIGHTS, vec![pp, 1]),
    ]);
    let scalar = [Dim::Known(1), Dim::Known(1)];
    for name in [names::CLEAN_LD, names::CORRUPTED_LD, names::METRIC] {
        g.output.push(value_info(name, dtype, &scalar));
    }
    for name in [names::CLEAN_LDS, names::CORRUPTED_LDS] {
        g.output.push(value_info(name, dtype, &[Dim::Known(1), batch.clone()]));
    }
    let facts = analyse_with_probe(&proto, &path, &probe)?;
    let g = proto.graph.as_mut().unwrap();
    let heads = if opts.hooks.has_heads() {
        opts.heads.or_else(|| crate::hooks::infer_heads(g, &facts, &hooks[0].tensor))
    } else {
        None
    };
    let seed = b.const_tensor(dtype, &[1, 1], &[1.0]);
    let wrt: Vec<String> = hooks.iter().map(|h| h.tensor.clone()).collect();
    let grads = Backward { graph: g, facts: &facts, stop: &stop }.build(&mut b, &wrt, names::METRIC, &seed)?;

    let grid_heads = match (opts.grid_outputs, heads) {
        (true, Some(h)) => Some(h),
        (true, None) if !opts.raw_outputs && opts.hooks.has_heads() => {
            return Err(anatomy::heads_unknown(&path, &hooks[0].tensor))
        }
        _ => None,
    };
    let shape_bs = b.shape(&ids_in.clean);
    for (h, gr) in hooks.iter().zip(&grads) {
        let clean_act = clean_name(&h.tensor);
        if opts.raw_outputs {
            // Declared with the symbolic facts: the probe's sizes are not the model's.
            let shape = facts0.shape(&h.tensor).map(|s| s.to_vec()).unwrap_or_default();
            let outs = [
                (names::clean_act(h.layer), clean_act.clone()),
                (names::corrupted_act(h.layer), h.tensor.clone()),
                (names::grad(h.layer), gr.clone()),
            ];
            for (out, from) in outs {
                b.node_named("Identity", &[&from], &out, vec![]);
                g.output.push(value_info(&out, dtype, &shape));
            }
        }
        if opts.grid_outputs {
            grid_nodes::emit(&mut b, h.layer, &clean_act, &h.tensor, gr, &shape_bs, names::POSITION_ONEHOT, grid_heads);
            if let Some(n_heads) = grid_heads {
                g.output.push(value_info(&names::heads(h.layer), dtype, &[batch.clone(), Dim::Known(n_heads as i64)]));
            }
            g.output.push(value_info(&names::positions(h.layer), dtype, &[batch.clone(), seq.clone()]));
        }
    }
    g.node.append(&mut b.nodes);
    g.initializer.append(&mut b.initializers);
    // Intermediate value_info may disagree with new uses; runtimes re-infer.
    g.value_info.clear();
    crate::onnx::prune::prune_dead(g);
    proto.producer_name = "attrpatch".into();
    proto.producer_version = env!("CARGO_PKG_VERSION").into();
    Ok(Augmented {
        proto,
        hooks,
        input_ids: ids_in,
        attention_mask: mask_in,
        position_ids: pos_in,
        vocab,
        heads,
        lm_head_last_position_only,
    })
}

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

pub mod anatomy;
pub(crate) mod copy;
pub(crate) mod grid_nodes;
pub(crate) mod metric;
pub mod names;
pub(crate) mod shared;
pub(crate) mod skeleton;

pub use anatomy::{check_inputs, heads_unknown, Anatomy, TokenInput};
/// Re-exported from `onnx::graph`, where it lives, for callers of the old path.
pub use attrpatch_onnx::graph::value_info;
pub use metric::Metric;

use attrpatch_autodiff::Backward;
use attrpatch_onnx::builder::GraphBuilder;
use attrpatch_onnx::error::Result;
use attrpatch_onnx::facts::Dim;
use attrpatch_onnx::graph::all_names;
use attrpatch_onnx::pb::GraphProto;
use attrpatch_onnx::OnnxModel;
use std::collections::{HashMap, HashSet};

/// (The metadata round-trips through a cache entry; the graph is stored beside it.)
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Augmented {
    /// The graph, its hooks, token inputs, vocabulary, heads and metric.
    #[serde(flatten)]
    pub base: crate::augment::anatomy::GraphBase,
    /// Whether the lm_head runs on the last positions only.
    pub lm_head_last_position_only: bool,
    /// The shared-rows graph (`augment_shared`): one forward copy over the
    /// distinct sequences, fed rows and per-pair row indices (`job::rows`);
    /// false for the two-copy graph, fed clean and corrupted prompts.
    pub shared_rows: bool,
}

/// What the augmented graph outputs besides the baselines.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AugmentOptions {
    /// The hook activations (clean, corrupted) and gradients themselves.
    pub raw_outputs: bool,
    /// Per-pair grids computed in the graph (needs the head count).
    pub grid_outputs: bool,
    /// Overrides the head count read from the graph.
    pub heads: Option<usize>,
    /// The metric to compute and differentiate.
    pub metric: Metric,
    /// Which activations to attribute.
    pub hooks: crate::hooks::HookKind,
    /// AtP*'s outputs (`atp_star::graph`): None for none; Some(grad_drop),
    /// with GradDrop's sweeps when true. Two-copy graph only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atp_star: Option<bool>,
}

impl Default for AugmentOptions {
    fn default() -> Self {
        AugmentOptions {
            raw_outputs: true,
            grid_outputs: true,
            heads: None,
            metric: Metric::LogitDiff,
            hooks: crate::hooks::HookKind::AttnOut,
            atp_star: None,
        }
    }
}

/// Builds the augmented model with every output. Takes the model by value:
/// the weights move into the result instead of being copied.
pub fn augment(model: OnnxModel) -> Result<Augmented> {
    augment_with(model, AugmentOptions::default())
}

/// Builds the two-copy attribution graph: a clean copy (forward only) and the
/// corrupted copy (forward and backward), one row per pair in each.
pub fn augment_with(model: OnnxModel, opts: AugmentOptions) -> Result<Augmented> {
    build(model, opts, false)
}

/// Builds the shared-rows attribution graph (`shared`): one forward copy over
/// the distinct sequences, with the backward; its outputs are the two-copy
/// graph's, names and [B, ...] shapes alike.
pub fn augment_shared(model: OnnxModel, opts: AugmentOptions) -> Result<Augmented> {
    build(model, opts, true)
}

/// The forward graph of either layout, as the metric and the outputs read it.
enum Forward<'a> {
    TwoCopy(Copies<'a>),
    Shared(shared::SharedRows),
}

fn build(model: OnnxModel, opts: AugmentOptions, shared_rows: bool) -> Result<Augmented> {
    let mut anat = Anatomy::read(&model, &opts.hooks)?;
    if let Some(h) = opts.heads {
        anat.check_heads(&model, h)?;
    }
    let atp_star = match opts.atp_star {
        Some(_) if shared_rows => {
            return Err(attrpatch_onnx::error::Error::Input(
                "AtP* runs on the two-copy graph: run it with --dedup off".into(),
            ))
        }
        Some(grad_drop) => {
            let heads = anat.required_heads(&model, opts.heads)?;
            Some(crate::atp_star::graph::Plan::read(&model, &anat, heads, grad_drop)?)
        }
        None => None,
    };
    if shared_rows {
        shared::rename_token_inputs(&mut anat);
    }
    let lm_head_last_position_only = matches!(anat.src, metric::LogitsSource::LmHead { .. });
    let (path, opset) = (model.path.clone(), model.opset);
    let mut proto = model.proto;
    let g = proto.graph.as_mut().unwrap();

    let forward = if shared_rows {
        Forward::Shared(shared::SharedRows::make(g, &anat))
    } else {
        let copies = Copies::make(g, &anat);
        skeleton::declare_inputs(g, &anat);
        Forward::TwoCopy(copies)
    };
    let mut b = GraphBuilder::new(opset, "attrpatch/", all_names(g));
    let stop = match &forward {
        Forward::TwoCopy(copies) => metric_nodes(&mut b, &anat, opts.metric, copies),
        Forward::Shared(rows) => rows.metric_nodes(&mut b, &anat, opts.metric),
    };
    b.apply(g);
    // The original outputs (full logits) are not needed: dropping them lets
    // the runtime skip the lm_head on every position but the last.
    g.output.clear();
    declare_metric_outputs(g, &anat);

    // Facts of the graph with the metric, for the rules, at a probe shape.
    let probe = match &forward {
        Forward::TwoCopy(_) => skeleton::probe_inputs(&anat),
        Forward::Shared(_) => shared::probe_inputs(&anat),
    };
    let facts = skeleton::analyse_probed(&proto, &path, &probe)?;
    let g = proto.graph.as_mut().unwrap();
    let heads = if opts.hooks.has_heads() {
        opts.heads.or_else(|| crate::hooks::infer_heads(g, &facts, &anat.hooks[0].tensor))
    } else {
        None
    };
    let seed = b.const_tensor(anat.dtype, &[1, 1], &[1.0]);
    let mut wrt: Vec<String> = anat.hooks.iter().map(|h| h.tensor.clone()).collect();
    if let Some(plan) = &atp_star {
        wrt.extend(plan.wrt());
    }
    let mut grads = Backward { graph: g, facts: &facts, stop: &stop }.build(&mut b, &wrt, names::METRIC, &seed)?;
    let extra_grads = grads.split_off(anat.hooks.len());

    let grid_heads = match (opts.grid_outputs, heads) {
        (true, Some(h)) => Some(h),
        (true, None) if !opts.raw_outputs && opts.hooks.has_heads() => {
            return Err(anatomy::heads_unknown(&path, &anat.hooks[0].tensor))
        }
        _ => None,
    };
    let (views, shape_bs) = match &forward {
        Forward::TwoCopy(copies) => {
            let views = anat
                .hooks
                .iter()
                .zip(&grads)
                .map(|(h, gr)| HookViews {
                    clean: copies.clean_name(&h.tensor),
                    corrupted: h.tensor.clone(),
                    grad: gr.clone(),
                })
                .collect();
            (views, b.shape(&anat.ids_in.clean))
        }
        Forward::Shared(rows) => (rows.hook_views(&mut b, &anat, &grads), rows.pair_shape(&mut b, &anat)),
    };
    hook_outputs(&mut b, g, &anat, &views, &shape_bs, &opts, grid_heads);
    if let (Some(plan), Forward::TwoCopy(copies)) = (&atp_star, &forward) {
        plan.emit(
            &mut b,
            g,
            &facts,
            &stop,
            &anat,
            &|t| copies.clean_name(t),
            &extra_grads,
            &shape_bs,
            opts.raw_outputs,
        )?;
    }
    b.apply(g);
    skeleton::finish(&mut proto);
    Ok(Augmented { base: anat.into_base(proto, heads, opts.metric), lm_head_last_position_only, shared_rows })
}

/// How each copy of the forward graph names the original's tensors.
pub(crate) struct Copies<'a> {
    clean: copy::Renamer<'a>,
    /// The corrupted copy's renamed token inputs; every other name is kept.
    corrupted: HashMap<String, String>,
}

impl<'a> Copies<'a> {
    /// The corrupted copy is the original graph with its inputs renamed; the
    /// clean copy, appended to it, renames everything that is not constant.
    pub(crate) fn make(g: &mut GraphProto, anat: &'a Anatomy) -> Self {
        let token_inputs = anat.token_inputs();
        let corrupted = copy::input_map(&token_inputs, |t| t.corrupted.clone());
        let clean = copy::Renamer::clean(&token_inputs, &anat.constants);
        let clean_nodes = clean.copy(&g.node);
        copy::rename_inputs(&mut g.node, &corrupted);
        g.node.extend(clean_nodes);
        Copies { clean, corrupted }
    }

    pub(crate) fn clean_name(&self, t: &str) -> String {
        self.clean.name(t)
    }

    fn corrupted_name(&self, t: &str) -> String {
        self.corrupted.get(t).cloned().unwrap_or_else(|| t.to_string())
    }
}

/// Each copy's metric values, and the normalised metric
/// `(corrupted - CORR) / (CLEAN - CORR)` the backward differentiates; returns
/// the stop-gradient `Identity` outputs that hold the baselines constant.
pub(crate) fn metric_nodes(b: &mut GraphBuilder, anat: &Anatomy, m: Metric, copies: &Copies) -> HashSet<String> {
    metric_nodes_named(b, anat, m, &|t| copies.clean_name(t), &|t| copies.corrupted_name(t))
}

/// `metric_nodes` for any two views of the forward graph: `clean` and
/// `corrupted` map an original tensor name to the [B, ...] tensor of that role.
pub(crate) fn metric_nodes_named(
    b: &mut GraphBuilder,
    anat: &Anatomy,
    m: Metric,
    clean: &dyn Fn(&str) -> String,
    corrupted: &dyn Fn(&str) -> String,
) -> HashSet<String> {
    let pairs = metric::PAIR_SELECTORS;
    let (src, logits) = (&anat.src, &anat.logits);
    let clean_sel = metric::last_logits(b, src, logits, clean, pairs);
    let corrupted_sel = metric::last_logits(b, src, logits, corrupted, pairs);
    metric::metric_values(b, m, &clean_sel, &clean_sel, pairs, names::CLEAN_LDS, names::CLEAN_LD);
    metric::metric_values(b, m, &corrupted_sel, &clean_sel, pairs, names::CORRUPTED_LDS, names::CORRUPTED_LD);
    let clean_const = b.node("Identity", &[names::CLEAN_LD], vec![]);
    let corr_const = b.node("Identity", &[names::CORRUPTED_LD], vec![]);
    let num = b.sub(names::CORRUPTED_LD, &corr_const);
    let den = b.sub(&clean_const, &corr_const);
    b.node_named("Div", &[&num, &den], names::METRIC, vec![]);
    [clean_const, corr_const].into_iter().collect()
}

/// The baselines, the metric and the per-pair metric values as outputs.
pub(crate) fn declare_metric_outputs(g: &mut GraphProto, anat: &Anatomy) {
    let scalar = [Dim::Known(1), Dim::Known(1)];
    for name in [names::CLEAN_LD, names::CORRUPTED_LD, names::METRIC] {
        g.output.push(value_info(name, anat.dtype, &scalar));
    }
    for name in [names::CLEAN_LDS, names::CORRUPTED_LDS] {
        g.output.push(value_info(name, anat.dtype, &[Dim::Known(1), anat.batch.clone()]));
    }
}

/// One hook's three [B, ...] tensors, per pair: clean and corrupted activation and the gradient.
pub(crate) struct HookViews {
    pub clean: String,
    pub corrupted: String,
    pub grad: String,
}

/// Per hook: the raw activations and gradient (`raw_outputs`) and the grid
/// rows (`grid_outputs`; the heads row only with `grid_heads`) as outputs.
/// `views` holds each hook's tensors; `shape_bs` is Shape = [B, S] of a per-pair token tensor.
pub(crate) fn hook_outputs(
    b: &mut GraphBuilder,
    g: &mut GraphProto,
    anat: &Anatomy,
    views: &[HookViews],
    shape_bs: &str,
    opts: &AugmentOptions,
    grid_heads: Option<usize>,
) {
    let (dtype, batch) = (anat.dtype, &anat.batch);
    for (h, v) in anat.hooks.iter().zip(views) {
        if opts.raw_outputs {
            // Declared with the symbolic facts: the probe's sizes are not the model's.
            let shape = anat.facts0.shape(&h.tensor).map(|s| s.to_vec()).unwrap_or_default();
            let outs = [
                (names::clean_act(h.layer), &v.clean),
                (names::corrupted_act(h.layer), &v.corrupted),
                (names::grad(h.layer), &v.grad),
            ];
            for (out, from) in outs {
                b.node_named("Identity", &[from], &out, vec![]);
                g.output.push(value_info(&out, dtype, &shape));
            }
        }
        if opts.grid_outputs {
            grid_nodes::emit(b, h.layer, &v.clean, &v.corrupted, &v.grad, shape_bs, names::POSITION_ONEHOT, grid_heads);
            if let Some(n_heads) = grid_heads {
                g.output.push(value_info(&names::heads(h.layer), dtype, &[batch.clone(), Dim::Known(n_heads as i64)]));
            }
            g.output.push(value_info(&names::positions(h.layer), dtype, &[batch.clone(), anat.seq.clone()]));
        }
    }
}

crate::augment::anatomy::deref_base!(Augmented);

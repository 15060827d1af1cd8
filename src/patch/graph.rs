//! The patching graph: the model run on "rows", each row a corrupted prompt
//! whose hook activations are moved part of the way, or all the way, to the
//! clean prompt's.
//!
//!   clean copy:   the pairs' clean prompts, B rows, forward only
//!   patched copy: R rows; row r is pair row_pair[r]'s corrupted prompt, and
//!                 at every hook   x' = x + mask[r] * (clean[row_pair[r]] - x)
//!                 with mask [R, S, U, 1] over positions and units (heads, or
//!                 one unit for hooks without heads)
//!
//! A mask of ones on one head at the last position is exact activation
//! patching of that head; a mask of alpha on a whole layer is a point on the
//! straight line from the corrupted to the clean activation, where
//! integrated gradients reads the gradient. Many patches run as the rows of
//! one call. With `gradients`, the graph also differentiates the sum of the
//! rows' metrics with respect to every patched activation x' and reduces
//! grad * (clean - x) to per-row grid rows, as the attribution graph does.

use crate::augment::{copy, grid_nodes, metric, names as aug_names, Anatomy, Metric, TokenInput};
use crate::autodiff::Backward;
use crate::error::{Error, Result};
use crate::hooks::{Hook, HookKind};
use crate::onnx::builder::{attr_i, GraphBuilder};
use crate::onnx::consts::INT64;
use crate::onnx::facts::{analyse_with_probe, Dim};
use crate::onnx::graph::{all_names, value_info};
use crate::onnx::pb::{ModelProto, NodeProto};
use crate::onnx::OnnxModel;
use std::collections::{HashMap, HashSet};

pub mod names {
    /// [R] int64: the pair (index into the clean inputs) each row patches.
    pub const ROW_PAIR: &str = "attrpatch.row_pair";
    /// [R, 1]: weight of each row's metric in the differentiated sum.
    pub const ROW_WEIGHTS: &str = "attrpatch.row_weights";
    /// [1, R]: each row's metric value.
    pub const ROW_METRIC: &str = "attrpatch.row_metric";
    /// [1, 1]: the sum the backward differentiates.
    pub const ROW_METRIC_SUM: &str = "attrpatch.row_metric_sum";
    /// [R, S, U, 1]: how far each row moves layer `layer`'s activation to the clean one.
    pub fn mask(layer: usize) -> String {
        format!("attrpatch.patch_mask.{layer}")
    }
    pub(super) fn rows_input(model_input: &str) -> String {
        format!("attrpatch.rows.{model_input}")
    }
}

pub struct PatchGraphOptions {
    pub metric: Metric,
    pub hooks: HookKind,
    /// Overrides the head count read from the graph.
    pub heads: Option<usize>,
    /// Differentiate the rows' metrics and output per-row grid rows.
    pub gradients: bool,
}

pub struct PatchGraph {
    pub proto: ModelProto,
    pub hooks: Vec<Hook>,
    /// Heads per hook; None for hooks that do not split into heads (one unit).
    pub heads: Option<usize>,
    pub input_ids: TokenInput,
    pub attention_mask: Option<TokenInput>,
    pub position_ids: Option<TokenInput>,
    pub vocab: usize,
    pub gradients: bool,
}

impl PatchGraph {
    /// Units of a hook that a mask addresses: its heads, or the whole hook.
    pub fn units(&self) -> usize {
        self.heads.unwrap_or(1)
    }
}

const PROBE_PAIRS: usize = 3;
const PROBE_ROWS: usize = 5;
const PROBE_SEQ: usize = 7;

pub fn build(model: OnnxModel, opts: &PatchGraphOptions) -> Result<PatchGraph> {
    let anat = Anatomy::read(&model, &opts.hooks)?;
    let heads = if opts.hooks.has_heads() {
        let h = match opts.heads {
            Some(h) => Some(h),
            None => anat.infer_heads(&model)?,
        };
        Some(h.ok_or_else(|| crate::augment::heads_unknown(&model.path, &anat.hooks[0].tensor))?)
    } else {
        None
    };
    let units = heads.unwrap_or(1);
    anat.check_heads(&model, units)?;
    let (path, opset) = (model.path.clone(), model.opset);
    let token_inputs: Vec<TokenInput> = anat.token_inputs().into_iter().cloned().collect();
    let mut proto = model.proto;
    let g = proto.graph.as_mut().unwrap();
    let dtype = anat.dtype;

    // The clean copy reads clean.X; the patched copy reads the rows gathered from corrupted.X.
    let clean_map: HashMap<String, String> =
        token_inputs.iter().map(|t| (t.model_name.clone(), t.clean.clone())).collect();
    let rows_map: HashMap<String, String> =
        token_inputs.iter().map(|t| (t.model_name.clone(), names::rows_input(&t.model_name))).collect();
    let clean = copy::Renamer { prefix: aug_names::CLEAN_PREFIX, inputs: &clean_map, constants: &anat.constants };
    let clean_nodes = clean.copy(&g.node);
    let mut patched_nodes = std::mem::take(&mut g.node);
    copy::rename_inputs(&mut patched_nodes, &rows_map);
    // Every reader of a hook activation reads the patched value instead.
    let patched_name: HashMap<String, String> =
        anat.hooks.iter().map(|h| (h.tensor.clone(), format!("attrpatch.patched.{}", h.tensor))).collect();
    copy::rename_inputs(&mut patched_nodes, &patched_name);

    let mut b = GraphBuilder::new(
        opset,
        "attrpatch/",
        all_names(g).into_iter().chain(patched_name.values().cloned()).collect(),
    );
    for t in &token_inputs {
        b.node_named("Gather", &[&t.corrupted, names::ROW_PAIR], &rows_map[&t.model_name], vec![attr_i("axis", 0)]);
    }
    let shape_bs = b.shape(&token_inputs[0].clean);
    let shape_rs = b.shape(&rows_map[&token_inputs[0].model_name]);
    let minus_one = b.const_i64s(&[-1]);
    let pairs_bsd = b.concat(&[&shape_bs, &minus_one], 0);
    let rows_rsd = b.concat(&[&shape_rs, &minus_one], 0);
    let units_tail = b.const_i64s(&[units as i64, -1]);
    let rows_rsud = b.concat(&[&shape_rs, &units_tail], 0);
    let prefix_nodes = std::mem::take(&mut b.nodes);

    // Per hook: the clean activation of each row's pair, and the patch.
    struct Patched {
        clean_rows: String,
        corrupted_rows: String,
    }
    let mut patched = vec![];
    let mut after: HashMap<String, Vec<NodeProto>> = HashMap::new();
    for h in &anat.hooks {
        let c3 = b.reshape(&clean.name(&h.tensor), &pairs_bsd);
        let c_rows = b.node("Gather", &[&c3, names::ROW_PAIR], vec![attr_i("axis", 0)]);
        let x3 = b.reshape(&h.tensor, &rows_rsd);
        let d = b.sub(&c_rows, &x3);
        let d4 = b.reshape(&d, &rows_rsud);
        let m4 = b.mul(&d4, &names::mask(h.layer));
        let m = b.reshape_like(&m4, &h.tensor);
        b.node_named("Add", &[&h.tensor, &m], &patched_name[&h.tensor], vec![]);
        after.insert(h.tensor.clone(), std::mem::take(&mut b.nodes));
        patched.push(Patched { clean_rows: c_rows, corrupted_rows: x3 });
    }

    // Metric: clean per pair, patched per row (selectors gathered to rows).
    let position_rows = b.node("Gather", &[aug_names::POSITION_ONEHOT, names::ROW_PAIR], vec![attr_i("axis", 0)]);
    let answer_rows = b.node("Gather", &[aug_names::ANSWER_ONEHOT, names::ROW_PAIR], vec![attr_i("axis", 0)]);
    let rows_sel = metric::Selectors { position: &position_rows, answer: &answer_rows, weights: names::ROW_WEIGHTS };
    let clean_name = |t: &str| clean.name(t);
    let same = |t: &str| t.to_string();
    let clean_sel = metric::last_logits(&mut b, &anat.src, &anat.logits, &clean_name, metric::PAIR_SELECTORS);
    let patched_sel = metric::last_logits(&mut b, &anat.src, &anat.logits, &same, rows_sel);
    metric::metric_values(
        &mut b,
        opts.metric,
        &clean_sel,
        &clean_sel,
        metric::PAIR_SELECTORS,
        aug_names::CLEAN_LDS,
        aug_names::CLEAN_LD,
    );
    let clean_sel_rows = b.node("Gather", &[&clean_sel, names::ROW_PAIR], vec![attr_i("axis", 0)]);
    metric::metric_values(
        &mut b,
        opts.metric,
        &patched_sel,
        &clean_sel_rows,
        rows_sel,
        names::ROW_METRIC,
        names::ROW_METRIC_SUM,
    );

    // Nodes in topological order: row inputs, the nodes computing constants
    // (shared by both copies), clean copy, patched copy with each patch right
    // after its hook's producer, metric.
    let is_constant = |n: &NodeProto| n.output.iter().all(|o| o.is_empty() || anat.constants.contains(o));
    let (constant_nodes, patched_nodes): (Vec<NodeProto>, Vec<NodeProto>) =
        patched_nodes.into_iter().partition(|n| is_constant(n));
    g.node = prefix_nodes;
    g.node.extend(constant_nodes);
    g.node.extend(clean_nodes);
    for n in patched_nodes {
        let hooks_here: Vec<String> = n.output.iter().filter(|o| after.contains_key(*o)).cloned().collect();
        g.node.push(n);
        for t in hooks_here {
            g.node.extend(after.remove(&t).unwrap());
        }
    }
    if let Some(t) = after.keys().next() {
        return Err(Error::Model(format!("{}: hook tensor '{t}' is not produced by any node", path.display())));
    }
    g.node.append(&mut b.nodes);
    g.initializer.append(&mut b.initializers);

    let (batch, seq) = (anat.batch.clone(), anat.seq.clone());
    let rows = Dim::Sym("rows".into());
    let mut inputs = vec![];
    for t in &token_inputs {
        let vi = g.input.iter().find(|i| i.name == t.model_name).unwrap().clone();
        inputs.push(crate::onnx::pb::ValueInfoProto { name: t.clean.clone(), ..vi.clone() });
        inputs.push(crate::onnx::pb::ValueInfoProto { name: t.corrupted.clone(), ..vi });
    }
    g.input.retain(|i| !token_inputs.iter().any(|t| t.model_name == i.name));
    g.input.splice(0..0, inputs);
    let vocab = anat.vocab as i64;
    g.input.push(value_info(aug_names::POSITION_ONEHOT, dtype, &[batch.clone(), Dim::Known(1), seq.clone()]));
    g.input.push(value_info(aug_names::ANSWER_ONEHOT, dtype, &[batch.clone(), Dim::Known(vocab), Dim::Known(1)]));
    g.input.push(value_info(aug_names::PAIR_WEIGHTS, dtype, &[batch.clone(), Dim::Known(1)]));
    g.input.push(value_info(names::ROW_PAIR, INT64, std::slice::from_ref(&rows)));
    g.input.push(value_info(names::ROW_WEIGHTS, dtype, &[rows.clone(), Dim::Known(1)]));
    for h in &anat.hooks {
        g.input.push(value_info(
            &names::mask(h.layer),
            dtype,
            &[rows.clone(), seq.clone(), Dim::Known(units as i64), Dim::Known(1)],
        ));
    }
    g.output.clear();
    g.output.push(value_info(aug_names::CLEAN_LDS, dtype, &[Dim::Known(1), batch.clone()]));
    g.output.push(value_info(names::ROW_METRIC, dtype, &[Dim::Known(1), rows.clone()]));

    if opts.gradients {
        let (pp, pr, ps) = (PROBE_PAIRS, PROBE_ROWS, PROBE_SEQ);
        let mut probe: Vec<(String, Vec<usize>)> = vec![];
        for t in &token_inputs {
            probe.push((t.clean.clone(), vec![pp, ps]));
            probe.push((t.corrupted.clone(), vec![pp, ps]));
        }
        probe.extend([
            (aug_names::POSITION_ONEHOT.to_string(), vec![pp, 1, ps]),
            (aug_names::ANSWER_ONEHOT.to_string(), vec![pp, anat.vocab, 1]),
            (aug_names::PAIR_WEIGHTS.to_string(), vec![pp, 1]),
            (names::ROW_PAIR.to_string(), vec![pr]),
            (names::ROW_WEIGHTS.to_string(), vec![pr, 1]),
        ]);
        probe.extend(anat.hooks.iter().map(|h| (names::mask(h.layer), vec![pr, ps, units, 1])));
        let probe: Vec<(&str, Vec<usize>)> = probe.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
        // The sum is what the backward differentiates; it has to be an output to be analysed.
        g.output.push(value_info(names::ROW_METRIC_SUM, dtype, &[Dim::Known(1), Dim::Known(1)]));
        let facts = analyse_with_probe(&proto, &path, &probe)?;
        let g = proto.graph.as_mut().unwrap();
        g.output.pop();
        let seed = b.const_tensor(dtype, &[1, 1], &[1.0]);
        let wrt: Vec<String> = anat.hooks.iter().map(|h| patched_name[&h.tensor].clone()).collect();
        let stop = HashSet::new();
        let grads =
            Backward { graph: g, facts: &facts, stop: &stop }.build(&mut b, &wrt, names::ROW_METRIC_SUM, &seed)?;
        for ((h, p), gr) in anat.hooks.iter().zip(&patched).zip(&grads) {
            let gr3 = b.reshape(gr, &rows_rsd);
            grid_nodes::emit(&mut b, h.layer, &p.clean_rows, &p.corrupted_rows, &gr3, &shape_rs, &position_rows, heads);
            if let Some(n) = heads {
                g.output.push(value_info(&aug_names::heads(h.layer), dtype, &[rows.clone(), Dim::Known(n as i64)]));
            }
            g.output.push(value_info(&aug_names::positions(h.layer), dtype, &[rows.clone(), seq.clone()]));
        }
        g.node.append(&mut b.nodes);
        g.initializer.append(&mut b.initializers);
    }
    let g = proto.graph.as_mut().unwrap();
    g.value_info.clear();
    crate::onnx::prune::prune_dead(g);
    proto.producer_name = "attrpatch".into();
    proto.producer_version = env!("CARGO_PKG_VERSION").into();
    Ok(PatchGraph {
        proto,
        hooks: anat.hooks,
        heads,
        input_ids: anat.ids_in,
        attention_mask: anat.mask_in,
        position_ids: anat.pos_in,
        vocab: anat.vocab,
        gradients: opts.gradients,
    })
}

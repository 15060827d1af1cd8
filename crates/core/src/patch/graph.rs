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

use crate::augment::{copy, grid_nodes, metric, names as aug_names, skeleton, Anatomy, Metric, TokenInput};
use crate::hooks::HookKind;
use attrpatch_autodiff::Backward;
use attrpatch_onnx::builder::{attr_i, GraphBuilder};
use attrpatch_onnx::consts::INT64;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::facts::Dim;
use attrpatch_onnx::graph::{all_names, value_info};
use attrpatch_onnx::pb::{GraphProto, ModelProto, NodeProto};
use attrpatch_onnx::OnnxModel;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Names of the tensors the patching graph adds, beside `augment::names`.
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

/// How to build a patching graph (`build`).
#[derive(serde::Serialize)]
pub struct PatchGraphOptions {
    /// The metric each row computes.
    pub metric: Metric,
    /// Which activations to patch.
    pub hooks: HookKind,
    /// Overrides the head count read from the graph.
    pub heads: Option<usize>,
    /// Differentiate the rows' metrics and output per-row grid rows.
    pub gradients: bool,
}

/// The patching graph (`build`) and what feeding it needs.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PatchGraph {
    /// The graph, its hooks, token inputs, vocabulary, heads and metric.
    #[serde(flatten)]
    pub base: crate::augment::anatomy::GraphBase,
    /// Whether the graph differentiates the rows' metrics and outputs per-row grid rows.
    pub gradients: bool,
}

impl PatchGraph {
    /// Units of a hook that a mask addresses: its heads, or the whole hook.
    pub fn units(&self) -> usize {
        self.heads.unwrap_or(1)
    }
}

/// Probe rows, neither 1 nor the probe's pair count, so row and pair dims are told apart.
const PROBE_ROWS: usize = 5;

/// Builds the patching graph of `model` (see the module comment).
pub fn build(model: OnnxModel, opts: &PatchGraphOptions) -> Result<PatchGraph> {
    let anat = Anatomy::read(&model, &opts.hooks)?;
    let heads = resolve_heads(&model, &anat, opts)?;
    let units = heads.unwrap_or(1);
    anat.check_heads(&model, units)?;
    let (path, opset) = (model.path.clone(), model.opset);
    let token_inputs = anat.token_inputs();
    let mut proto = model.proto;
    let g = proto.graph.as_mut().unwrap();

    // The clean copy reads clean.X; the patched copy reads the rows gathered from corrupted.X.
    let rows_map = copy::input_map(&token_inputs, |t| names::rows_input(&t.model_name));
    let clean = copy::Renamer::clean(&token_inputs, &anat.constants);
    let clean_nodes = clean.copy(&g.node);
    let taken = all_names(g);
    let mut patched_nodes = std::mem::take(&mut g.node);
    copy::rename_inputs(&mut patched_nodes, &rows_map);
    // Every reader of a hook activation reads the patched value instead.
    let patched_name: HashMap<String, String> =
        anat.hooks.iter().map(|h| (h.tensor.clone(), format!("attrpatch.patched.{}", h.tensor))).collect();
    copy::rename_inputs(&mut patched_nodes, &patched_name);

    let mut b =
        GraphBuilder::new(opset, "attrpatch/", taken.into_iter().chain(patched_name.values().cloned()).collect());
    let shapes = RowShapes::build(&mut b, &token_inputs, &rows_map, units);
    let prefix_nodes = std::mem::take(&mut b.nodes);
    let (patched, after) = patch_nodes(&mut b, &anat, &clean, &patched_name, &shapes);
    let position_rows = metric_nodes(&mut b, &anat, opts.metric, &clean);

    g.node = prefix_nodes;
    order_nodes(g, &anat, clean_nodes, patched_nodes, after, &path)?;
    b.apply(g);
    declare_inputs(g, &anat, units);
    let rows = Dim::Sym("rows".into());
    g.output.clear();
    g.output.push(value_info(aug_names::CLEAN_LDS, anat.dtype, &[Dim::Known(1), anat.batch.clone()]));
    g.output.push(value_info(names::ROW_METRIC, anat.dtype, &[Dim::Known(1), rows]));

    if opts.gradients {
        let wrt: Vec<String> = anat.hooks.iter().map(|h| patched_name[&h.tensor].clone()).collect();
        let grads = row_gradients(&mut b, &mut proto, &anat, &path, &wrt, units)?;
        let g = proto.graph.as_mut().unwrap();
        for ((h, p), gr) in anat.hooks.iter().zip(&patched).zip(&grads) {
            let gr3 = b.reshape(gr, &shapes.rows_rsd);
            grid_nodes::emit(
                &mut b,
                h.layer,
                &p.clean_rows,
                &p.corrupted_rows,
                &gr3,
                &shapes.rs,
                &position_rows,
                heads,
            );
            declare_grid_outputs(g, &anat, h.layer, heads);
        }
        b.apply(g);
    }
    skeleton::finish(&mut proto);
    Ok(PatchGraph { base: anat.into_base(proto, heads, opts.metric), gradients: opts.gradients })
}

/// Heads per hook: `--heads`' value or the graph's, required for hooks that
/// split into heads; None for the others.
fn resolve_heads(model: &OnnxModel, anat: &Anatomy, opts: &PatchGraphOptions) -> Result<Option<usize>> {
    if !opts.hooks.has_heads() {
        return Ok(None);
    }
    let h = match opts.heads {
        Some(h) => Some(h),
        None => anat.infer_heads(model)?,
    };
    Ok(Some(h.ok_or_else(|| crate::augment::heads_unknown(&model.path, &anat.hooks[0].tensor))?))
}

/// The shapes the patches and grids reshape to, computed once at the graph's start.
struct RowShapes {
    /// Shape(rows' input_ids) = [R, S].
    rs: String,
    pairs_bsd: String,
    rows_rsd: String,
    rows_rsud: String,
}

impl RowShapes {
    /// Also gathers each row's token inputs from the corrupted ones.
    fn build(
        b: &mut GraphBuilder,
        token_inputs: &[&TokenInput],
        rows_map: &HashMap<String, String>,
        units: usize,
    ) -> Self {
        for t in token_inputs {
            b.node_named("Gather", &[&t.corrupted, names::ROW_PAIR], &rows_map[&t.model_name], vec![attr_i("axis", 0)]);
        }
        let bs = b.shape(&token_inputs[0].clean);
        let rs = b.shape(&rows_map[&token_inputs[0].model_name]);
        let minus_one = b.const_i64s(&[-1]);
        let pairs_bsd = b.concat(&[&bs, &minus_one], 0);
        let rows_rsd = b.concat(&[&rs, &minus_one], 0);
        let units_tail = b.const_i64s(&[units as i64, -1]);
        let rows_rsud = b.concat(&[&rs, &units_tail], 0);
        RowShapes { rs, pairs_bsd, rows_rsd, rows_rsud }
    }
}

/// Per hook, the tensors the grid rows compare: the clean activation of
/// each row's pair and the row's own (corrupted) activation, [R, S, D].
struct Patched {
    clean_rows: String,
    corrupted_rows: String,
}

/// Per hook, the patch `x' = x + mask * (clean[row_pair] - x)`; returns the
/// compared tensors and, by hook tensor, the nodes to place right after its producer.
fn patch_nodes(
    b: &mut GraphBuilder,
    anat: &Anatomy,
    clean: &copy::Renamer,
    patched_name: &HashMap<String, String>,
    shapes: &RowShapes,
) -> (Vec<Patched>, HashMap<String, Vec<NodeProto>>) {
    let mut patched = vec![];
    let mut after = HashMap::new();
    for h in &anat.hooks {
        let c3 = b.reshape(&clean.name(&h.tensor), &shapes.pairs_bsd);
        let c_rows = b.node("Gather", &[&c3, names::ROW_PAIR], vec![attr_i("axis", 0)]);
        let x3 = b.reshape(&h.tensor, &shapes.rows_rsd);
        let d = b.sub(&c_rows, &x3);
        let d4 = b.reshape(&d, &shapes.rows_rsud);
        let m4 = b.mul(&d4, &names::mask(h.layer));
        let m = b.reshape_like(&m4, &h.tensor);
        b.node_named("Add", &[&h.tensor, &m], &patched_name[&h.tensor], vec![]);
        after.insert(h.tensor.clone(), std::mem::take(&mut b.nodes));
        patched.push(Patched { clean_rows: c_rows, corrupted_rows: x3 });
    }
    (patched, after)
}

/// The metric: clean per pair, patched per row (selectors gathered to rows).
/// Returns the rows' last-position one-hot, which the grid rows read.
fn metric_nodes(b: &mut GraphBuilder, anat: &Anatomy, m: Metric, clean: &copy::Renamer) -> String {
    let position_rows = b.node("Gather", &[aug_names::POSITION_ONEHOT, names::ROW_PAIR], vec![attr_i("axis", 0)]);
    let answer_rows = b.node("Gather", &[aug_names::ANSWER_ONEHOT, names::ROW_PAIR], vec![attr_i("axis", 0)]);
    let rows_sel = metric::Selectors { position: &position_rows, answer: &answer_rows, weights: names::ROW_WEIGHTS };
    let pairs = metric::PAIR_SELECTORS;
    let (src, logits) = (&anat.src, &anat.logits);
    let clean_sel = metric::last_logits(b, src, logits, &|t| clean.name(t), pairs);
    let patched_sel = metric::last_logits(b, src, logits, &|t| t.to_string(), rows_sel);
    metric::metric_values(b, m, &clean_sel, &clean_sel, pairs, aug_names::CLEAN_LDS, aug_names::CLEAN_LD);
    let clean_sel_rows = b.node("Gather", &[&clean_sel, names::ROW_PAIR], vec![attr_i("axis", 0)]);
    metric::metric_values(b, m, &patched_sel, &clean_sel_rows, rows_sel, names::ROW_METRIC, names::ROW_METRIC_SUM);
    position_rows
}

/// Appends the model's nodes in topological order after the row inputs
/// already in `g`: the nodes computing constants (shared by both copies), the
/// clean copy, then the patched copy with each patch right after its hook's producer.
fn order_nodes(
    g: &mut GraphProto,
    anat: &Anatomy,
    clean_nodes: Vec<NodeProto>,
    patched_nodes: Vec<NodeProto>,
    mut after: HashMap<String, Vec<NodeProto>>,
    path: &Path,
) -> Result<()> {
    let is_constant = |n: &NodeProto| n.output.iter().all(|o| o.is_empty() || anat.constants.contains(o));
    let (constant_nodes, patched_nodes): (Vec<NodeProto>, Vec<NodeProto>) =
        patched_nodes.into_iter().partition(|n| is_constant(n));
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
    Ok(())
}

/// The attribution graph's inputs, then the rows' pair, weights and masks.
fn declare_inputs(g: &mut GraphProto, anat: &Anatomy, units: usize) {
    skeleton::declare_inputs(g, anat);
    let (dtype, seq) = (anat.dtype, &anat.seq);
    let rows = Dim::Sym("rows".into());
    g.input.push(value_info(names::ROW_PAIR, INT64, std::slice::from_ref(&rows)));
    g.input.push(value_info(names::ROW_WEIGHTS, dtype, &[rows.clone(), Dim::Known(1)]));
    for h in &anat.hooks {
        let mask = [rows.clone(), seq.clone(), Dim::Known(units as i64), Dim::Known(1)];
        g.input.push(value_info(&names::mask(h.layer), dtype, &mask));
    }
}

/// The gradient of the rows' metric sum with respect to each `wrt` tensor,
/// its rules read at the probe shapes.
fn row_gradients(
    b: &mut GraphBuilder,
    proto: &mut ModelProto,
    anat: &Anatomy,
    path: &Path,
    wrt: &[String],
    units: usize,
) -> Result<Vec<String>> {
    let (pr, ps) = (PROBE_ROWS, skeleton::PROBE_SEQ);
    let mut probe = skeleton::probe_inputs(anat);
    probe.extend([(names::ROW_PAIR.to_string(), vec![pr]), (names::ROW_WEIGHTS.to_string(), vec![pr, 1])]);
    probe.extend(anat.hooks.iter().map(|h| (names::mask(h.layer), vec![pr, ps, units, 1])));
    let g = proto.graph.as_mut().unwrap();
    // The sum is what the backward differentiates; it has to be an output to be analysed.
    g.output.push(value_info(names::ROW_METRIC_SUM, anat.dtype, &[Dim::Known(1), Dim::Known(1)]));
    let facts = skeleton::analyse_probed(proto, path, &probe)?;
    let g = proto.graph.as_mut().unwrap();
    g.output.pop();
    let seed = b.const_tensor(anat.dtype, &[1, 1], &[1.0]);
    let stop = HashSet::new();
    Backward { graph: g, facts: &facts, stop: &stop }.build(b, wrt, names::ROW_METRIC_SUM, &seed)
}

/// Layer `layer`'s per-row grid outputs (the heads row only with `heads`).
fn declare_grid_outputs(g: &mut GraphProto, anat: &Anatomy, layer: usize, heads: Option<usize>) {
    let rows = Dim::Sym("rows".into());
    if let Some(n) = heads {
        g.output.push(value_info(&aug_names::heads(layer), anat.dtype, &[rows.clone(), Dim::Known(n as i64)]));
    }
    g.output.push(value_info(&aug_names::positions(layer), anat.dtype, &[rows, anat.seq.clone()]));
}

crate::augment::anatomy::deref_base!(PatchGraph);

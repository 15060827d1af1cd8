//! The edge-scoring graph: the model with every reader on its own input copy
//! (`rewrite`), run on the clean and corrupted prompts as in `augment`, a
//! backward graph to every reader copy, and the scores computed inside:
//!   D = [Δ of every writer], [U, B*S*d]   (clean - corrupted, writers in residual order)
//!   G = [gradient at every reader], [R, B*S*d]   (readers in residual order)
//!   scores = D G^T, [U, R]
//! so only a [writers, readers] matrix leaves the runtime. Edges that do not
//! exist (a writer after its reader) are computed too and dropped on the host.
//!
//! EAP-IG (`ig_steps` N > 1): the corrupted copy runs N times in one call (its
//! token inputs tiled in the graph), the `input` writer's output of run k moved
//! to corrupted + k/N (clean - corrupted); the metric averages the N runs, so
//! each reader's gradient, summed over the runs, is the mean over alpha. The
//! writers' differences come from run 0 (alpha = 0: the plain corrupted run).
//!
//! EAP-IG-activations: the corrupted copy's rows as `interpolate` builds them,
//! the reader gradients summed over the rows (each the mean over the C N runs).
//!
//! Clean-corrupted: plain EAP's two copies, the backward taken from the mean of
//! the clean and the corrupted metric to the reader copies of both, G their sum.
//!
//! Noising (`convention`, the EAP-IG codebase's): the same two copies, the
//! backward swapped onto the clean copy's reader copies from the clean raw
//! metric (`CLEAN_LD`; with EAP-IG the tiled runs' raw metric), and
//!   D = [counterfactual - clean of every writer]
//! the counterfactual the corrupted activation, zero, or the `ABLATION` input
//! (the data set's means, fed per batch).

use super::anatomy::BlockAnatomy;
use super::convention::{self, Ablation, Convention, Method};
use super::interpolate::{self, ABLATION_Z};
use super::rewrite::names as reads;
use super::start::Start;
use crate::augment::{metric, names, skeleton, Anatomy, Copies, Metric};
use attrpatch_autodiff::Backward;
use attrpatch_onnx::builder::{attr_i, GraphBuilder};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::facts::Dim;
use attrpatch_onnx::graph::value_info;
use attrpatch_onnx::pb::{GraphProto, NodeProto};
use attrpatch_onnx::OnnxModel;
use std::collections::{HashMap, HashSet};

/// Output names of the edge graph.
pub mod out {
    /// The score matrix of one batch, [writers, readers] (`Topology` orders), the
    /// gradient of the batch's normalised metric (as `run`'s grids are).
    pub const SCORES: &str = "attrpatch.edges.scores";
    /// Per head of layer l: sum over pairs and positions of (clean z - corrupted z) . dM/dz,
    /// the head's node attribution (plain EAP only), [H].
    pub fn head_attribution(layer: usize) -> String {
        format!("attrpatch.edges.head_attribution.{layer}")
    }
    /// With a mean ablation: every writer's corrupted activation, [writers, B*S*d]
    /// (`Topology` order; rows as the score's D), for the data set's means.
    pub const CORRUPTED_WRITERS: &str = "attrpatch.edges.corrupted_writers";
    /// With EAP-IG-activations and a mean ablation: each layer's corrupted
    /// out-projection input, [layers, B*S*heads*head_dim], for `ABLATION_Z`.
    pub const CORRUPTED_Z: &str = "attrpatch.edges.corrupted_z";
    /// With `EdgeGraphOptions::reader_grads`: the gradient at layer l's q/k/v reader copies.
    pub fn reads_grad(layer: usize) -> String {
        format!("attrpatch.edges.reads_grad.{layer}")
    }
}

/// What the edge graph computes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EdgeGraphOptions {
    /// The metric, as `run`'s.
    pub metric: Metric,
    /// Overrides the head count read from the graph.
    pub heads: Option<usize>,
    /// How the reader gradients are taken.
    pub method: Method,
    /// Integration steps of the IG methods (1 otherwise).
    pub ig_steps: usize,
    /// Also output the gradient at each layer's q/k/v reader copies (for checks).
    pub reader_grads: bool,
    /// Add this input ([R, .., d], named `PERTURB`) to layer `perturb`'s q/k/v reader
    /// copies in the corrupted run: a finite difference through those readers alone.
    pub perturb: Option<usize>,
    /// Which run is differentiated and the sign of Δ.
    pub convention: Convention,
    /// The counterfactual of each writer (noising only).
    pub ablation: Ablation,
}

/// The perturbation input of `EdgeGraphOptions::perturb`.
pub const PERTURB: &str = "attrpatch.edges.perturb";

/// With a mean ablation: each writer's counterfactual per position, [writers, S, d]
/// (declared with `interpolate`'s inputs, which read it too).
pub use super::interpolate::ABLATION;

impl Default for EdgeGraphOptions {
    fn default() -> Self {
        EdgeGraphOptions {
            metric: Metric::LogitDiff,
            heads: None,
            method: Method::Eap,
            ig_steps: 1,
            reader_grads: false,
            perturb: None,
            convention: Convention::Denoising,
            ablation: Ablation::Patching,
        }
    }
}

/// The rewritten model and what reading its outputs needs.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct EdgeGraph {
    /// The graph, its hooks, token inputs, vocabulary, heads and metric.
    #[serde(flatten)]
    pub base: crate::augment::anatomy::GraphBase,
    /// The blocks as found.
    pub anatomy: BlockAnatomy,
    /// The method built in.
    pub method: Method,
    /// Integration steps built in.
    pub ig_steps: usize,
    /// The convention built in.
    pub convention: Convention,
    /// The ablation built in.
    pub ablation: Ablation,
}

/// Builds the edge graph (module doc). Takes the model by value, as `augment` does.
pub fn build(model: OnnxModel, opts: &EdgeGraphOptions) -> Result<EdgeGraph> {
    if opts.ig_steps == 0 {
        return Err(Error::Input("the integration steps of EAP-IG must be at least 1 (1 is plain EAP)".into()));
    }
    convention::check(opts.method, opts.convention, opts.ablation, opts.ig_steps, opts.metric)?;
    let Start { anat, heads, blocks, path, mut proto, builder: mut b } =
        Start::read(model, opts.heads, "attrpatch/edges/")?;
    let g = proto.graph.as_mut().unwrap();
    // The metric reads the lm_head's input; the final layer-norm now reads a copy, not the residual.
    let copies = Copies::make(g, &anat);
    // In the corrupted copy only (the clean copy's tensors are renamed).
    if let Some(l) = opts.perturb {
        perturb_reads(g, &blocks, l, &mut b)?;
    }
    let n = opts.ig_steps;
    // Rows of the corrupted copy per pair.
    let rows = match opts.method {
        Method::EapIgInputs => n,
        Method::EapIgActivations => interpolate::rows(&blocks, n),
        Method::Eap | Method::CleanCorrupted => 1,
    };
    let mut held = HashSet::new();
    match opts.method {
        Method::EapIgInputs if n > 1 => tile_corrupted(g, &anat, &blocks, &copies, n, &mut b),
        Method::EapIgActivations => {
            held = interpolate::rewrite(g, &anat, &blocks, &copies, n, opts.convention, opts.ablation, &mut b)
        }
        _ => {}
    }
    let z_means = opts.method == Method::EapIgActivations && opts.ablation.is_mean();
    skeleton::declare_inputs(g, &anat);
    if opts.ablation.is_mean() {
        g.input.push(value_info(ABLATION, anat.dtype, &[Dim::Unknown, Dim::Unknown, Dim::Unknown]));
    }
    if z_means {
        g.input.push(value_info(ABLATION_Z, anat.dtype, &[Dim::Unknown, Dim::Unknown, Dim::Unknown]));
    }
    if opts.perturb.is_some() {
        let rank = blocks.resid_rank;
        g.input.push(value_info(PERTURB, anat.dtype, &vec![Dim::Unknown; rank + 1]));
    }
    let first_free = opts.method == Method::EapIgActivations;
    let mut stop = metric_nodes(&mut b, &anat, opts.metric, &copies, rows, first_free);
    stop.extend(held);
    if opts.method == Method::CleanCorrupted {
        stop.extend(two_point_target(&mut b, opts.convention, anat.dtype));
    }
    b.apply(g);
    g.output.clear();
    crate::augment::declare_metric_outputs(g, &anat);
    topo_sort(g);

    let mut probe = skeleton::probe_inputs(&anat);
    if opts.perturb.is_some() {
        let rank = blocks.resid_rank;
        let (pp, ps) = (skeleton::PROBE_PAIRS, skeleton::PROBE_SEQ);
        let copies = blocks.copies(&blocks.blocks[opts.perturb.unwrap_or(0)]);
        let mut s = vec![copies, pp, ps, blocks.d_model];
        if rank == 2 {
            s = vec![copies, pp * ps, blocks.d_model];
        }
        probe.push((PERTURB.to_string(), s));
    }
    if opts.ablation.is_mean() {
        let u = blocks.topology().writers().len();
        probe.push((ABLATION.to_string(), vec![u, skeleton::PROBE_SEQ, blocks.d_model]));
    }
    if z_means {
        let width = blocks.heads * blocks.head_dim;
        probe.push((ABLATION_Z.to_string(), vec![blocks.blocks.len(), skeleton::PROBE_SEQ, width]));
    }
    let facts = skeleton::analyse_probed(&proto, &path, &probe)?;
    let g = proto.graph.as_mut().unwrap();
    let seed = b.const_tensor(anat.dtype, &[1, 1], &[1.0]);
    let mut wrt = vec![];
    for blk in &blocks.blocks {
        wrt.push(reads::head_reads(blk.layer));
        if !blk.shared_norm {
            wrt.push(reads::mlp_read(blk.layer));
        }
    }
    wrt.push(reads::LOGITS_READ.to_string());
    let with_heads = opts.method == Method::Eap && !opts.ablation.is_mean();
    if opts.method == Method::Eap {
        wrt.extend(blocks.blocks.iter().map(|blk| blk.out_proj.z.clone()));
    }
    // Noising differentiates the raw metric; plain EAP's at the clean copy.
    let target = match (opts.method, opts.convention) {
        (Method::CleanCorrupted, _) => {
            let clean: Vec<String> = wrt.iter().map(|t| copies.clean_name(t)).collect();
            wrt.extend(clean);
            TWO_POINT_TARGET
        }
        (_, Convention::Denoising) => names::METRIC,
        (Method::Eap, Convention::Noising) => {
            wrt = wrt.iter().map(|t| copies.clean_name(t)).collect();
            names::CLEAN_LD
        }
        (_, Convention::Noising) => names::CORRUPTED_LD,
    };
    let grads = Backward { graph: g, facts: &facts, stop: &stop }.build(&mut b, &wrt, target, &seed)?;
    let kind = Scoring {
        rows,
        two_points: opts.method == Method::CleanCorrupted,
        with_heads,
        z_means,
        convention: opts.convention,
        ablation: opts.ablation,
    };
    score_nodes(&mut b, g, &blocks, &copies, &grads, kind, opts.reader_grads, anat.dtype);
    b.apply(g);
    skeleton::finish(&mut proto);
    Ok(EdgeGraph {
        base: anat.into_base(proto, Some(heads), opts.metric),
        anatomy: blocks,
        method: opts.method,
        ig_steps: n,
        convention: opts.convention,
        ablation: opts.ablation,
    })
}

impl EdgeGraph {
    /// Rows the corrupted copy runs per pair: N for EAP-IG-inputs, 1 + C N for
    /// EAP-IG-activations (`interpolate`), 1 otherwise.
    pub fn corrupted_rows(&self) -> usize {
        match self.method {
            Method::EapIgInputs => self.ig_steps,
            Method::EapIgActivations => interpolate::rows(&self.anatomy, self.ig_steps),
            Method::Eap | Method::CleanCorrupted => 1,
        }
    }
}

/// Layer l's q/k/v readers read `reads.l + PERTURB` in the corrupted copy.
fn perturb_reads(g: &mut GraphProto, blocks: &BlockAnatomy, l: usize, b: &mut GraphBuilder) -> Result<()> {
    if l >= blocks.blocks.len() {
        return Err(Error::Input(format!("perturbed layer {l}: the model has {} layers", blocks.blocks.len())));
    }
    let reads = reads::head_reads(l);
    let moved = b.fresh("edges_perturbed");
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| **i == reads) {
            *i = moved.clone();
        }
    }
    b.node_named("Add", &[&reads, PERTURB], &moved, vec![]);
    let pos = g.node.iter().position(|n| n.output.contains(&reads)).unwrap() + 1;
    let new = std::mem::take(&mut b.nodes);
    g.node.splice(pos..pos, new);
    Ok(())
}

/// EAP-IG: the corrupted copy's token inputs tiled n times, and its `input`
/// writer's output moved towards the clean one: run k gets alpha = k/n.
fn tile_corrupted(
    g: &mut GraphProto,
    anat: &Anatomy,
    blocks: &BlockAnatomy,
    copies: &Copies,
    n: usize,
    b: &mut GraphBuilder,
) {
    for t in anat.token_inputs() {
        let reps = b.const_i64s(&[n as i64, 1]);
        let tiled = b.node("Tile", &[&t.corrupted, &reps], vec![]);
        for node in g.node.iter_mut() {
            for i in node.input.iter_mut().filter(|i| **i == t.corrupted) {
                *i = tiled.clone();
            }
        }
    }
    let x0 = &blocks.blocks[0].resid_in;
    let clean = copies.clean_name(x0);
    let rank = blocks.resid_rank;
    let moved = b.fresh("edges_ig_input");
    for node in g.node.iter_mut() {
        for i in node.input.iter_mut().filter(|i| *i == x0) {
            *i = moved.clone();
        }
    }
    // alpha per row: [n, 1] expanded to [n, rows], flattened to [n*rows, 1, ..].
    let alphas: Vec<f64> = (0..n).map(|k| k as f64 / n as f64).collect();
    let alpha = b.const_tensor(anat.dtype, &[n as i64, 1], &alphas);
    let rows = dim1(b, &clean, 0);
    let n_t = b.const_i64s(&[n as i64]);
    let shape = b.concat(&[&n_t, &rows], 0);
    let a = b.node("Expand", &[&alpha, &shape], vec![]);
    let mut flat = vec![-1i64];
    flat.extend(std::iter::repeat_n(1, rank - 1));
    let flat = b.const_i64s(&flat);
    let a = b.reshape(&a, &flat);
    let mut reps = vec![n as i64];
    reps.extend(std::iter::repeat_n(1, rank - 1));
    let reps = b.const_i64s(&reps);
    let clean_tiled = b.node("Tile", &[&clean, &reps], vec![]);
    let diff = b.sub(&clean_tiled, x0);
    let step = b.mul(&a, &diff);
    b.node_named("Add", &[x0, &step], &moved, vec![]);
    // Placed at the end; `topo_sort` puts every node after its inputs.
    b.apply(g);
}

/// Clean-corrupted's backward target: the mean of the corrupted and the clean
/// metric, each normalised as `METRIC` (denoising) or raw (noising). Returns the
/// baselines' constant copies.
fn two_point_target(b: &mut GraphBuilder, convention: Convention, dtype: i32) -> HashSet<String> {
    let half = |b: &mut GraphBuilder, x: &str, y: &str| {
        let sum = b.add(x, y);
        let h = b.const_scalar(dtype, 0.5);
        let mean = b.mul(&sum, &h);
        b.node_named("Identity", &[&mean], TWO_POINT_TARGET, vec![]);
    };
    match convention {
        Convention::Noising => {
            half(b, names::CLEAN_LD, names::CORRUPTED_LD);
            HashSet::new()
        }
        Convention::Denoising => {
            let clean_const = b.node("Identity", &[names::CLEAN_LD], vec![]);
            let corr_const = b.node("Identity", &[names::CORRUPTED_LD], vec![]);
            let num = b.sub(names::CLEAN_LD, &corr_const);
            let den = b.sub(&clean_const, &corr_const);
            let clean_metric = b.div(&num, &den);
            half(b, names::METRIC, &clean_metric);
            [clean_const, corr_const].into_iter().collect()
        }
    }
}

/// Clean-corrupted's backward target (`two_point_target`).
const TWO_POINT_TARGET: &str = "attrpatch.edges.two_point_target";

/// `augment`'s metric, with the corrupted side's selectors tiled for the `rows` runs
/// (EAP-IG's); with `first_free` the first run is weighted 0 and the others equally.
fn metric_nodes(
    b: &mut GraphBuilder,
    anat: &Anatomy,
    m: Metric,
    copies: &Copies,
    rows: usize,
    first_free: bool,
) -> HashSet<String> {
    let n = rows;
    if n == 1 {
        return crate::augment::metric_nodes(b, anat, m, copies);
    }
    let pairs = metric::PAIR_SELECTORS;
    let (src, logits) = (&anat.src, &anat.logits);
    let clean_sel = metric::last_logits(b, src, logits, &|t| copies.clean_name(t), pairs);
    metric::metric_values(b, m, &clean_sel, &clean_sel, pairs, names::CLEAN_LDS, names::CLEAN_LD);
    let r3 = b.const_i64s(&[n as i64, 1, 1]);
    let position = b.node("Tile", &[pairs.position, &r3], vec![]);
    let answer = b.node("Tile", &[pairs.answer, &r3], vec![]);
    let weighted = if first_free { n - 1 } else { n };
    let reps = b.const_i64s(&[weighted as i64, 1]);
    let w = b.node("Tile", &[pairs.weights, &reps], vec![]);
    let inv_n = b.const_scalar(anat.dtype, 1.0 / weighted as f64);
    let mut weights = b.mul(&w, &inv_n);
    if first_free {
        let zero = b.const_scalar(anat.dtype, 0.0);
        let none = b.mul(pairs.weights, &zero);
        weights = b.concat(&[&none, &weights], 0);
    }
    let tiled = metric::Selectors { position: &position, answer: &answer, weights: &weights };
    let corrupted_sel = metric::last_logits(b, src, logits, &|t| t.to_string(), tiled);
    let clean_tiled = b.node("Tile", &[&clean_sel, &r3], vec![]);
    metric::metric_values(b, m, &corrupted_sel, &clean_tiled, tiled, names::CORRUPTED_LDS, names::CORRUPTED_LD);
    let clean_const = b.node("Identity", &[names::CLEAN_LD], vec![]);
    let corr_const = b.node("Identity", &[names::CORRUPTED_LD], vec![]);
    let num = b.sub(names::CORRUPTED_LD, &corr_const);
    let den = b.sub(&clean_const, &corr_const);
    b.node_named("Div", &[&num, &den], names::METRIC, vec![]);
    [clean_const, corr_const].into_iter().collect()
}

/// The first `rows` rows (axis 0) of `t`, `rows` read from `like`: run 0 of EAP-IG's tiled runs.
fn first_rows(b: &mut GraphBuilder, t: &str, like: &str, n: usize) -> String {
    if n == 1 {
        return t.to_string();
    }
    let rows = dim1(b, like, 0);
    let zero = b.const_i64s(&[0]);
    let axis = b.const_i64s(&[0]);
    b.node("Slice", &[t, &zero, &rows, &axis], vec![])
}

/// Dimension `axis` of `x` at run time, as a 1-d int64 tensor of one value.
fn dim1(b: &mut GraphBuilder, x: &str, axis: i64) -> String {
    let d = b.dim(x, axis);
    b.unsqueeze(&d, &[0])
}

/// What `score_nodes` builds: the runs, and how Δ is formed.
#[derive(Clone, Copy)]
struct Scoring {
    /// Rows of the corrupted copy per pair (its run 0 the plain corrupted run).
    rows: usize,
    /// Clean-corrupted: the gradients of both copies' readers, summed.
    two_points: bool,
    /// Plain EAP without a mean: each head's node attribution as well.
    with_heads: bool,
    /// EAP-IG-activations with a mean: the corrupted z's as an output.
    z_means: bool,
    convention: Convention,
    ablation: Ablation,
}

/// Every writer's activation as one [writers, B*S*d] matrix, writers in
/// `Topology` order (heads projected by their out-projection slice), `view`
/// mapping an original tensor name to the run's tensor.
fn writer_matrix(
    b: &mut GraphBuilder,
    anat: &BlockAnatomy,
    view: &dyn Fn(&mut GraphBuilder, &str) -> String,
) -> String {
    let row = b.const_i64s(&[1, -1]);
    let (h, dh, d) = (anat.heads as i64, anat.head_dim as i64, anat.d_model as i64);
    let mut writers = vec![];
    let x0 = view(b, &anat.blocks[0].resid_in);
    writers.push(b.reshape(&x0, &row));
    let per_head_shape = b.const_i64s(&[-1, h, dh]);
    let heads_rows = b.const_i64s(&[h, -1]);
    let w_shape = b.const_i64s(&[h, dh, d]);
    for blk in &anat.blocks {
        let z = view(b, &blk.out_proj.z);
        let z3 = b.reshape(&z, &per_head_shape);
        let zh = b.transpose(&z3, &[1, 0, 2]);
        let w =
            if blk.out_proj.trans_b { b.transpose(&blk.out_proj.weight, &[1, 0]) } else { blk.out_proj.weight.clone() };
        let wh = b.reshape(&w, &w_shape);
        let out = b.matmul(&zh, &wh);
        writers.push(b.reshape(&out, &heads_rows));
        let m = view(b, &blk.mlp_out);
        writers.push(b.reshape(&m, &row));
    }
    let refs: Vec<&str> = writers.iter().map(String::as_str).collect();
    b.concat(&refs, 0)
}

/// `ABLATION` [U, S, d] broadcast over the batch of `clean` [U, B*S*d], minus it.
fn mean_minus(b: &mut GraphBuilder, clean: &str, u: i64) -> String {
    let s = dim1(b, ABLATION, 1);
    let d = dim1(b, ABLATION, 2);
    let head = b.const_i64s(&[u, -1]);
    let shape = b.concat(&[&head, &s, &d], 0);
    let c4 = b.reshape(clean, &shape);
    let a4 = b.unsqueeze(ABLATION, &[1]);
    let diff = b.sub(&a4, &c4);
    let flat = b.const_i64s(&[u, -1]);
    b.reshape(&diff, &flat)
}

/// Writer differences, reader gradients, their product, and the outputs.
#[allow(clippy::too_many_arguments)]
fn score_nodes(
    b: &mut GraphBuilder,
    g: &mut GraphProto,
    anat: &BlockAnatomy,
    copies: &Copies,
    grads: &[String],
    kind: Scoring,
    reader_grads: bool,
    dtype: i32,
) {
    let n = kind.rows;
    let (h, dh) = (anat.heads as i64, anat.head_dim as i64);
    let writers_n = anat.topology().writers().len() as i64;
    let clean_of = |_: &mut GraphBuilder, t: &str| copies.clean_name(t);
    let corr_of = |b: &mut GraphBuilder, t: &str| first_rows(b, t, &copies.clean_name(t), n);
    let clean = writer_matrix(b, anat, &clean_of);
    let needs_corrupted = kind.convention == Convention::Denoising || kind.ablation != Ablation::Zero;
    let corr = if needs_corrupted { Some(writer_matrix(b, anat, &corr_of)) } else { None };
    let corr_m = corr.as_deref().unwrap_or_default();
    let dmat = match (kind.convention, kind.ablation) {
        (Convention::Denoising, _) => b.sub(&clean, corr_m),
        (Convention::Noising, Ablation::Patching) => b.sub(corr_m, &clean),
        (Convention::Noising, Ablation::Zero) => b.node("Neg", &[&clean], vec![]),
        (Convention::Noising, Ablation::Mean | Ablation::MeanPositional) => mean_minus(b, &clean, writers_n),
    };
    if kind.ablation.is_mean() {
        b.node_named("Identity", &[corr_m], out::CORRUPTED_WRITERS, vec![]);
        g.output.push(value_info(out::CORRUPTED_WRITERS, dtype, &[Dim::Known(writers_n), Dim::Unknown]));
    }
    if kind.z_means {
        let row = b.const_i64s(&[1, -1]);
        let zs: Vec<String> = anat
            .blocks
            .iter()
            .map(|blk| {
                let z = corr_of(b, &blk.out_proj.z);
                b.reshape(&z, &row)
            })
            .collect();
        let refs: Vec<&str> = zs.iter().map(String::as_str).collect();
        let all = b.concat(&refs, 0);
        b.node_named("Identity", &[&all], out::CORRUPTED_Z, vec![]);
        let layers = Dim::Known(anat.blocks.len() as i64);
        g.output.push(value_info(out::CORRUPTED_Z, dtype, &[layers, Dim::Unknown]));
    }
    // Δ of one tensor (z, for the head attribution), as D's rows are formed.
    let delta = |b: &mut GraphBuilder, t: &str| -> String {
        let clean = copies.clean_name(t);
        match kind.convention {
            Convention::Denoising => {
                let corr = first_rows(b, t, &clean, n);
                b.sub(&clean, &corr)
            }
            Convention::Noising if kind.ablation == Ablation::Zero => b.node("Neg", &[&clean], vec![]),
            Convention::Noising => b.sub(t, &clean),
        }
    };
    let per_head_shape = b.const_i64s(&[-1, h, dh]);

    // Gradients: grads are [reads.l, mlp_read.l (unless the norm is shared)]* then logits_read, then (plain EAP) each z.
    let fold = |b: &mut GraphBuilder, gr: &str, copies_: i64| -> String {
        if n == 1 {
            let s = b.const_i64s(&[copies_, -1]);
            return b.reshape(gr, &s);
        }
        // [copies, n*rows, ..] or [n*rows, ..] -> summed over the n runs.
        let s = if copies_ == 1 { b.const_i64s(&[1, n as i64, -1]) } else { b.const_i64s(&[copies_, n as i64, -1]) };
        let v = b.reshape(gr, &s);
        b.reduce_sum(&v, &[1], false)
    };
    // Clean-corrupted's second half of `grads` is the clean copy's readers, in the same order.
    let clean_half = if kind.two_points { grads.len() / 2 } else { 0 };
    let reader = |b: &mut GraphBuilder, k: usize, copies_: i64| -> String {
        let corr = fold(b, &grads[k], copies_);
        if !kind.two_points {
            return corr;
        }
        let s = b.const_i64s(&[copies_, -1]);
        let clean = b.reshape(&grads[clean_half + k], &s);
        b.add(&corr, &clean)
    };
    let mut readers = vec![];
    let mut k = 0;
    for blk in &anat.blocks {
        // With a shared norm the MLP's reader is the last copy: [R + 1, ..] is q, k, v, mlp.
        readers.push(reader(b, k, anat.copies(blk) as i64));
        if reader_grads {
            b.node_named("Identity", &[&grads[k]], &out::reads_grad(blk.layer), vec![]);
            g.output.push(value_info(&out::reads_grad(blk.layer), dtype, &vec![Dim::Unknown; anat.resid_rank + 1]));
        }
        k += 1;
        if !blk.shared_norm {
            readers.push(reader(b, k, 1));
            k += 1;
        }
    }
    let last = k;
    readers.push(reader(b, last, 1));
    let refs: Vec<&str> = readers.iter().map(String::as_str).collect();
    let gmat = b.concat(&refs, 0);
    b.node_named("Gemm", &[&dmat, &gmat], out::SCORES, vec![attr_i("transB", 1)]);
    let readers_n = anat.topology().readers().len() as i64;
    g.output.push(value_info(out::SCORES, dtype, &[Dim::Known(writers_n), Dim::Known(readers_n)]));

    // The head attribution's Δ is on z: a mean ablation's means are of the projected rows.
    if kind.with_heads {
        for (k, blk) in anat.blocks.iter().enumerate() {
            let dz = delta(b, &blk.out_proj.z);
            let p = b.mul(&dz, &grads[last + 1 + k]);
            let p3 = b.reshape(&p, &per_head_shape);
            let name = out::head_attribution(blk.layer);
            let s = b.reduce_sum(&p3, &[0, 2], false);
            b.node_named("Identity", &[&s], &name, vec![]);
            g.output.push(value_info(&name, dtype, &[Dim::Known(h)]));
        }
    }
}

/// Orders the nodes so that each comes after the producers of its inputs
/// (stable: nodes already in order keep it).
pub(crate) fn topo_sort(g: &mut GraphProto) {
    let nodes = std::mem::take(&mut g.node);
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in &n.output {
            producer.insert(o.as_str(), i);
        }
    }
    let mut placed = vec![false; nodes.len()];
    let mut order: Vec<usize> = Vec::with_capacity(nodes.len());
    for start in 0..nodes.len() {
        // Depth-first, inputs before the node.
        let mut stack = vec![(start, false)];
        while let Some((i, expanded)) = stack.pop() {
            if placed[i] {
                continue;
            }
            if expanded {
                placed[i] = true;
                order.push(i);
                continue;
            }
            stack.push((i, true));
            for x in nodes[i].input.iter().rev() {
                if let Some(&p) = producer.get(x.as_str()) {
                    if !placed[p] && p != i {
                        stack.push((p, false));
                    }
                }
            }
        }
    }
    let mut slots: Vec<Option<NodeProto>> = nodes.into_iter().map(Some).collect();
    g.node = order.into_iter().map(|i| slots[i].take().unwrap()).collect();
}

crate::augment::anatomy::deref_base!(EdgeGraph);

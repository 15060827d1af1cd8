//! EAP-IG-activations' rows (the EAP-IG codebase's `get_scores_ig_activations`),
//! built into the corrupted copy of the edge graph: it runs J = 1 + C N rows per
//! pair in one call, C = 1 + 2 layers components (the `input` writer, each
//! layer's attention as one, each MLP) and N steps:
//!   row block 0:        the corrupted prompt, untouched (the writers' corrupted values);
//!   row block 1 + c N + k: the base prompt (denoising: corrupted; noising: clean),
//!     component c's output replaced by the constant cf_c + alpha_k (clean_c - cf_c),
//!     no gradient through it (the codebase's hook returns a new tensor), every
//!     other component computed as the run computes it.
//! cf is the counterfactual: the corrupted value (block 0's), zero, or the data
//! set's mean (`ABLATION`, and `ABLATION_Z` for the attention's out-projection
//! input). alpha_k = k/N, k = 0..N-1 (denoising: from the corrupted end) or
//! k = 1..N (noising, as the codebase: from cf to clean, clean included).
//! The metric weights block 0 by 0 and every other row by 1/(C N), so each
//! reader's gradient summed over the rows is the mean over the C N runs.

use super::anatomy::BlockAnatomy;
use super::convention::{Ablation, Convention};
use crate::augment::{Anatomy, Copies};
use attrpatch_onnx::builder::GraphBuilder;
use attrpatch_onnx::graph::rename_uses;
use attrpatch_onnx::pb::GraphProto;
use std::collections::{HashMap, HashSet};

/// With a mean ablation: each writer's counterfactual per position, [writers, S, d].
pub const ABLATION: &str = "attrpatch.edges.ablation";

/// With a mean ablation: each layer's mean out-projection input per position,
/// [layers, S, heads * head_dim] (the heads' means before their projection).
pub const ABLATION_Z: &str = "attrpatch.edges.ablation_z";

/// The number of interpolated components: the input, each attention, each MLP.
pub fn components(blocks: &BlockAnatomy) -> usize {
    1 + 2 * blocks.blocks.len()
}

/// Rows per pair of the corrupted copy with `n` steps.
pub fn rows(blocks: &BlockAnatomy, n: usize) -> usize {
    1 + components(blocks) * n
}

/// alpha of step k (module doc).
pub fn alpha(convention: Convention, n: usize, k: usize) -> f64 {
    match convention {
        Convention::Denoising => k as f64 / n as f64,
        Convention::Noising => (k + 1) as f64 / n as f64,
    }
}

/// Where a component's mean comes from: a [rows, S, d] input and the row.
struct MeanRow<'a> {
    input: &'a str,
    row: usize,
}

/// Rewrites the corrupted copy (module doc); returns the held points, which the
/// backward must treat as constants.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rewrite(
    g: &mut GraphProto,
    anat: &Anatomy,
    blocks: &BlockAnatomy,
    copies: &Copies,
    n: usize,
    convention: Convention,
    ablation: Ablation,
    b: &mut GraphBuilder,
) -> HashSet<String> {
    let c = components(blocks);
    let j = rows(blocks, n);
    let mut renames = HashMap::new();
    for t in anat.token_inputs() {
        let base = match convention {
            Convention::Denoising => &t.corrupted,
            Convention::Noising => &t.clean,
        };
        let reps = b.const_i64s(&[(c * n) as i64, 1]);
        let tiled = b.node("Tile", &[base, &reps], vec![]);
        renames.insert(t.corrupted.clone(), b.concat(&[&t.corrupted, &tiled], 0));
    }
    let alphas: Vec<f64> = (0..j).map(|r| if r == 0 { 0.0 } else { alpha(convention, n, (r - 1) % n) }).collect();
    let alpha = b.const_tensor(anat.dtype, &[j as i64, 1], &alphas);
    let per_layer = blocks.heads + 1;
    let mut parts: Vec<(String, MeanRow)> =
        vec![(blocks.blocks[0].resid_in.clone(), MeanRow { input: ABLATION, row: 0 })];
    for (l, blk) in blocks.blocks.iter().enumerate() {
        parts.push((blk.out_proj.z.clone(), MeanRow { input: ABLATION_Z, row: l }));
        let mlp = 1 + l * per_layer + blocks.heads;
        parts.push((blk.mlp_out.clone(), MeanRow { input: ABLATION, row: mlp }));
    }
    let mut held_points = HashSet::new();
    let flat_shape = b.const_i64s(&[j as i64, -1]);
    let one_row = b.const_i64s(&[1, -1]);
    for (ci, (t, mean)) in parts.iter().enumerate() {
        let flat = b.reshape(t, &flat_shape);
        let clean = b.reshape(&copies.clean_name(t), &one_row);
        let point = match ablation {
            Ablation::Zero => b.mul(&alpha, &clean),
            _ => {
                let cf = match ablation {
                    Ablation::Patching => b.slice_axis(&flat, 0, 0, 1),
                    _ => mean_row(b, mean, &clean),
                };
                let towards = b.sub(&clean, &cf);
                let step = b.mul(&alpha, &towards);
                b.add(&cf, &step)
            }
        };
        let held = b.node("Identity", &[&point], vec![]);
        held_points.insert(held.clone());
        let mask: Vec<f64> = (0..j).map(|r| if r > ci * n && r <= (ci + 1) * n { 1.0 } else { 0.0 }).collect();
        let mask = b.const_tensor(anat.dtype, &[j as i64, 1], &mask);
        let change = b.sub(&held, &flat);
        let masked = b.mul(&mask, &change);
        let moved = b.add(&flat, &masked);
        let shape = b.shape(t);
        renames.insert(t.clone(), b.reshape(&moved, &shape));
    }
    // The new nodes read the old names; they are placed after this (`topo_sort` orders them).
    rename_uses(&mut g.node, &renames);
    b.apply(g);
    held_points
}

/// Row `mean.row` of the mean input [rows, S, d], repeated over the pairs of
/// `clean` [1, B*S*d]: [1, B*S*d].
fn mean_row(b: &mut GraphBuilder, mean: &MeanRow, clean: &str) -> String {
    let index = b.const_i64s(&[mean.row as i64]);
    let picked = b.node("Gather", &[mean.input, &index], vec![attrpatch_onnx::builder::attr_i("axis", 0)]);
    let per_pair = b.const_i64s(&[1, -1]);
    let row = b.reshape(&picked, &per_pair);
    let width = b.dim(&row, 1);
    let width = b.unsqueeze(&width, &[0]);
    let all = b.const_i64s(&[-1]);
    let pairs_shape = b.concat(&[&all, &width], 0);
    let pairs = b.reshape(clean, &pairs_shape);
    let shape = b.shape(&pairs);
    let repeated = b.node("Expand", &[&row, &shape], vec![]);
    b.reshape(&repeated, &per_pair)
}

//! The edge-patching graph: exact edge patching as rows of one forward graph.
//!
//!   source copy: the pairs' prompts fed as `clean.X` (B rows), forward only;
//!                which prompts those are is the caller's choice (`patching`)
//!   row copy:    R rows; row r runs pair row_pair[r]'s prompt fed as
//!                `corrupted.X`, with every reader on its own input copy
//!                (`rewrite`), and each reader v's input
//!                  x_v = resid_v + sum_u mask_v[r, v, u] (a_u^source - a_u^row)
//!                over the writers u upstream of v
//!
//! The writers' outputs a_u (the `input` residual, each head's z_h W_O[h],
//! each MLP's output) are differences of the two copies' tensors, taken by
//! linearity before the out-projection: (z^s - z^r)_h W_O[h]. Only writers
//! upstream of v exist where v reads, so the sums are causal. Writers upstream
//! of a reader are always a prefix of `Topology::writers` (input, then per
//! layer its heads and its MLP), so each reader group's mask is
//! [R, readers, prefix length] and every entry is an edge.
//!
//! With an ablation (`EdgePatchOptions::ablation`) a patched edge carries the
//! ablated value instead of the source copy's: a_u^source is 0 (zero) or the
//! data set's mean of a_u (`ABLATION`, [writers, S, d], as the edge graph's),
//! so x_v = resid_v + sum_u mask_v[r, v, u] (a_u^ablated - a_u^row).

use super::anatomy::BlockAnatomy;
use super::convention::Ablation;
use super::graph::topo_sort;
use super::rewrite::names as reads;
use super::start::Start;
use super::{Reader, Topology};
use crate::augment::{copy, metric, names as aug_names, skeleton, Metric};
use attrpatch_onnx::builder::{attr_i, GraphBuilder};
use attrpatch_onnx::consts::INT64;
use attrpatch_onnx::error::Result;
use attrpatch_onnx::facts::Dim;
use attrpatch_onnx::graph::value_info;
use attrpatch_onnx::OnnxModel;
use std::collections::HashMap;

/// Input and output names of the edge-patching graph.
pub mod names {
    /// [R] int64: the pair (index into the source prompts) each row runs.
    pub const ROW_PAIR: &str = "attrpatch.edge_rows.pair";
    /// [R, 1]: the rows' weights in their mean (not used by the host).
    pub const ROW_WEIGHTS: &str = "attrpatch.edge_rows.weights";
    /// [1, R]: each row's metric.
    pub const ROW_METRIC: &str = "attrpatch.edge_rows.metric";
    /// [1, 1]: the rows' weighted mean.
    pub const ROW_METRIC_MEAN: &str = "attrpatch.edge_rows.metric_mean";
    /// [1, B]: each pair's metric in the source copy.
    pub const SOURCE_METRIC: &str = "attrpatch.edge_source.metric";
    /// [1, 1]: their mean.
    pub const SOURCE_METRIC_MEAN: &str = "attrpatch.edge_source.metric_mean";
    /// The mask of a reader group (`MaskGroup`).
    pub fn mask(group: &str) -> String {
        format!("attrpatch.edge_mask.{group}")
    }
    pub(super) fn rows_input(model_input: &str) -> String {
        format!("attrpatch.edge_rows.{model_input}")
    }
}

/// A set of readers that read the same residual point, with one mask input
/// [R, readers, upstream]: entry (r, i, u) = 1 when row r's edge from writer u
/// (index into `Topology::writers`) to `readers[i]` carries the source value.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskGroup {
    /// Group name, as in the mask input's name: `heads.{l}`, `mlp.{l}`, `logits`.
    pub name: String,
    /// The readers, in `Topology::readers` order.
    pub readers: Vec<Reader>,
    /// How many writers (a prefix of `Topology::writers`) feed these readers.
    pub upstream: usize,
}

/// Every reader group of a topology, in residual order.
pub fn mask_groups(t: &Topology) -> Vec<MaskGroup> {
    let all = t.readers();
    let per_layer = 1 + t.heads;
    let mut out = vec![];
    for l in 0..t.layers {
        let before = 1 + l * per_layer;
        let heads: Vec<Reader> = all.iter().copied().filter(|r| r.qkv().is_some() && r.layer() == Some(l)).collect();
        out.push(MaskGroup { name: format!("heads.{l}"), readers: heads, upstream: before });
        let mlp_up = if t.parallel { before } else { before + t.heads };
        out.push(MaskGroup { name: format!("mlp.{l}"), readers: vec![Reader::Mlp(l)], upstream: mlp_up });
    }
    out.push(MaskGroup { name: "logits".into(), readers: vec![Reader::Logits], upstream: 1 + t.layers * per_layer });
    out
}

/// What the edge-patching graph computes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EdgePatchOptions {
    /// The metric, as `run`'s.
    pub metric: Metric,
    /// Overrides the head count read from the graph.
    pub heads: Option<usize>,
    /// What a patched edge carries: the source copy's value (patching), zero,
    /// or the fed mean (`ABLATION`; mean and mean-positional feed it alike).
    pub ablation: Ablation,
}

/// The rewritten model and what feeding it needs.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct EdgePatchGraph {
    /// The graph, its hooks, token inputs, vocabulary, heads and metric.
    #[serde(flatten)]
    pub base: crate::augment::anatomy::GraphBase,
    /// The blocks as found.
    pub anatomy: BlockAnatomy,
    /// What a patched edge carries.
    pub ablation: Ablation,
}

/// Builds the edge-patching graph (module doc). Takes the model by value, as `augment` does.
pub fn build(model: OnnxModel, opts: &EdgePatchOptions) -> Result<EdgePatchGraph> {
    let Start { anat, heads, blocks, mut proto, builder: mut b, .. } =
        Start::read(model, opts.heads, "attrpatch/edge_patch/")?;
    let g = proto.graph.as_mut().unwrap();

    // The source copy reads clean.X; the rows read their pairs' corrupted.X.
    let token_inputs = anat.token_inputs();
    let rows_map = copy::input_map(&token_inputs, |t| names::rows_input(&t.model_name));
    let source = copy::Renamer::clean(&token_inputs, &anat.constants);
    let source_nodes = source.copy(&g.node);
    let mut row_nodes = std::mem::take(&mut g.node);
    copy::rename_inputs(&mut row_nodes, &rows_map);
    for t in &token_inputs {
        b.node_named("Gather", &[&t.corrupted, names::ROW_PAIR], &rows_map[&t.model_name], vec![attr_i("axis", 0)]);
    }

    // Every reader copy of the rows is read patched. A layer whose MLP shares the
    // attention's layer-norm (GPT-J, Phi) has no MLP copy of its own: the MLP's
    // input is the last of the batched q/k/v copies (`rewrite`).
    let topo = blocks.topology();
    let groups = mask_groups(&topo);
    let shared = |l: usize| blocks.blocks[l].shared_norm;
    // Per group: the reader tensor it patches (None: patched with its layer's heads).
    let read_of = |gi: usize| -> Option<String> {
        let l = gi / 2;
        match (gi == groups.len() - 1, gi % 2) {
            (true, _) => Some(reads::LOGITS_READ.to_string()),
            (false, 0) => Some(reads::head_reads(l)),
            _ if shared(l) => None,
            _ => Some(reads::mlp_read(l)),
        }
    };
    let patched: HashMap<String, String> = (0..groups.len())
        .filter_map(|gi| Some((read_of(gi)?, format!("attrpatch.edge_patched.{}", groups[gi].name))))
        .collect();
    copy::rename_inputs(&mut row_nodes, &patched);

    let ids = &token_inputs[0];
    let shape_of = |b: &mut GraphBuilder, t: &str| -> String {
        let s = b.shape(t);
        b.slice_axis(&s, 0, 0, 1)
    };
    let minus_one = b.const_i64s(&[-1]);
    let b_dim = shape_of(&mut b, &ids.clean);
    let pairs_flat = b.concat(&[&b_dim, &minus_one], 0);
    let r_dim = shape_of(&mut b, &rows_map[&ids.model_name]);
    let rows_flat = b.concat(&[&r_dim, &minus_one], 0);
    // Source (zero: nothing) minus row of a writer tensor, [R, N].
    let delta = |b: &mut GraphBuilder, t: &str| -> String {
        let r = b.reshape(t, &rows_flat);
        if opts.ablation == Ablation::Zero {
            return b.neg(&r);
        }
        let s = b.reshape(&source.name(t), &pairs_flat);
        let s_rows = b.node("Gather", &[&s, names::ROW_PAIR], vec![attr_i("axis", 0)]);
        b.sub(&s_rows, &r)
    };
    let mean = opts.ablation.is_mean();
    // With a mean: writers [first, first + n) of `ABLATION` as [1, n, S*d].
    let means = |b: &mut GraphBuilder, first: usize, n: usize| -> String {
        let rows = b.slice_axis(super::graph::ABLATION, 0, first as i64, (first + n) as i64);
        let shape = b.const_i64s(&[1, n as i64, -1]);
        b.reshape(&rows, &shape)
    };
    let (h, dh, d) = (blocks.heads as i64, blocks.head_dim as i64, blocks.d_model as i64);
    let rs = b.shape(&rows_map[&ids.model_name]);
    let h_dh = b.const_i64s(&[h, dh]);
    let rshd = b.concat(&[&rs, &h_dh], 0);
    let w_shape = b.const_i64s(&[h, dh, d]);
    let heads_rows = b.const_i64s(&[0, h, -1]);
    // Writer differences in `Topology::writers` order, each [R, n, S*d].
    // One writer's piece [R, 1, S*d]: with a mean, its mean minus its row.
    let single = |b: &mut GraphBuilder, t: &str, writer: usize| -> String {
        if !mean {
            let d = delta(b, t);
            return b.unsqueeze(&d, &[1]);
        }
        let r = b.reshape(t, &rows_flat);
        let r = b.unsqueeze(&r, &[1]);
        let m = means(b, writer, 1);
        b.sub(&m, &r)
    };
    let per_layer = blocks.heads + 1;
    let mut pieces = vec![];
    let x0 = single(&mut b, &blocks.blocks[0].resid_in, 0);
    pieces.push((1usize, x0));
    for (l, blk) in blocks.blocks.iter().enumerate() {
        // The heads' z difference (with a mean: minus the row's z, the mean added after the projection).
        let dz = if mean {
            let r = b.reshape(&blk.out_proj.z, &rows_flat);
            b.neg(&r)
        } else {
            delta(&mut b, &blk.out_proj.z)
        };
        let z4 = b.reshape(&dz, &rshd);
        let zh = b.transpose(&z4, &[0, 2, 1, 3]);
        let w =
            if blk.out_proj.trans_b { b.transpose(&blk.out_proj.weight, &[1, 0]) } else { blk.out_proj.weight.clone() };
        let wh = b.reshape(&w, &w_shape);
        let out = b.matmul(&zh, &wh);
        let mut heads = b.reshape(&out, &heads_rows);
        if mean {
            let m = means(&mut b, 1 + l * per_layer, blocks.heads);
            heads = b.add(&m, &heads);
        }
        pieces.push((blocks.heads, heads));
        let mlp = single(&mut b, &blk.mlp_out, 1 + l * per_layer + blocks.heads);
        pieces.push((1, mlp));
    }
    // Each group's sum mask @ D_prefix, [R, readers, S*d].
    let sums: Vec<String> = groups
        .iter()
        .map(|grp| {
            let (mut n, mut k) = (0, 0);
            while n < grp.upstream {
                n += pieces[k].0;
                k += 1;
            }
            let refs: Vec<&str> = pieces[..k].iter().map(|(_, p)| p.as_str()).collect();
            let dmat = if refs.len() == 1 { refs[0].to_string() } else { b.concat(&refs, 1) };
            b.matmul(&names::mask(&grp.name), &dmat)
        })
        .collect();
    // patched = read + the sums, laid out as the read.
    for (gi, grp) in groups.iter().enumerate() {
        let Some(read) = read_of(gi) else { continue };
        let laid = if grp.name.starts_with("heads.") {
            let l = gi / 2;
            // A shared norm's MLP copy is the last: its sum goes after the heads'.
            let all = if shared(l) { b.concat(&[&sums[gi], &sums[gi + 1]], 1) } else { sums[gi].clone() };
            b.transpose(&all, &[1, 0, 2])
        } else {
            sums[gi].clone()
        };
        let moved = b.reshape_like(&laid, &read);
        b.node_named("Add", &[&read, &moved], &patched[&read], vec![]);
    }

    // The metric: per pair in the source copy, per row in the rows.
    let position_rows = b.node("Gather", &[aug_names::POSITION_ONEHOT, names::ROW_PAIR], vec![attr_i("axis", 0)]);
    let answer_rows = b.node("Gather", &[aug_names::ANSWER_ONEHOT, names::ROW_PAIR], vec![attr_i("axis", 0)]);
    let rows_sel = metric::Selectors { position: &position_rows, answer: &answer_rows, weights: names::ROW_WEIGHTS };
    let pairs = metric::PAIR_SELECTORS;
    let (src, logits) = (&anat.src, &anat.logits);
    let source_sel = metric::last_logits(&mut b, src, logits, &|t| source.name(t), pairs);
    let row_sel = metric::last_logits(&mut b, src, logits, &|t| t.to_string(), rows_sel);
    let m = opts.metric;
    metric::metric_values(&mut b, m, &source_sel, &source_sel, pairs, names::SOURCE_METRIC, names::SOURCE_METRIC_MEAN);
    let source_sel_rows = b.node("Gather", &[&source_sel, names::ROW_PAIR], vec![attr_i("axis", 0)]);
    metric::metric_values(&mut b, m, &row_sel, &source_sel_rows, rows_sel, names::ROW_METRIC, names::ROW_METRIC_MEAN);

    g.node = source_nodes;
    g.node.extend(row_nodes);
    b.apply(g);
    topo_sort(g);
    skeleton::declare_inputs(g, &anat);
    let (dtype, rows) = (anat.dtype, Dim::Sym("rows".into()));
    g.input.push(value_info(names::ROW_PAIR, INT64, std::slice::from_ref(&rows)));
    g.input.push(value_info(names::ROW_WEIGHTS, dtype, &[rows.clone(), Dim::Known(1)]));
    if mean {
        let u = Dim::Known(topo.writers().len() as i64);
        g.input.push(value_info(super::graph::ABLATION, dtype, &[u, Dim::Unknown, Dim::Known(blocks.d_model as i64)]));
    }
    for grp in &groups {
        let dims = [rows.clone(), Dim::Known(grp.readers.len() as i64), Dim::Known(grp.upstream as i64)];
        g.input.push(value_info(&names::mask(&grp.name), dtype, &dims));
    }
    g.output.clear();
    g.output.push(value_info(names::SOURCE_METRIC, dtype, &[Dim::Known(1), anat.batch.clone()]));
    g.output.push(value_info(names::ROW_METRIC, dtype, &[Dim::Known(1), rows]));
    skeleton::finish(&mut proto);
    Ok(EdgePatchGraph {
        base: anat.into_base(proto, Some(heads), opts.metric),
        anatomy: blocks,
        ablation: opts.ablation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each group's upstream prefix holds exactly the writers with an edge to its readers.
    #[test]
    fn groups_cover_every_edge_once() {
        for t in [
            Topology { layers: 3, heads: 4, kv_heads: 2, parallel: false },
            Topology { layers: 2, heads: 2, kv_heads: 2, parallel: true },
        ] {
            let writers = t.writers();
            let mut n = 0;
            for g in mask_groups(&t) {
                for r in &g.readers {
                    for (i, w) in writers.iter().enumerate() {
                        assert_eq!(i < g.upstream, t.has_edge(*w, *r), "{w} -> {r} in group {}", g.name);
                    }
                    n += g.upstream;
                }
            }
            assert_eq!(n, t.edges().len());
            let readers: Vec<Reader> = mask_groups(&t).into_iter().flat_map(|g| g.readers).collect();
            assert_eq!(readers, t.readers());
        }
    }
}

crate::augment::anatomy::deref_base!(EdgePatchGraph);

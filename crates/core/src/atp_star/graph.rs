//! The AtP* additions to the two-copy attribution graph (`augment`): the
//! QK-fix and AtP estimates of every query and key, and GradDrop's L - 1
//! masked backward sweeps, all outputs of the one graph (one runtime call
//! per batch, no session per sweep).
//!
//! GradDrop's sweep l drops the gradient through layer l's residual writes
//! (its attention and MLP outputs). Above layer l the gradient is the plain
//! one, so sweep l starts at layer l's output with the plain backward's
//! gradient there, the writes held constant, and runs down to layer 0: the
//! L - 1 sweeps cost about (L - 1) / 2 backward passes together. A node of
//! layer j is unchanged by sweeps l < j and zeroed by sweep j, so only the
//! nodes below l are output for sweep l (`run` fills in the rest).

use super::attention::Pattern;
use super::names::{output, Grid, Kind, Site};
use super::qk_fix::{self, Estimates, Recomputed};
use crate::augment::anatomy::Anatomy;
use crate::augment::grid_nodes;
use crate::augment::names;
use attrpatch_autodiff::Backward;
use attrpatch_onnx::builder::GraphBuilder;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::facts::{Dim, Facts};
use attrpatch_onnx::graph::value_info;
use attrpatch_onnx::pb::GraphProto;
use attrpatch_onnx::OnnxModel;
use std::collections::HashSet;

/// What one layer's additions read from the model.
struct Layer {
    pattern: Pattern,
    /// The hook (attention out-projection input).
    hook: String,
    /// The attention's and the MLP's residual writes.
    writes: [String; 2],
    /// The residual stream after the block.
    resid_out: String,
}

/// The AtP* additions for one model.
pub struct Plan {
    layers: Vec<Layer>,
    heads: usize,
    grad_drop: bool,
}

impl Plan {
    /// Reads every layer's attention and residual writes (the edge anatomy's
    /// reading: a model edges cannot read is refused alike, naming the layer).
    pub fn read(model: &OnnxModel, anat: &Anatomy, heads: usize, grad_drop: bool) -> Result<Plan> {
        let facts = crate::edges::start::probed_facts(model)?;
        let g = model.graph();
        let path = &model.path;
        // GradDrop needs every block's residual writes (the edge anatomy);
        // the QK-fix only each hook's attention.
        let blocks = match grad_drop {
            true => Some(crate::edges::anatomy::read(g, &anat.constants, &facts, path, &anat.hooks, heads, &anat.logits).map_err(
                |e| Error::Unsupported(format!("AtP*'s GradDrop reads every block's residual writes: {e}; --no-grad-drop runs the QK-fix alone")),
            )?),
            false => None,
        };
        let mut layers = vec![];
        for (i, h) in anat.hooks.iter().enumerate() {
            let (softmax, scores) = crate::edges::anatomy::attention_of(g, &anat.constants, &facts, path, h)
                .map_err(|e| Error::Unsupported(format!("AtP*: {e}")))?;
            let pattern = Pattern::read(g, h.layer, &scores, &softmax)?;
            if let Some(n) = pattern.chain.iter().find(|n| !n.domain.is_empty() && n.domain != "ai.onnx") {
                return Err(Error::Unsupported(format!(
                    "AtP*: layer {}: node '{}' ({} of domain {}) between the attention scores and the Softmax cannot \
                     be replayed for the QK-fix; expected standard ONNX ops there",
                    h.layer, n.name, n.op_type, n.domain
                )));
            }
            let (writes, resid_out) = match &blocks {
                Some(b) => {
                    ([b.blocks[i].attn_write.clone(), b.blocks[i].mlp_out.clone()], b.blocks[i].resid_out.clone())
                }
                None => Default::default(),
            };
            layers.push(Layer { pattern, hook: h.tensor.clone(), writes, resid_out });
        }
        Ok(Plan { layers, heads, grad_drop })
    }

    /// Each layer's attention pattern, by layer.
    pub fn patterns(&self) -> Vec<&Pattern> {
        self.layers.iter().map(|l| &l.pattern).collect()
    }

    /// Each layer's residual writes (attention, MLP) and the block's output, by layer.
    pub fn residual(&self) -> Vec<([&str; 2], &str)> {
        self.layers.iter().map(|l| ([l.writes[0].as_str(), l.writes[1].as_str()], l.resid_out.as_str())).collect()
    }

    /// Tensors whose gradient the plain backward must give besides the hooks:
    /// every pattern, every Softmax input, and (GradDrop) every block output but the first.
    pub fn wrt(&self) -> Vec<String> {
        let mut w: Vec<String> = self.layers.iter().map(|l| l.pattern.probs().to_string()).collect();
        w.extend(self.layers.iter().map(|l| l.pattern.logits().to_string()));
        if self.grad_drop {
            w.extend(self.layers.iter().skip(1).map(|l| l.resid_out.clone()));
        }
        w
    }

    /// Emits the estimates and the sweeps. `grads` are the plain backward's
    /// gradients of `wrt()`, in its order; `clean` names a tensor's clean copy;
    /// `shape_bs` is Shape = [B, S] of a per-pair token tensor.
    #[allow(clippy::too_many_arguments)]
    pub fn emit(
        &self,
        b: &mut GraphBuilder,
        g: &mut GraphProto,
        facts: &Facts,
        stop: &HashSet<String>,
        anat: &Anatomy,
        clean: &dyn Fn(&str) -> String,
        grads: &[String],
        shape_bs: &str,
        raw: bool,
    ) -> Result<()> {
        let n = self.layers.len();
        let (probs_g, logits_g) = (&grads[..n], &grads[n..2 * n]);
        let mut outputs: Vec<(String, Grid)> = vec![];
        let recomputed: Vec<Recomputed> = self
            .layers
            .iter()
            .map(|l| qk_fix::recompute(b, &l.pattern, &clean(&l.pattern.q), &clean(&l.pattern.kt)))
            .collect();
        for (j, r) in recomputed.iter().enumerate() {
            let e = qk_fix::estimates(b, r, &probs_g[j], Some(&logits_g[j]));
            self.site_grids(b, shape_bs, Kind::QkFix, j, &e, &mut outputs);
            if raw {
                // For checks: g = dL/dA and the per-query and per-key QK-fix before the grids.
                for (what, t) in [("probs_grad", &probs_g[j]), ("query", &e.query), ("key", &e.key)] {
                    let name = super::names::raw(what, j);
                    b.node_named("Identity", &[t], &name, vec![]);
                    g.output.push(attrpatch_onnx::graph::value_info_unshaped(&name, anat.dtype));
                }
            }
        }
        if self.grad_drop {
            let resid_g = &grads[2 * n..];
            for l in 1..n {
                let mut stop_l = stop.clone();
                stop_l.extend(self.layers[l].writes.iter().cloned());
                let mut wrt: Vec<String> = self.layers[..l].iter().map(|x| x.hook.clone()).collect();
                wrt.extend(self.layers[..l].iter().map(|x| x.pattern.probs().to_string()));
                let sweep = Backward { graph: g, facts, stop: &stop_l }.build(
                    b,
                    &wrt,
                    &self.layers[l].resid_out,
                    &resid_g[l - 1],
                )?;
                let kind = Kind::Sweep(l);
                for j in 0..l {
                    let x = &self.layers[j].hook;
                    let (h, p) =
                        (output(kind, Site::Output, Grid::Heads, j), output(kind, Site::Output, Grid::Positions, j));
                    let onehot = names::POSITION_ONEHOT;
                    grid_nodes::emit_named(b, &clean(x), x, &sweep[j], shape_bs, onehot, Some(self.heads), &h, &p);
                    outputs.push((h, Grid::Heads));
                    outputs.push((p, Grid::Positions));
                    let e = qk_fix::estimates(b, &recomputed[j], &sweep[l + j], None);
                    self.site_grids(b, shape_bs, kind, j, &e, &mut outputs);
                }
            }
        }
        let heads = Dim::Known(self.heads as i64);
        for (name, grid) in outputs {
            let second = match grid {
                Grid::Heads => heads.clone(),
                Grid::Positions => anat.seq.clone(),
            };
            g.output.push(value_info(&name, anat.dtype, &[anat.batch.clone(), second]));
        }
        Ok(())
    }

    /// The heads and positions grids of one layer's query and key estimates
    /// (and AtP's, when present), as named outputs.
    fn site_grids(
        &self,
        b: &mut GraphBuilder,
        shape_bs: &str,
        kind: Kind,
        layer: usize,
        e: &Estimates,
        outputs: &mut Vec<(String, Grid)>,
    ) {
        let mut sites = vec![(kind, Site::Query, &e.query), (kind, Site::Key, &e.key)];
        if let (Some(q), Some(k)) = (&e.query_linear, &e.key_linear) {
            sites.push((Kind::Atp, Site::Query, q));
            sites.push((Kind::Atp, Site::Key, k));
        }
        for (kind, site, values) in sites {
            let [h, p] = [Grid::Heads, Grid::Positions].map(|grid| output(kind, site, grid, layer));
            per_head_grids(b, values, shape_bs, self.heads, site, &h, &p);
            outputs.push((h, Grid::Heads));
            outputs.push((p, Grid::Positions));
        }
    }
}

/// `values` [.., T] (the product's leading axes: [B, H] or BLOOM's [B*H]) as
/// [B, H, T]; the heads grid is a query's last position, or a key's sum over
/// positions; the positions grid sums the heads.
fn per_head_grids(b: &mut GraphBuilder, values: &str, shape_bs: &str, heads: usize, site: Site, h: &str, p: &str) {
    let batch = b.slice_axis(shape_bs, 0, 0, 1);
    let rest = b.const_i64s(&[heads as i64, -1]);
    let bht = b.concat(&[&batch, &rest], 0);
    let v = b.reshape(values, &bht);
    let per_head = match site {
        Site::Query => {
            let last = b.mul(&v, names::POSITION_ONEHOT);
            b.reduce_sum(&last, &[2], false)
        }
        _ => b.reduce_sum(&v, &[2], false),
    };
    b.node_named("Identity", &[&per_head], h, vec![]);
    let positions = b.reduce_sum(&v, &[1], false);
    b.node_named("Identity", &[&positions], p, vec![]);
}

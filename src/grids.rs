//! From activations and gradients to the tutorial's two grids.
//!
//! Per layer, p = grad_corrupted * (act_clean - act_corrupted) over
//! [pair, position, feature]; heads[l][h] sums p at the last position over
//! pairs and the head's slice of features; positions[l][s] sums p over pairs
//! and all features.

use crate::error::{Error, Result};
use ndarray::{ArrayD, ArrayView3, Ix3};

pub struct Grids {
    /// [layer][head]
    pub heads: Vec<Vec<f64>>,
    /// [layer][position]
    pub positions: Vec<Vec<f64>>,
}

/// Views a hook tensor of shape [B*S, D] or [B, S, D] as [B, S, D].
pub fn as_rows<'a>(t: &'a ArrayD<f32>, rows: usize, seq: usize, what: &str) -> Result<ArrayView3<'a, f32>> {
    let d = *t.shape().last().unwrap_or(&0);
    if t.len() != rows * seq * d || d == 0 {
        return Err(Error::Runtime(format!(
            "{what} has shape {:?}; expected {} rows of {seq} positions",
            t.shape(),
            rows
        )));
    }
    let v = t.view();
    let v = v.into_shape_with_order((rows, seq, d)).map_err(|e| Error::Runtime(format!("{what}: {e}")))?;
    Ok(v.into_dimensionality::<Ix3>().unwrap())
}

/// Per layer l: the hook tensor on the clean and corrupted prompts and the
/// metric's gradient on the corrupted ones, each [B*S, D] or [B, S, D].
pub fn attribution_grids(
    clean: &[ArrayD<f32>],
    corrupted: &[ArrayD<f32>],
    grads: &[ArrayD<f32>],
    seq: usize,
    heads: usize,
) -> Result<Grids> {
    let mut g = Grids { heads: vec![], positions: vec![] };
    for l in 0..grads.len() {
        let pairs = grads[l].len() / seq.max(1) / grads[l].shape().last().copied().unwrap_or(1).max(1);
        let a = as_rows(&clean[l], pairs, seq, &format!("layer {l} clean activation"))?;
        let c = as_rows(&corrupted[l], pairs, seq, &format!("layer {l} corrupted activation"))?;
        let gr = as_rows(&grads[l], pairs, seq, &format!("layer {l} gradient"))?;
        let d = a.shape()[2];
        if heads == 0 || d % heads != 0 {
            return Err(Error::Input(format!("{heads} heads do not divide the hook width {d} of layer {l}")));
        }
        let hd = d / heads;
        let mut by_head = vec![0f64; heads];
        let mut by_pos = vec![0f64; seq];
        for b in 0..pairs {
            for s in 0..seq {
                for f in 0..d {
                    let p = gr[[b, s, f]] as f64 * (a[[b, s, f]] as f64 - c[[b, s, f]] as f64);
                    by_pos[s] += p;
                    if s == seq - 1 {
                        by_head[f / hd] += p;
                    }
                }
            }
        }
        g.heads.push(by_head);
        g.positions.push(by_pos);
    }
    Ok(g)
}

/// The first non-finite value of a tensor, as (flat index, value).
pub fn first_non_finite(t: &ArrayD<f32>) -> Option<(usize, f32)> {
    t.iter().enumerate().find(|(_, v)| !v.is_finite()).map(|(i, v)| (i, *v))
}

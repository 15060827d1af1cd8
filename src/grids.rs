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

/// One pair's attribution grids: heads [layer][head] at its last position,
/// positions [layer][position].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairGrid {
    pub heads: Vec<Vec<f64>>,
    pub positions: Vec<Vec<f64>>,
}

/// Per layer l: the hook tensor on the clean and corrupted prompts and the
/// metric's gradient on the corrupted ones, each [B*S, D] or [B, S, D].
/// Returns each pair's grids, with the gradient multiplied by `scale`.
pub fn pair_grids(
    clean: &[ArrayD<f32>],
    corrupted: &[ArrayD<f32>],
    grads: &[ArrayD<f32>],
    seq: usize,
    heads: usize,
    scale: f64,
) -> Result<Vec<PairGrid>> {
    let mut out: Vec<PairGrid> = vec![];
    for l in 0..grads.len() {
        let width = grads[l].shape().last().copied().unwrap_or(1).max(1);
        let pairs = grads[l].len() / seq.max(1) / width;
        let a = as_rows(&clean[l], pairs, seq, &format!("layer {l} clean activation"))?;
        let c = as_rows(&corrupted[l], pairs, seq, &format!("layer {l} corrupted activation"))?;
        let gr = as_rows(&grads[l], pairs, seq, &format!("layer {l} gradient"))?;
        let d = a.shape()[2];
        if heads == 0 || d % heads != 0 {
            return Err(Error::Input(format!("{heads} heads do not divide the hook width {d} of layer {l}")));
        }
        out.resize_with(pairs, PairGrid::default);
        let hd = d / heads;
        for (b, pg) in out.iter_mut().enumerate() {
            let mut by_head = vec![0f64; heads];
            let mut by_pos = vec![0f64; seq];
            for s in 0..seq {
                for f in 0..d {
                    let p = scale * gr[[b, s, f]] as f64 * (a[[b, s, f]] as f64 - c[[b, s, f]] as f64);
                    by_pos[s] += p;
                    if s == seq - 1 {
                        by_head[f / hd] += p;
                    }
                }
            }
            pg.heads.push(by_head);
            pg.positions.push(by_pos);
        }
    }
    Ok(out)
}

/// Adds `b` into `a`, element by element.
pub fn add_into(a: &mut Vec<Vec<f64>>, b: &[Vec<f64>]) {
    if a.is_empty() {
        *a = b.to_vec();
        return;
    }
    for (ra, rb) in a.iter_mut().zip(b) {
        for (x, y) in ra.iter_mut().zip(rb) {
            *x += y;
        }
    }
}

pub fn scaled(a: &[Vec<f64>], k: f64) -> Vec<Vec<f64>> {
    a.iter().map(|r| r.iter().map(|v| v * k).collect()).collect()
}

/// The first non-finite value of a tensor, as (flat index, value).
pub fn first_non_finite(t: &ArrayD<f32>) -> Option<(usize, f32)> {
    t.iter().enumerate().find(|(_, v)| !v.is_finite()).map(|(i, v)| (i, *v))
}

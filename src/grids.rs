//! The tutorial's two grids and their arithmetic. Per layer, with
//! p = grad_corrupted * (act_clean - act_corrupted) over [pair, position,
//! feature], heads[l][h] sums p at the last position over the head's slice of
//! features and positions[l][s] sums p over all features; the per-pair sums
//! are computed inside the graph (augment/grid_nodes.rs), the sums over pairs
//! here.

use ndarray::ArrayD;

pub struct Grids {
    /// [layer][head]
    pub heads: Vec<Vec<f64>>,
    /// [layer][position]
    pub positions: Vec<Vec<f64>>,
}

/// One pair's attribution grids: heads [layer][head] at its last position,
/// positions [layer][position].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairGrid {
    pub heads: Vec<Vec<f64>>,
    pub positions: Vec<Vec<f64>>,
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

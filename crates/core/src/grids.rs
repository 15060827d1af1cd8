//! The tutorial's two grids and their arithmetic. Per layer, with
//! p = grad_corrupted * (act_clean - act_corrupted) over [pair, position,
//! feature], heads[l][h] sums p at the last position over the head's slice of
//! features and positions[l][s] sums p over all features; the per-pair sums
//! are computed inside the graph (augment/grid_nodes.rs), the sums over pairs
//! here.

use attrpatch_onnx::error::{Error, Result};
use ndarray::ArrayD;

/// A job's normalised grids (1 = the whole clean-minus-corrupted difference of the metric).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Grids {
    /// `[layer][head]`
    pub heads: Vec<Vec<f64>>,
    /// `[layer][position]`
    pub positions: Vec<Vec<f64>>,
}

/// One pair's attribution grids: heads `[layer][head]` at its last position,
/// positions `[layer][position]`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairGrid {
    /// `[layer][head]` at the pair's last position.
    pub heads: Vec<Vec<f64>>,
    /// `[layer][position]`.
    pub positions: Vec<Vec<f64>>,
}

/// Adds `b` into `a`, element by element; an empty `a` takes `b`'s shape.
/// Grids of different shapes come from different jobs (another model, hook
/// set or prompt length): adding them would silently mix numbers, so they
/// are refused, naming `what` is being added.
pub fn add_into(a: &mut Vec<Vec<f64>>, b: &[Vec<f64>], what: &str) -> Result<()> {
    if a.is_empty() {
        *a = b.to_vec();
        return Ok(());
    }
    if shape(a) != shape(b) {
        return Err(Error::Input(format!(
            "{what}: grids of different shapes cannot be added: {} and {}",
            describe(a),
            describe(b)
        )));
    }
    for (ra, rb) in a.iter_mut().zip(b) {
        for (x, y) in ra.iter_mut().zip(rb) {
            *x += y;
        }
    }
    Ok(())
}

fn shape(g: &[Vec<f64>]) -> Vec<usize> {
    g.iter().map(|r| r.len()).collect()
}

/// "3 rows x 4" or, for ragged grids, the row lengths.
fn describe(g: &[Vec<f64>]) -> String {
    let s = shape(g);
    match s.first() {
        Some(&w) if s.iter().all(|&l| l == w) => format!("{} rows x {w}", s.len()),
        _ => format!("rows of lengths {s:?}"),
    }
}

/// Every value of `a` times `k`.
pub fn scaled(a: &[Vec<f64>], k: f64) -> Vec<Vec<f64>> {
    a.iter().map(|r| r.iter().map(|v| v * k).collect()).collect()
}

/// The first non-finite value of a tensor, as (flat index, value).
pub fn first_non_finite(t: &ArrayD<f32>) -> Option<(usize, f32)> {
    t.iter().enumerate().find(|(_, v)| !v.is_finite()).map(|(i, v)| (i, *v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_into_sums_equal_shapes() {
        let mut a = vec![];
        add_into(&mut a, &[vec![1.0, 2.0], vec![3.0, 4.0]], "t").unwrap();
        add_into(&mut a, &[vec![10.0, 20.0], vec![30.0, 40.0]], "t").unwrap();
        assert_eq!(a, vec![vec![11.0, 22.0], vec![33.0, 44.0]]);
    }

    /// The bug: zip truncated a 3-layer grid added into a 2-layer one (and a
    /// 5-wide row into a 4-wide one), so mixed jobs summed without a word.
    #[test]
    fn regression_add_into_truncated_grids_of_different_shapes() {
        let mut a = vec![vec![1.0; 4]; 2];
        let e = add_into(&mut a, &vec![vec![1.0; 4]; 3], "batch 1 heads").unwrap_err().to_string();
        assert!(e.contains("batch 1 heads") && e.contains("2 rows x 4") && e.contains("3 rows x 4"), "{e}");
        let e = add_into(&mut a, &[vec![1.0; 4], vec![1.0; 5]], "positions").unwrap_err().to_string();
        assert!(e.contains("rows of lengths [4, 5]"), "{e}");
        assert_eq!(a, vec![vec![1.0; 4]; 2], "a refused sum leaves the grid as it was");
    }
}

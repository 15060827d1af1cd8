//! Recall of exact patching's top nodes against the nodes verified, as in the
//! AtP* paper's recall figures (Kramár et al. 2024, arXiv 2403.00745): an
//! estimate orders the nodes (grid cells) by |estimate|, largest first, and
//! one verifies them by exact patching in that order. After x nodes verified,
//! the recall of the top k is the fraction of the k nodes of largest |exact
//! effect| among those x. A good estimate reaches recall 1 after few nodes;
//! the cost of full recall is the x where it first does (k at best, every
//! node at worst).
//!
//! Generic over the estimates: `grid_recall` takes any list of (key, label,
//! grid) beside the exact grid, so a new estimator is one more entry.
//!
//! Ties: both orders are stable, cells of equal magnitude keep grid order
//! (layer, then head or position). A k larger than the number of cells with a
//! nonzero exact effect is left out: its top k would be partly arbitrary zeros.

use serde::Serialize;

/// The fixed k of the default set; 10% of the nodes (rounded up) is added by `default_ks`.
pub const FIXED_KS: [usize; 3] = [1, 5, 10];

/// The default k: 1, 5, 10 and 10% of `nodes` (rounded up), increasing, each
/// at most `nonzero` (the cells with a nonzero exact effect), duplicates dropped.
pub fn default_ks(nodes: usize, nonzero: usize) -> Vec<usize> {
    let mut ks: Vec<usize> =
        FIXED_KS.iter().copied().chain([nodes.div_ceil(10)]).filter(|&k| k >= 1 && k <= nonzero).collect();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// Indices of `values` by |value|, largest first; ties (and NaN, last) in index order.
pub fn by_magnitude(values: &[f64]) -> Vec<usize> {
    let mag = |i: usize| if values[i].is_nan() { f64::NEG_INFINITY } else { values[i].abs() };
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| mag(b).total_cmp(&mag(a)));
    order
}

/// One k's recall curve for one estimate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KCurve {
    /// How many of exact patching's largest |effects| are sought.
    pub k: usize,
    /// recall[x - 1]: the fraction of the top k among the first x nodes verified (x = 1 .. nodes).
    pub recall: Vec<f64>,
    /// Nodes verified, in the estimate's order, until all of the top k are found.
    pub full_recall_at: usize,
}

/// One estimate's curves, one per k.
#[derive(Debug, Clone, Serialize)]
pub struct MethodRecall {
    /// The estimate's key in compare.json ("attribution", "ig").
    pub key: String,
    /// Its method's label ("Attribution patching").
    pub label: String,
    /// One curve per k of the grid's `ks`.
    pub curves: Vec<KCurve>,
}

/// The recall curves of every estimate of one grid (heads or positions).
#[derive(Debug, Clone, Serialize)]
pub struct GridRecall {
    /// "heads" or "positions".
    pub grid: String,
    /// Cells of the grid (the x axis runs 1 ..= nodes).
    pub nodes: usize,
    /// The k of the curves (`default_ks`).
    pub ks: Vec<usize>,
    /// Each estimate's curves.
    pub methods: Vec<MethodRecall>,
}

/// The recall curve of the `truth` nodes when verifying in `order` (both cell indices).
pub fn curve(order: &[usize], truth: &[usize]) -> KCurve {
    let want: std::collections::HashSet<usize> = truth.iter().copied().collect();
    let k = want.len();
    let (mut found, mut full) = (0, order.len());
    let recall = order
        .iter()
        .enumerate()
        .map(|(x, i)| {
            if want.contains(i) {
                found += 1;
                if found == k {
                    full = full.min(x + 1);
                }
            }
            found as f64 / k.max(1) as f64
        })
        .collect();
    KCurve { k, recall, full_recall_at: full }
}

/// The recall curves of each (key, label, grid) estimate against `exact`, for
/// the default k; None when the exact grid is empty or has no nonzero cell.
/// An estimate whose grid has another number of cells is left out.
pub fn grid_recall(grid: &str, exact: &[Vec<f64>], estimates: &[(&str, String, &[Vec<f64>])]) -> Option<GridRecall> {
    let truth_values: Vec<f64> = exact.iter().flatten().copied().collect();
    let nonzero = truth_values.iter().filter(|v| v.abs() > 0.0).count();
    let ks = default_ks(truth_values.len(), nonzero);
    if ks.is_empty() {
        return None;
    }
    let truth_order = by_magnitude(&truth_values);
    let methods = estimates
        .iter()
        .filter_map(|(key, label, g)| {
            let values: Vec<f64> = g.iter().flatten().copied().collect();
            (values.len() == truth_values.len()).then(|| {
                let order = by_magnitude(&values);
                let curves = ks.iter().map(|&k| curve(&order, &truth_order[..k])).collect();
                MethodRecall { key: key.to_string(), label: label.clone(), curves }
            })
        })
        .collect();
    Some(GridRecall { grid: grid.into(), nodes: truth_values.len(), ks, methods })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_the_top_k_found_in_the_estimates_order() {
        // Exact's top 2 are cells 3 and 0; the estimate ranks 1, 3, 2, 0.
        let exact = [vec![0.5, 0.1], vec![-0.05, -0.9]];
        let estimate = [vec![0.01, 0.8], vec![0.3, -0.4]];
        let r = grid_recall("heads", &exact, &[("a", "A".into(), &estimate[..])]).unwrap();
        assert_eq!(r.ks, vec![1], "k = 5 and 10 exceed the 4 cells; 10% of 4 rounds up to 1");
        assert_eq!(r.methods[0].curves[0], KCurve { k: 1, recall: vec![0.0, 1.0, 1.0, 1.0], full_recall_at: 2 });
        let c = curve(&by_magnitude(&[0.01, 0.8, 0.3, -0.4]), &[3, 0]);
        assert_eq!(c.recall, vec![0.0, 0.5, 0.5, 1.0]);
        assert_eq!(c.full_recall_at, 4);
        // A perfect estimate reaches full recall after exactly k nodes.
        let perfect = curve(&by_magnitude(&[0.5, 0.1, -0.05, -0.9]), &[3, 0]);
        assert_eq!((perfect.full_recall_at, perfect.recall[1]), (2, 1.0));
    }

    #[test]
    fn default_ks_are_capped_by_the_nonzero_cells() {
        assert_eq!(default_ks(144, 144), vec![1, 5, 10, 15]);
        assert_eq!(default_ks(12, 12), vec![1, 2, 5, 10]);
        assert_eq!(default_ks(42, 7), vec![1, 5]);
        assert_eq!(default_ks(42, 0), Vec::<usize>::new());
        // Ties keep grid order; NaN goes last.
        assert_eq!(by_magnitude(&[0.2, f64::NAN, -0.3, 0.2]), vec![2, 0, 3, 1]);
    }

    #[test]
    fn an_estimate_of_another_shape_is_left_out() {
        let exact = [vec![1.0, 2.0]];
        let wrong = [vec![1.0, 2.0, 3.0]];
        let r = grid_recall("heads", &exact, &[("x", "X".into(), &wrong[..])]).unwrap();
        assert!(r.methods.is_empty());
        assert!(grid_recall("heads", &[vec![0.0, 0.0]], &[]).is_none());
    }
}

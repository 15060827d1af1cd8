//! Which rows a patching run feeds: per pair, one unpatched row (the
//! corrupted baseline) and one row per patch, cut into calls of at most
//! `rows_per_call` rows; and the mask inputs that say what each row patches.

use ndarray::Array4;

/// One unit a subset row patches: (the hook's layer, the head).
pub type Unit = (usize, usize);

/// What one row does to the corrupted run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Patch {
    /// Nothing: the corrupted run itself.
    Baseline,
    /// The clean value of one unit (head) of one layer at the pair's last position.
    Head {
        /// The hook's layer.
        layer: usize,
        /// The head (unit) within the layer.
        unit: usize,
    },
    /// The clean value of a whole layer's hook at one position.
    Position {
        /// The hook's layer.
        layer: usize,
        /// The position patched.
        position: usize,
    },
    /// The whole layer's hook moved `alpha` of the way to its clean value.
    Interpolate {
        /// The hook's layer.
        layer: usize,
        /// How far to move it: 0 leaves the corrupted value, 1 is the clean one.
        alpha: f32,
    },
    /// The clean values of every unit of subset `subset` at once, each at the
    /// pair's last position (the subsets are listed beside the rows; see `mask`).
    Subset {
        /// Index into the subsets listed beside the rows.
        subset: usize,
    },
}

/// One row of a patching run: the pair whose corrupted prompt it runs, and what it patches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Index of the pair among the run's pairs.
    pub pair: usize,
    /// What the row patches.
    pub patch: Patch,
}

/// Which patches to run for every pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// Exact activation patching: per layer, one row per head at the last position and/or one per real position.
    Exact {
        /// One row per head (unit) of every layer, at the pair's last position.
        heads: bool,
        /// One row per real position of every layer, the whole hook patched there.
        positions: bool,
    },
    /// Integrated gradients: per layer, `steps` rows moving the whole hook part of the way to its clean value.
    IntegratedGradients {
        /// Points per layer, at the midpoints (k + 0.5) / steps.
        steps: usize,
    },
    /// One row per subset, `count` subsets (each patched jointly).
    Subsets {
        /// Number of subsets, one row per pair each.
        count: usize,
    },
}

impl Plan {
    /// The rows for pairs of the given real lengths, pair by pair, each pair's baseline first.
    /// Position patches beyond a pair's length are not run: their effect is zero (causal models).
    pub fn rows(&self, layers: &[usize], units: usize, lengths: &[usize]) -> Vec<Row> {
        let mut rows = vec![];
        for (pair, &len) in lengths.iter().enumerate() {
            rows.push(Row { pair, patch: Patch::Baseline });
            let mut add = |patch| rows.push(Row { pair, patch });
            match *self {
                Plan::Exact { heads, positions } => {
                    for &layer in layers {
                        if heads {
                            (0..units).for_each(|unit| add(Patch::Head { layer, unit }));
                        }
                        if positions {
                            (0..len).for_each(|position| add(Patch::Position { layer, position }));
                        }
                    }
                }
                Plan::IntegratedGradients { steps } => {
                    for &layer in layers {
                        // Midpoints: exact for a metric quadratic in the activation.
                        (0..steps)
                            .for_each(|k| add(Patch::Interpolate { layer, alpha: (k as f32 + 0.5) / steps as f32 }));
                    }
                }
                Plan::Subsets { count } => (0..count).for_each(|subset| add(Patch::Subset { subset })),
            }
        }
        rows
    }
}

/// The mask input of `layer` for these rows: [R, S, units, 1]; `lengths[pair]`
/// places each pair's last position. `subsets[i]` lists the units a
/// `Patch::Subset { subset: i }` row patches (empty for plans without subsets).
pub fn mask(
    rows: &[Row],
    layer: usize,
    seq: usize,
    units: usize,
    lengths: &[usize],
    subsets: &[Vec<Unit>],
) -> Array4<f32> {
    let mut m = Array4::<f32>::zeros((rows.len(), seq, units, 1));
    for (r, row) in rows.iter().enumerate() {
        match row.patch {
            Patch::Head { layer: l, unit } if l == layer => m[[r, lengths[row.pair] - 1, unit, 0]] = 1.0,
            Patch::Position { layer: l, position } if l == layer => {
                for u in 0..units {
                    m[[r, position, u, 0]] = 1.0;
                }
            }
            Patch::Interpolate { layer: l, alpha } if l == layer => m.slice_mut(ndarray::s![r, .., .., ..]).fill(alpha),
            Patch::Subset { subset } => {
                for &(_, unit) in subsets[subset].iter().filter(|(l, _)| *l == layer) {
                    m[[r, lengths[row.pair] - 1, unit, 0]] = 1.0;
                }
            }
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_rows_cover_every_head_and_real_position_once() {
        let rows = Plan::Exact { heads: true, positions: true }.rows(&[0, 1], 3, &[2, 4]);
        // Per pair: baseline + 2 layers x (3 heads + len positions).
        assert_eq!(rows.len(), (1 + 2 * (3 + 2)) + (1 + 2 * (3 + 4)));
        assert_eq!(rows[0], Row { pair: 0, patch: Patch::Baseline });
        assert!(rows
            .iter()
            .all(|r| !matches!(r.patch, Patch::Position { position, .. } if position >= [2, 4][r.pair])));
        let heads_of_pair1 = rows.iter().filter(|r| r.pair == 1 && matches!(r.patch, Patch::Head { .. })).count();
        assert_eq!(heads_of_pair1, 6);
    }

    #[test]
    fn masks_select_the_patched_cells_only() {
        let lengths = [3, 2];
        let rows = [
            Row { pair: 0, patch: Patch::Head { layer: 1, unit: 2 } },
            Row { pair: 1, patch: Patch::Head { layer: 1, unit: 0 } },
            Row { pair: 1, patch: Patch::Position { layer: 0, position: 1 } },
            Row { pair: 0, patch: Patch::Interpolate { layer: 1, alpha: 0.25 } },
            Row { pair: 0, patch: Patch::Baseline },
        ];
        let m1 = mask(&rows, 1, 4, 3, &lengths, &[]);
        assert_eq!(m1[[0, 2, 2, 0]], 1.0);
        assert_eq!(m1[[1, 1, 0, 0]], 1.0);
        assert!(m1.slice(ndarray::s![3, .., .., ..]).iter().all(|&v| v == 0.25));
        assert_eq!(m1.iter().filter(|&&v| v == 1.0).count(), 2);
        assert!(m1.slice(ndarray::s![2, .., .., ..]).iter().all(|&v| v == 0.0));
        let m0 = mask(&rows, 0, 4, 3, &lengths, &[]);
        assert_eq!(m0.sum(), 3.0);
        assert!((0..3).all(|u| m0[[2, 1, u, 0]] == 1.0));
    }

    /// A subset row sets ones at each of its units of this layer, at the pair's
    /// last position, and nothing for its units of other layers.
    #[test]
    fn a_subset_row_patches_all_its_units_of_the_layer_at_the_last_position() {
        let subsets = vec![vec![(0, 1), (2, 0), (2, 2)], vec![(2, 1)]];
        let rows = Plan::Subsets { count: 2 }.rows(&[0, 2], 3, &[4, 3]);
        assert_eq!(rows.len(), 2 * 3, "per pair: the baseline and one row per subset");
        assert_eq!(rows[2], Row { pair: 0, patch: Patch::Subset { subset: 1 } });
        let m2 = mask(&rows, 2, 5, 3, &[4, 3], &subsets);
        let ones: Vec<[usize; 3]> =
            m2.indexed_iter().filter(|(_, &v)| v == 1.0).map(|((r, s, u, _), _)| [r, s, u]).collect();
        // Rows: 0 baseline, 1 subset 0, 2 subset 1 (pair 0, last position 3); 3, 4, 5 the same for pair 1 (2).
        assert_eq!(ones, vec![[1, 3, 0], [1, 3, 2], [2, 3, 1], [4, 2, 0], [4, 2, 2], [5, 2, 1]]);
        let m0 = mask(&rows, 0, 5, 3, &[4, 3], &subsets);
        assert_eq!(m0.sum(), 2.0);
        assert_eq!((m0[[1, 3, 1, 0]], m0[[4, 2, 1, 0]]), (1.0, 1.0));
    }

    #[test]
    fn ig_steps_are_midpoints() {
        let rows = Plan::IntegratedGradients { steps: 4 }.rows(&[5], 1, &[3]);
        let alphas: Vec<f32> = rows
            .iter()
            .filter_map(|r| if let Patch::Interpolate { alpha, .. } = r.patch { Some(alpha) } else { None })
            .collect();
        assert_eq!(alphas, vec![0.125, 0.375, 0.625, 0.875]);
    }
}

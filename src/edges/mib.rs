//! MIB's circuit metrics (Mueller et al. 2025, `hannamw/MIB-circuit-track`):
//! faithfulness at MIB's circuit sizes and its two summaries, CPR and CMD.
//!
//! As `MIB_circuit_track/evaluation.py`, `evaluate_area_under_curve`, computes
//! them: circuit sizes are the fractions p = .001, .002, .005, .01, .02, .05,
//! .1, .2, .5, 1 of the edges, K = int(p * edges) (truncated); f(p) =
//! (m(C) - m(empty)) / (m(N) - m(empty)), not clipped; the x axis is p itself
//! (linear, `log_scale=False` as `run_evaluation.py` calls it), and the areas
//! are trapezoids between consecutive grid points, from p = .001 to 1 (no
//! point at p = 0):
//!   CPR = sum_i (p_{i+1} - p_i) (f_i + f_{i+1}) / 2          (higher is better)
//!   CMD = sum_i (p_{i+1} - p_i) (|1 - f_i| + |1 - f_{i+1}|) / 2 (lower is better)

use serde::{Deserialize, Serialize};

/// MIB's circuit sizes, as fractions of the edges (`evaluation.py`, `percentages`).
pub const FRACTIONS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// The K of each of MIB's sizes for a model of `edges` edges: `int(p * edges)`,
/// Python's truncation of the same double product.
pub fn ks(edges: usize) -> Vec<usize> {
    FRACTIONS.iter().map(|&p| (p * edges as f64) as usize).collect()
}

/// (CPR, CMD) of the curve `f` over the fractions `x` (ascending), by the
/// trapezoid rule between consecutive points, as `evaluate_area_under_curve`
/// does with `log_scale=False`. Fewer than two points give zero areas.
pub fn areas(x: &[f64], f: &[f64]) -> (f64, f64) {
    let (mut cpr, mut cmd) = (0.0, 0.0);
    for i in 0..x.len().min(f.len()).saturating_sub(1) {
        let dx = x[i + 1] - x[i];
        cpr += dx * (f[i] + f[i + 1]) / 2.0;
        cmd += dx * ((1.0 - f[i]).abs() + (1.0 - f[i + 1]).abs()) / 2.0;
    }
    (cpr, cmd)
}

/// The faithfulness curve at MIB's sizes and its areas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MibCurve {
    /// The sizes in percent of the edges: 0.1, 0.2, 0.5, ..., 100.
    pub k_percent: Vec<f64>,
    /// The edges in each circuit: int(fraction x edges).
    pub k: Vec<usize>,
    /// Faithfulness of each circuit (not clipped).
    pub f: Vec<f64>,
    /// Circuit performance ratio: area under f over the fraction axis.
    pub cpr: f64,
    /// Circuit-model distance: area under |1 - f| over the fraction axis.
    pub cmd: f64,
}

impl MibCurve {
    /// The curve from `value(K)`, the faithfulness of the top-K circuit, for
    /// a model of `edges` edges; `None` when `value` lacks one of MIB's K.
    pub fn from_points(edges: usize, value: impl Fn(usize) -> Option<f64>) -> Option<Self> {
        let k = ks(edges);
        let f = k.iter().map(|&k| value(k)).collect::<Option<Vec<f64>>>()?;
        let (cpr, cmd) = areas(&FRACTIONS, &f);
        // Percent printed as MIB prints `pct*100`, rounded off its float noise.
        let k_percent = FRACTIONS.iter().map(|p| (p * 1000.0).round() / 10.0).collect();
        Some(MibCurve { k_percent, k, f, cpr, cmd })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_k_grid_truncates_as_python_int_does() {
        assert_eq!(ks(110), vec![0, 0, 0, 1, 2, 5, 11, 22, 55, 110]);
        assert_eq!(ks(32491), vec![32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]);
        assert_eq!(ks(0), vec![0; 10]);
    }

    /// A hand-made curve: f = 0 up to p = .1, 1 from p = .2 on. By hand, with
    /// trapezoids: CPR = (.2 - .1)(0 + 1)/2 + (.5 - .2) + (1 - .5) = .85; CMD =
    /// (.1 - .001) x 1 + (.2 - .1)/2 = .149.
    #[test]
    fn areas_are_mibs_trapezoids_on_a_hand_made_curve() {
        let f = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let (cpr, cmd) = areas(&FRACTIONS, &f);
        assert!((cpr - 0.85).abs() < 1e-12, "CPR {cpr}");
        assert!((cmd - 0.149).abs() < 1e-12, "CMD {cmd}");
        // Not clipped: f = 2 everywhere is CPR 2 x .999 and CMD .999.
        let (cpr, cmd) = areas(&FRACTIONS, &[2.0; 10]);
        assert!((cpr - 1.998).abs() < 1e-12 && (cmd - 0.999).abs() < 1e-12, "{cpr} {cmd}");
        assert_eq!(areas(&[0.5], &[1.0]), (0.0, 0.0));
    }

    #[test]
    fn the_curve_needs_every_k() {
        let c = MibCurve::from_points(110, |k| Some(k as f64 / 110.0)).unwrap();
        assert_eq!(c.k_percent, vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(c.f[9], 1.0);
        assert!(MibCurve::from_points(110, |k| (k != 22).then_some(0.5)).is_none());
    }
}

//! Circuits and their faithfulness (MIB-style circuit-performance curves).
//!
//! A circuit is the K edges of largest |score| (ties: the earlier edge in
//! `Topology::edges` order). Its faithfulness is measured by exact edge
//! patching on the clean prompts: every edge outside the circuit carries its
//! writer's corrupted value into its reader, every edge inside carries the
//! patched run's own value. Nodes are never removed: a reader left without
//! circuit edges reads the corrupted residual (every writer's corrupted value,
//! so its own output is computed from corrupted inputs), and a writer left
//! without circuit edges reaches no reader with its own value (it is patched
//! to its corrupted output everywhere). The result is the fraction of the
//! clean-corrupted metric gap the circuit restores,
//!   (M_circuit - M_corr) / (M_clean - M_corr),
//! summed over the pairs before dividing, as `run` normalises: K = 0 gives 0
//! and K = all edges 1, up to float error. Every K of a sweep is a variant of
//! one patching job: rows of as few runtime calls as memory allows.
//!
//! With an ablation (zero, mean, mean-positional: the scores' own) the edges
//! outside the circuit carry the ablated value instead, and the curve is
//! normalised by the empty circuit (every edge ablated) as MIB's is:
//!   (M_circuit - M_empty) / (M_clean - M_empty),
//! so K = 0 is 0 and K = all 1 again. With patching M_empty is M_corr.

use super::convention::Ablation;
use super::mib::{self, MibCurve};
use super::patching::{patch_edges_with, Direction, Intervention};
use super::scores::EdgeScores;
use crate::job::JobOptions;
use attrpatch_onnx::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// The indices (into `scores.edges`) of the `k` edges of largest |score|.
pub fn circuit(scores: &EdgeScores, k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.edges.len()).collect();
    // Stable: equal |score| keeps edge order.
    order.sort_by(|&a, &b| scores.edges[b].score.abs().total_cmp(&scores.edges[a].score.abs()));
    order.truncate(k);
    order.sort();
    order
}

/// How many edges have |score| >= `threshold`: the K of `circuit` it picks.
pub fn k_for_threshold(scores: &EdgeScores, threshold: f64) -> Result<usize> {
    check_threshold(threshold)?;
    Ok(scores.edges.iter().filter(|e| e.score.abs() >= threshold).count())
}

/// A threshold must be a finite |score| of at least 0.
pub fn check_threshold(threshold: f64) -> Result<()> {
    if !threshold.is_finite() || threshold < 0.0 {
        return Err(Error::Input(format!("--threshold {threshold}: expected a finite |score| of at least 0")));
    }
    Ok(())
}

/// The sweep's K: 0, the powers of two below `edges`, `edges`, MIB's sizes
/// (`mib::ks`: 0.1% .. 100% of the edges) and `extra` (e.g. the --top-k
/// circuit), sorted without repeats.
pub fn sweep(edges: usize, extra: &[usize]) -> Vec<usize> {
    let mut ks = vec![0, edges];
    ks.extend(mib::ks(edges));
    ks.extend(std::iter::successors(Some(1usize), |k| k.checked_mul(2)).take_while(|&k| k < edges));
    ks.extend(extra.iter().copied());
    ks.sort();
    ks.dedup();
    ks
}

/// One point of the curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Edges in the circuit.
    pub k: usize,
    /// Fraction of the clean-corrupted gap restored.
    pub faithfulness: f64,
}

/// A faithfulness sweep and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Faithfulness {
    /// The scores the circuits were picked by (`Method::label`, or the file's).
    pub method: String,
    /// The metric, as `run` names it.
    pub metric: String,
    /// Edges in the model.
    pub edges: usize,
    /// Mean clean and corrupted metric over the pairs.
    pub clean: f64,
    /// Mean corrupted metric.
    pub corrupted: f64,
    /// The curve, by K.
    pub points: Vec<Point>,
    /// Patched rows run (pairs x (K values below all + 1 baseline)).
    pub rows: usize,
    /// Rows per runtime call.
    pub rows_per_call: usize,
    /// Runtime calls.
    pub runtime_calls: usize,
    /// Seconds in runtime calls.
    pub run_seconds: f64,
    /// What the edges outside a circuit carry: "patching" (their corrupted value),
    /// "zero", "mean", "mean-positional".
    #[serde(default = "patching")]
    pub ablation: String,
    /// The curve at MIB's sizes with CPR and CMD, when the sweep's K include
    /// MIB's (`mib::ks`; `sweep` adds them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mib: Option<MibCurve>,
}

impl Faithfulness {
    /// The curve as (K, faithfulness), as the figure takes it.
    pub fn curve(&self) -> Vec<(usize, f64)> {
        self.points.iter().map(|p| (p.k, p.faithfulness)).collect()
    }
}

fn patching() -> String {
    "patching".into()
}

/// The faithfulness of the top-K circuit for every K of `ks`.
pub fn faithfulness(
    opts: &JobOptions,
    scores: &EdgeScores,
    ks: &[usize],
    rows_per_call: Option<usize>,
) -> Result<Faithfulness> {
    faithfulness_with(opts, scores, ks, rows_per_call, Intervention::PATCHING)
}

/// `faithfulness` with the edges outside each circuit carrying what `carried` says (module doc).
pub fn faithfulness_with(
    opts: &JobOptions,
    scores: &EdgeScores,
    ks: &[usize],
    rows_per_call: Option<usize>,
    carried: Intervention,
) -> Result<Faithfulness> {
    let total = scores.edges.len();
    let ablated = carried.ablation != Ablation::Patching;
    if let Some(&bad) = ks.iter().find(|&&k| k > total) {
        return Err(Error::Input(format!("a circuit of {bad} edges: the model has {total} edges")));
    }
    // A circuit of every edge patches nothing: its row would repeat the clean
    // baseline row, whose normalised metric is 1 by definition. Run only the
    // others (unless no other is asked for: the baselines still need a call).
    let mut runs: Vec<usize> = ks.iter().copied().filter(|&k| k < total).collect();
    if runs.is_empty() {
        runs = ks.to_vec();
    }
    // An ablation's 0 is the empty circuit: run it when it was not asked for.
    if ablated && !runs.contains(&0) {
        runs.push(0);
    }
    let r = patch_edges_with(opts, Direction::CorruptedIntoClean, rows_per_call, carried, |topo| {
        if topo.edges().len() != total {
            return Err(Error::Input(format!(
                "the edge scores list {total} edges, the model has {} (scores of another model?)",
                topo.edges().len()
            )));
        }
        // Outside the circuit: patched to the corrupted value.
        Ok(runs
            .iter()
            .map(|&k| {
                let mut inside = vec![false; total];
                circuit(scores, k).into_iter().for_each(|e| inside[e] = true);
                (0..total).filter(|&e| !inside[e]).collect()
            })
            .collect())
    })?;
    let raw = |k: usize| match runs.iter().position(|&r| r == k) {
        Some(i) => r.normalised[i],
        None => 1.0,
    };
    let empty = if ablated { raw(0) } else { 0.0 };
    if ablated && crate::batches::indistinguishable(empty, 1.0) {
        return Err(Error::Numeric(format!(
            "--ablation {}: the empty circuit's metric equals the clean run's ({empty} of the clean-corrupted gap), \
             so the faithfulness (M - M_empty) / (M_clean - M_empty) is undefined; use another --ablation",
            carried.ablation.label()
        )));
    }
    let value = |k: usize| (raw(k) - empty) / (1.0 - empty);
    let points: Vec<Point> = ks.iter().map(|&k| Point { k, faithfulness: value(k) }).collect();
    let mib = MibCurve::from_points(total, |k| points.iter().find(|p| p.k == k).map(|p| p.faithfulness));
    Ok(Faithfulness {
        method: scores.method.clone(),
        metric: scores.metric.clone(),
        edges: total,
        clean: r.clean,
        corrupted: r.corrupted,
        points,
        rows: r.rows,
        rows_per_call: r.sizing.per_call,
        runtime_calls: r.runtime_calls,
        run_seconds: r.run_seconds,
        ablation: carried.ablation.label().to_string(),
        mib,
    })
}

/// `faithfulness.csv`: header `k,faithfulness`, one line per K.
pub fn csv_text(f: &Faithfulness) -> String {
    let mut out = String::from("k,faithfulness\n");
    for p in &f.points {
        let _ = writeln!(out, "{},{}", p.k, p.faithfulness);
    }
    out
}

/// Writes `faithfulness.json` and `faithfulness.csv` into `dir`, atomically.
pub fn write(dir: &Path, f: &Faithfulness) -> Result<()> {
    let json = serde_json::to_vec_pretty(f).map_err(|e| Error::Input(format!("faithfulness: {e}")))?;
    attrpatch_onnx::fsutil::write_atomic(&dir.join("faithfulness.json"), &json)?;
    attrpatch_onnx::fsutil::write_atomic(&dir.join("faithfulness.csv"), csv_text(f).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edges::EdgeScore;

    fn scores(values: &[f64]) -> EdgeScores {
        EdgeScores {
            method: "EAP".into(),
            ig_steps: 1,
            convention: "denoising".into(),
            ablation: "patching".into(),
            metric: "logit diff".into(),
            layers: 1,
            heads: 1,
            kv_heads: 1,
            parallel: false,
            edges: values
                .iter()
                .enumerate()
                .map(|(i, &s)| EdgeScore { from: format!("w{i}"), to: "logits".into(), score: s })
                .collect(),
            nodes: vec![],
        }
    }

    #[test]
    fn circuits_take_the_largest_magnitudes_ties_in_edge_order() {
        let s = scores(&[0.1, -0.5, 0.3, 0.5, 0.0]);
        assert_eq!(circuit(&s, 0), Vec::<usize>::new());
        assert_eq!(circuit(&s, 2), vec![1, 3]);
        assert_eq!(circuit(&s, 3), vec![1, 2, 3]);
        assert_eq!(circuit(&s, 9), vec![0, 1, 2, 3, 4]);
        assert_eq!(k_for_threshold(&s, 0.3).unwrap(), 3);
        assert!(k_for_threshold(&s, -1.0).is_err());
    }

    #[test]
    fn the_sweep_has_zero_powers_of_two_and_all() {
        // MIB's sizes of 10 edges: 0, 0, 0, 0, 0, 0, 1, 2, 5, 10.
        assert_eq!(sweep(10, &[]), vec![0, 1, 2, 4, 5, 8, 10]);
        assert_eq!(sweep(8, &[3, 8]), vec![0, 1, 2, 3, 4, 8]);
        assert_eq!(sweep(0, &[]), vec![0]);
    }
}

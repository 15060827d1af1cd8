//! `compare --edges`: EAP (and EAP-IG) against exact edge patching. Each
//! edge's exact effect is the corrupted run with that one edge carrying its
//! clean writer's value (every other reader input unchanged), the change of
//! the metric summed over pairs and normalised as `run`'s; all edges are rows
//! of one patching job. Agreement is reported as `compare` reports it for
//! nodes: Pearson, Spearman, errors and the largest misses, by edge name.

use super::patching::{patch_edges, Direction};
use super::run::run_edges;
use super::scores::{node_scores, EdgeScore, EdgeScores};
use crate::compare::{fmt_corr, pearson, ranks, MISSES};
use crate::job::JobOptions;
use attrpatch_onnx::error::{Error, Result};
use serde::Serialize;

/// One edge's estimate beside its exact effect.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeMiss {
    /// "a0.h1 -> a1.h2.q".
    pub edge: String,
    /// The estimated score.
    pub estimate: f64,
    /// The exact effect.
    pub exact: f64,
}

/// How well one estimator's edge scores match the exact effects.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeAgreement {
    /// The method (`Method::label`).
    pub method: String,
    /// Integration steps (1 = EAP).
    pub ig_steps: usize,
    /// None when either side is constant.
    pub pearson: Option<f64>,
    /// Rank correlation.
    pub spearman: Option<f64>,
    /// Mean |estimate - exact|.
    pub mean_abs_error: f64,
    /// Largest |estimate - exact|.
    pub max_abs_error: f64,
    /// The edges with the largest |estimate - exact|, largest first.
    pub largest_misses: Vec<EdgeMiss>,
    /// Seconds the estimate took (its runtime calls).
    pub run_seconds: f64,
}

/// The exact effects and each estimate's agreement with them.
pub struct EdgeComparison {
    /// Exact edge patching's effects, as an edge table.
    pub exact: EdgeScores,
    /// The estimates' tables, EAP first.
    pub estimates: Vec<EdgeScores>,
    /// Agreement of each estimate, same order.
    pub agreements: Vec<EdgeAgreement>,
    /// Rows exact patching ran, its runtime calls and seconds.
    pub exact_rows: usize,
    /// Runtime calls of exact patching.
    pub exact_calls: usize,
    /// Seconds in exact patching's runtime calls.
    pub exact_seconds: f64,
}

/// Agreement of `estimate` with `exact` (same edges, same order).
pub fn agreement(estimate: &EdgeScores, exact: &EdgeScores, run_seconds: f64) -> EdgeAgreement {
    let xs: Vec<f64> = estimate.edges.iter().map(|e| e.score).collect();
    let ys: Vec<f64> = exact.edges.iter().map(|e| e.score).collect();
    let errors: Vec<f64> = xs.iter().zip(&ys).map(|(a, b)| (a - b).abs()).collect();
    let mut order: Vec<usize> = (0..errors.len()).collect();
    order.sort_by(|&a, &b| errors[b].total_cmp(&errors[a]));
    EdgeAgreement {
        method: estimate.method.clone(),
        ig_steps: estimate.ig_steps,
        pearson: pearson(&xs, &ys),
        spearman: pearson(&ranks(&xs), &ranks(&ys)),
        mean_abs_error: errors.iter().sum::<f64>() / errors.len().max(1) as f64,
        max_abs_error: errors.iter().copied().fold(0.0, f64::max),
        largest_misses: order
            .iter()
            .take(MISSES)
            .map(|&i| EdgeMiss {
                edge: format!("{} -> {}", exact.edges[i].from, exact.edges[i].to),
                estimate: xs[i],
                exact: ys[i],
            })
            .collect(),
        run_seconds,
    }
}

/// Every edge's exact effect (one row per edge and pair), as an edge table.
pub fn exact_edges(opts: &JobOptions, rows_per_call: Option<usize>) -> Result<(EdgeScores, usize, usize, f64)> {
    let mut names = vec![];
    let r = patch_edges(opts, Direction::CleanIntoCorrupted, rows_per_call, |topo| {
        names = topo.edges();
        Ok((0..names.len()).map(|e| vec![e]).collect())
    })?;
    let edges: Vec<EdgeScore> = names
        .iter()
        .zip(&r.normalised)
        .map(|((w, rd), &s)| EdgeScore { from: w.to_string(), to: rd.to_string(), score: s })
        .collect();
    let t = r.topology;
    let table = EdgeScores {
        method: "exact edge patching".into(),
        ig_steps: 0,
        convention: "denoising".into(),
        ablation: "patching".into(),
        metric: opts.metric.label().to_string(),
        layers: t.layers,
        heads: t.heads,
        kv_heads: t.kv_heads,
        parallel: t.parallel,
        nodes: node_scores(&edges),
        edges,
    };
    Ok((table, r.rows, r.runtime_calls, r.run_seconds))
}

/// EAP, and EAP-IG with `ig_steps`, against exact edge patching.
pub fn compare_edges(
    opts: &JobOptions,
    ig_steps: Option<usize>,
    rows_per_call: Option<usize>,
) -> Result<EdgeComparison> {
    if ig_steps == Some(0) {
        return Err(Error::Input("--ig-steps must be at least 1".into()));
    }
    let (exact, exact_rows, exact_calls, exact_seconds) = exact_edges(opts, rows_per_call)?;
    let mut estimates = vec![];
    let mut agreements = vec![];
    for n in std::iter::once(1).chain(ig_steps.filter(|&n| n > 1)) {
        let clock = std::time::Instant::now();
        let s = run_edges(opts, n)?;
        let secs = clock.elapsed().as_secs_f64();
        if s.edges.len() != exact.edges.len() {
            return Err(Error::Runtime(format!(
                "{} scored {} edges, exact patching {}",
                s.method,
                s.edges.len(),
                exact.edges.len()
            )));
        }
        agreements.push(agreement(&s, &exact, secs));
        estimates.push(s);
    }
    Ok(EdgeComparison { exact, estimates, agreements, exact_rows, exact_calls, exact_seconds })
}

/// The terminal's table: exact patching's cost, each estimate's agreement and largest misses.
pub fn report(c: &EdgeComparison) -> String {
    let mut lines = vec![
        format!(
            "exact edge patching: {} edges, {} rows in {} runtime calls, {:.2}s",
            c.exact.edges.len(),
            c.exact_rows,
            c.exact_calls,
            c.exact_seconds
        ),
        format!(
            "{:<14} {:>8} {:>9} {:>11} {:>10} {:>8}",
            "estimate", "Pearson", "Spearman", "mean |err|", "max |err|", "time"
        ),
    ];
    for a in &c.agreements {
        lines.push(format!(
            "{:<14} {:>8} {:>9} {:>11.3e} {:>10.3e} {:>7.2}s",
            label(a),
            fmt_corr(a.pearson),
            fmt_corr(a.spearman),
            a.mean_abs_error,
            a.max_abs_error,
            a.run_seconds
        ));
    }
    for a in &c.agreements {
        let misses: Vec<String> =
            a.largest_misses.iter().map(|m| format!("{}: {:.4} vs {:.4}", m.edge, m.estimate, m.exact)).collect();
        lines.push(format!("largest misses, {}: {}", label(a), misses.join("; ")));
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// An estimate's name in the report and the scatter plot's legend (its method, and
/// its integration steps when it has them).
pub fn label(a: &EdgeAgreement) -> String {
    if a.ig_steps > 1 {
        format!("{} ({})", a.method, a.ig_steps)
    } else {
        a.method.clone()
    }
}

//! The estimate beside the truth: attribution patching (and integrated
//! gradients, when asked) against exact activation patching, cell by cell.
//! Writes each method's grids in its own folder, the grids side by side on
//! one colour scale, a scatter plot per grid, and the agreement figures
//! (Pearson, Spearman, errors, largest misses) and each estimate's recall of
//! exact patching's top nodes against the nodes verified (recall.rs) in
//! compare.json, with the recall figure.

use crate::job::{run_job, JobOptions, JobResult};
use crate::patch::{self, Estimator};
use crate::recall::{grid_recall, GridRecall};
use attrpatch_onnx::error::{Error, Result};
use serde::Serialize;

/// How many of the largest misses are listed.
pub const MISSES: usize = 5;

/// One grid cell where an estimate and exact patching differ.
#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    /// The cell's layer (row).
    pub layer: usize,
    /// Head, or position, within the layer.
    pub index: usize,
    /// The estimate's value there.
    pub estimate: f64,
    /// Exact patching's value there.
    pub exact: f64,
}

/// How well one estimated grid matches the exact one.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// None when either grid is constant (no correlation is defined).
    pub pearson: Option<f64>,
    /// Spearman rank correlation; None when either grid is constant.
    pub spearman: Option<f64>,
    /// Mean |estimate - exact| over the cells.
    pub mean_abs_error: f64,
    /// Largest |estimate - exact|.
    pub max_abs_error: f64,
    /// The cells with the largest |estimate - exact|, largest first.
    pub largest_misses: Vec<Miss>,
}

/// How well `estimate` matches `exact`, cell by cell (rows are zipped: cells beyond the shorter row are left out).
pub fn agreement(estimate: &[Vec<f64>], exact: &[Vec<f64>]) -> Agreement {
    let mut cells = vec![];
    for (l, (er, xr)) in estimate.iter().zip(exact).enumerate() {
        for (i, (&e, &x)) in er.iter().zip(xr).enumerate() {
            cells.push(Miss { layer: l, index: i, estimate: e, exact: x });
        }
    }
    let (xs, ys): (Vec<f64>, Vec<f64>) = cells.iter().map(|c| (c.estimate, c.exact)).unzip();
    let errors: Vec<f64> = cells.iter().map(|c| (c.estimate - c.exact).abs()).collect();
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by(|&a, &b| errors[b].total_cmp(&errors[a]));
    Agreement {
        pearson: pearson(&xs, &ys),
        spearman: pearson(&ranks(&xs), &ranks(&ys)),
        mean_abs_error: errors.iter().sum::<f64>() / errors.len().max(1) as f64,
        max_abs_error: errors.iter().copied().fold(0.0, f64::max),
        largest_misses: order.iter().take(MISSES).map(|&i| cells[i].clone()).collect(),
    }
}

/// Pearson's correlation of two series; None when they are shorter than two, differ in length or either is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    if x.len() < 2 || x.len() != y.len() {
        return None;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    let r = sxy / (sxx * syy).sqrt();
    r.is_finite().then_some(r)
}

/// Ranks from 1, ties sharing their average rank (as Spearman's rho needs).
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// What `compare` runs besides exact patching and attribution.
pub struct CompareOptions {
    /// Also patch every position (layer x position grid).
    pub positions: bool,
    /// Integrated gradients with this many steps, when set.
    pub ig_steps: Option<usize>,
    /// None: as many as the memory budget holds (`memory::choose`).
    pub rows_per_call: Option<usize>,
    /// Also AtP* (QK-fix and GradDrop) of the head outputs.
    pub atp_star: bool,
}

/// One estimator's grids and their agreement with the exact ones.
pub struct Estimate {
    /// "attribution" or "ig": the output folder and the JSON key.
    pub key: &'static str,
    /// Its job result.
    pub result: JobResult,
    /// Agreement of its heads grid with the exact one (None when either has none).
    pub heads: Option<Agreement>,
    /// Agreement of its positions grid with the exact one (None without positions).
    pub positions: Option<Agreement>,
}

/// Exact activation patching beside the estimates.
pub struct Comparison {
    /// Exact activation patching's result.
    pub exact: JobResult,
    /// Attribution, and integrated gradients when asked for.
    pub estimates: Vec<Estimate>,
    /// Per grid compared (heads, then positions), every estimate's recall curves.
    pub recall: Vec<GridRecall>,
}

/// Runs exact patching, attribution and (with `ig_steps`) integrated gradients on one job's options.
/// Each estimate is one (key, result) entry of `results`: a new estimator is one
/// more push there, and gets its agreement, recall curves, figures and report
/// sections from `assemble` and `write` with no other change.
pub fn compare(opts: &JobOptions, c: &CompareOptions) -> Result<Comparison> {
    let exact_est = Estimator::Exact { positions: c.positions };
    let exact = patch::run_sized(opts, exact_est, c.rows_per_call)?;
    let mut results =
        vec![("attribution", run_job(opts)?.ok_or_else(|| Error::Input("compare does not run shards".into()))?)];
    if let Some(steps) = c.ig_steps {
        let ig = Estimator::IntegratedGradients { steps };
        results.push(("ig", patch::run_sized(opts, ig, c.rows_per_call)?));
    }
    if c.atp_star {
        results.push(("atp-star", crate::atp_star::run_atp_star(opts, true)?.result));
    }
    Ok(assemble(exact, results))
}

/// The exact grids beside each estimate's (keyed "attribution" or "ig"), with their agreement.
pub fn assemble(exact: JobResult, results: Vec<(&'static str, JobResult)>) -> Comparison {
    let has = |g: &[Vec<f64>]| !g.is_empty();
    let estimates: Vec<Estimate> = results
        .into_iter()
        .map(|(key, result)| {
            // Magnitudes (AtP*'s GradDrop) are held to exact patching's magnitudes.
            let truth = |g: &Vec<Vec<f64>>| match result.manifest.method.magnitudes() {
                true => g.iter().map(|r| r.iter().map(|v| v.abs()).collect()).collect(),
                false => g.clone(),
            };
            let heads = (has(&exact.grids.heads) && has(&result.grids.heads))
                .then(|| agreement(&result.grids.heads, &truth(&exact.grids.heads)));
            let positions =
                has(&exact.grids.positions).then(|| agreement(&result.grids.positions, &truth(&exact.grids.positions)));
            Estimate { key, result, heads, positions }
        })
        .collect();
    let recall = recall_of(&exact, &estimates);
    Comparison { exact, estimates, recall }
}

/// Every estimate's recall curves on each grid it was compared on (heads, then positions).
fn recall_of(exact: &JobResult, estimates: &[Estimate]) -> Vec<GridRecall> {
    type Of = fn(&Estimate) -> bool;
    type GridOf = fn(&JobResult) -> &Vec<Vec<f64>>;
    let kinds: [(&str, Of, GridOf); 2] = [
        ("heads", |e| e.heads.is_some(), |r| &r.grids.heads),
        ("positions", |e| e.positions.is_some(), |r| &r.grids.positions),
    ];
    kinds
        .into_iter()
        .filter_map(|(name, compared, grid_of)| {
            let list: Vec<(&str, String, &[Vec<f64>])> = estimates
                .iter()
                .filter(|e| compared(e))
                .map(|e| (e.key, e.result.manifest.method.label(), &grid_of(&e.result)[..]))
                .collect();
            if list.is_empty() {
                return None;
            }
            grid_recall(name, grid_of(exact), &list)
        })
        .collect()
}

/// How much closer integrated gradients get to the exact grid than plain
/// attribution: (grid, attribution's mean |error| / IG's, Pearson before, after).
pub fn ig_gain(c: &Comparison) -> Vec<(&'static str, f64, Option<f64>, Option<f64>)> {
    let find = |k: &str| c.estimates.iter().find(|e| e.key == k);
    let (Some(plain), Some(ig)) = (find("attribution"), find("ig")) else { return vec![] };
    [("heads", &plain.heads, &ig.heads), ("positions", &plain.positions, &ig.positions)]
        .into_iter()
        .filter_map(|(grid, a, b)| Some((grid, a.as_ref()?, b.as_ref()?)))
        .map(|(grid, a, b)| (grid, a.mean_abs_error / b.mean_abs_error, a.pearson, b.pearson))
        .collect()
}

/// The contents of compare.json: each estimate's method, agreement per grid and cost, exact patching's cost, the recall
/// and IG's gain over attribution.
pub fn summary_json(c: &Comparison) -> serde_json::Value {
    let mut estimates = serde_json::Map::new();
    for e in &c.estimates {
        estimates.insert(
            e.key.into(),
            serde_json::json!({
                "method": e.result.manifest.method,
                "heads": e.heads,
                "positions": e.positions,
                "seconds": e.result.seconds,
                "runtime_calls": e.result.runtime_calls,
            }),
        );
    }
    serde_json::json!({
        "model": c.exact.manifest.model,
        "metric": c.exact.manifest.metric,
        "n_pairs": c.exact.manifest.prompts.len(),
        "exact": { "seconds": c.exact.seconds, "runtime_calls": c.exact.runtime_calls },
        "estimates": estimates,
        "recall": c.recall,
        "ig_vs_attribution": ig_gain(c)
            .iter()
            .map(|(grid, ratio, before, after)| (grid.to_string(), serde_json::json!({
                "mean_abs_error_ratio": ratio, "pearson_attribution": before, "pearson_ig": after,
            })))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// The terminal's table: exact patching's cost, each estimate's agreement
/// with it per grid, the largest misses, and IG's gain over attribution.
pub fn report(c: &Comparison) -> String {
    let secs = |r: &JobResult| r.seconds.load + r.seconds.rewrite + r.seconds.session + r.seconds.run;
    let mut lines = vec![
        format!("exact activation patching: {} runtime calls, {:.2}s", c.exact.runtime_calls, secs(&c.exact)),
        format!(
            "{:<10} {:<31} {:>8} {:>9} {:>11} {:>10} {:>8}",
            "grid", "estimate", "Pearson", "Spearman", "mean |err|", "max |err|", "time"
        ),
    ];
    let per_grid = |e: &'_ Estimate| {
        [("heads", e.heads.clone()), ("positions", e.positions.clone())].into_iter().filter_map(|(g, a)| Some((g, a?)))
    };
    for e in &c.estimates {
        for (grid, a) in per_grid(e) {
            lines.push(format!(
                "{:<10} {:<31} {:>8} {:>9} {:>11.3e} {:>10.3e} {:>7.2}s",
                grid,
                e.result.manifest.method.label(),
                fmt_corr(a.pearson),
                fmt_corr(a.spearman),
                a.mean_abs_error,
                a.max_abs_error,
                secs(&e.result)
            ));
        }
    }
    for e in &c.estimates {
        for (grid, a) in per_grid(e) {
            let unit = if grid == "heads" { "H" } else { "P" };
            let misses: Vec<String> = a
                .largest_misses
                .iter()
                .map(|m| format!("L{} {unit}{}: {:.3} vs {:.3}", m.layer, m.index, m.estimate, m.exact))
                .collect();
            lines.push(format!("largest misses, {grid}, {}: {}", e.result.manifest.method.label(), misses.join("; ")));
        }
    }
    for g in &c.recall {
        for m in &g.methods {
            let costs: Vec<String> =
                m.curves.iter().map(|k| format!("top {} after {}", k.k, k.full_recall_at)).collect();
            lines.push(format!(
                "full recall of exact's top k, {}, {}: {} of {} nodes verified",
                g.grid,
                m.label,
                costs.join(", "),
                g.nodes
            ));
        }
    }
    for (grid, ratio, before, after) in ig_gain(c) {
        lines.push(format!(
            "integrated gradients vs attribution, {grid}: mean |err| {}, Pearson {} -> {}",
            if ratio >= 1.0 { format!("{ratio:.2}x smaller") } else { format!("{:.2}x larger", 1.0 / ratio) },
            fmt_corr(before),
            fmt_corr(after)
        ));
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// A correlation to three decimals, or "n/a" when there is none.
pub fn fmt_corr(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{r:.3}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlations_of_known_series() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&x, &[1.0; 4]), None);
        // Monotone but not linear: Spearman 1, Pearson below 1.
        let y = [1.0, 10.0, 100.0, 1000.0];
        assert!(pearson(&x, &y).unwrap() < 0.9);
        assert_eq!(pearson(&ranks(&x), &ranks(&y)), Some(1.0));
    }

    #[test]
    fn ties_share_their_average_rank() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    #[test]
    fn largest_misses_come_first() {
        let a = agreement(&[vec![0.0, 1.0], vec![0.5, 0.2]], &[vec![0.0, 0.2], vec![0.5, 0.25]]);
        assert_eq!((a.largest_misses[0].layer, a.largest_misses[0].index), (0, 1));
        assert!((a.max_abs_error - 0.8).abs() < 1e-12);
        assert!((a.mean_abs_error - 0.85 / 4.0).abs() < 1e-12);
    }
}

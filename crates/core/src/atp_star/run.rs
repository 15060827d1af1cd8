//! The AtP* job: the AtP* graph run over the prompt pairs in batches (one
//! runtime call each), each output summed over the pairs with `run`'s
//! scaling, normalised once all batches are in, and GradDrop's sweeps
//! combined (module doc of `atp_star`).

use super::names::{output, Grid, Kind, Site};
use crate::augment::{augment_with, names, AugmentOptions, Augmented};
use crate::batches::{indistinguishable, Totals};
use crate::graph_cache::GraphKey;
use crate::grids::Grids;
use crate::job::{pair_inputs, prepare, JobGraph, JobOptions, JobResult, Manifest, Method, Prepared, RowsRun};
use crate::memory::{choose_scaled, Budget, Workload};
use crate::runtime::take_output;
use attrpatch_onnx::error::{Error, Result};
use std::collections::HashMap;

/// One node type's grids under the three estimates.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SiteGrids {
    /// AtP: the gradient at the corrupted run times the change of the node.
    pub atp: Grids,
    /// The QK-fix (queries and keys; for head outputs, AtP itself).
    pub qk_fix: Grids,
    /// AtP*: GradDrop over the QK-fixed estimates (magnitudes); the QK-fix
    /// itself when GradDrop is off.
    pub atp_star: Grids,
}

/// An AtP* job's grids for head outputs, queries and keys.
pub struct AtpStarRun {
    /// The job, its grids the AtP* estimate of the head outputs (as `run`'s grids).
    pub result: JobResult,
    /// The head outputs (`run`'s nodes).
    pub output: SiteGrids,
    /// Each head's query (heads: at the last position; positions: summed over heads).
    pub query: SiteGrids,
    /// Each head's key (heads: summed over key positions; positions: summed over heads).
    pub key: SiteGrids,
    /// GradDrop's backward sweeps (layers - 1; 0 without GradDrop).
    pub sweeps: usize,
}

/// Runs AtP* on `opts`' model and prompts; `grad_drop` adds GradDrop's sweeps.
pub fn run_atp_star(opts: &JobOptions, grad_drop: bool) -> Result<AtpStarRun> {
    check_options(opts)?;
    let aug = AugmentOptions { atp_star: Some(grad_drop), ..opts.augment_options() };
    let mut p = prepare(opts, GraphKey::new("atp-star", &aug), |m| augment_with(m, aug.clone()))?;
    run_prepared(opts, &mut p, grad_drop)
}

fn check_options(opts: &JobOptions) -> Result<()> {
    let refuse = |what: &str| Err(Error::Input(format!("--method atp-star: {what} is not supported with AtP*")));
    if opts.shard.is_some() {
        return refuse("--shard");
    }
    if opts.per_prompt {
        return refuse("--per-prompt");
    }
    if opts.hooks != crate::hooks::HookKind::AttnOut {
        return refuse("--hook other than attn (AtP*'s queries and keys are the attention's)");
    }
    Ok(())
}

/// Sums of one output over the pairs, per layer.
type Sums = HashMap<String, Vec<f64>>;

fn run_prepared(opts: &JobOptions, p: &mut Prepared<Augmented>, grad_drop: bool) -> Result<AtpStarRun> {
    let n = p.pairs.len();
    let layers = p.graph.hooks.len();
    p.graph.heads.ok_or_else(|| Error::Model("AtP*: the head count is unknown; give --heads".into()))?;
    let explicit = match opts.batch_size {
        Some(0) => Some(n.max(1)),
        other => other,
    };
    // The sweeps hold about as much again as the plain backward (conservative).
    let sizing = choose_scaled(
        explicit,
        n,
        &p.shape,
        Workload::AttributionPair,
        &Budget::new(opts.max_memory),
        if grad_drop { 2.0 } else { 1.0 },
    );
    crate::progress::sizing(&opts.progress, &sizing);
    let per_call = sizing.per_call.max(1);
    let method = Method::AtpStar { grad_drop };
    let mut manifest = Manifest::new(opts, p, method, per_call);
    manifest.memory = Some(sizing);
    crate::progress::stage(&opts.progress, "creating the runtime session");
    let mut rt = p.session(&opts.runtime)?;
    let wanted = output_names(layers, grad_drop);
    let mut sums: Sums = HashMap::new();
    let mut totals = Totals::default();
    let mut pair_metrics = vec![];
    let mut calls = 0;
    let clock = std::time::Instant::now();
    for start in (0..n).step_by(per_call) {
        let range = start..(start + per_call).min(n);
        let t = p.tokens.slice(range.clone());
        let mut outs = rt.run(pair_inputs(&p.graph.token_inputs(), &t))?;
        calls += 1;
        let values = |outs: &mut HashMap<String, ndarray::ArrayD<f32>>, name: &str| -> Result<Vec<f64>> {
            Ok(take_output(outs, name)?.iter().map(|&v| v as f64).collect())
        };
        let clean = values(&mut outs, names::CLEAN_LDS)?;
        let corrupted = values(&mut outs, names::CORRUPTED_LDS)?;
        let rows = clean.len();
        let (mc, mk) = (mean(&clean), mean(&corrupted));
        if indistinguishable(mc, mk) {
            return Err(Error::Numeric(format!(
                "pairs {}..{}: the clean and corrupted metric are equal ({mc} and {mk}); the normalised metric \
                 divides by their difference. Check that the corrupted prompts differ from the clean ones",
                range.start, range.end
            )));
        }
        // As `run`: undo the graph's (mean - CORR) / (CLEAN - CORR) over this batch.
        let scale = rows as f64 * (mc - mk);
        for name in &wanted {
            let v = values(&mut outs, name)?;
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::Numeric(format!("'{name}' is {x} for pairs {}..{}", range.start, range.end)));
            }
            let width = v.len() / rows.max(1);
            let acc = sums.entry(name.clone()).or_insert_with(|| vec![0.0; width]);
            if acc.len() != width {
                return Err(Error::Runtime(format!(
                    "'{name}': {width} values per pair, earlier batches had {}",
                    acc.len()
                )));
            }
            for row in v.chunks(width.max(1)) {
                for (a, x) in acc.iter_mut().zip(row) {
                    *a += scale * x;
                }
            }
        }
        totals.pairs += rows;
        totals.sum_clean += clean.iter().sum::<f64>();
        totals.sum_corrupted += corrupted.iter().sum::<f64>();
        pair_metrics.extend(clean.into_iter().zip(corrupted));
    }
    p.seconds.run = clock.elapsed().as_secs_f64();
    let k = totals.normaliser()?;
    let grid = |kind: Kind, site: Site| -> Grids {
        let rows =
            |g: Grid| (0..layers).map(|l| sums[&output(kind, site, g, l)].iter().map(|v| k * v).collect()).collect();
        Grids { heads: rows(Grid::Heads), positions: rows(Grid::Positions) }
    };
    let plain = Grids {
        heads: (0..layers).map(|l| sums[&names::heads(l)].iter().map(|v| k * v).collect()).collect(),
        positions: (0..layers).map(|l| sums[&names::positions(l)].iter().map(|v| k * v).collect()).collect(),
    };
    let sweeps = |site: Site| -> Vec<Grids> {
        (1..layers)
            .map(|l| if grad_drop { partial_grid(&sums, k, Kind::Sweep(l), site, l) } else { Grids::default() })
            .collect()
    };
    let star =
        |fixed: &Grids, site: Site| if grad_drop { grad_drop_grids(fixed, &sweeps(site)) } else { fixed.clone() };
    let output_sites = SiteGrids { atp: plain.clone(), qk_fix: plain.clone(), atp_star: star(&plain, Site::Output) };
    let query_fix = grid(Kind::QkFix, Site::Query);
    let key_fix = grid(Kind::QkFix, Site::Key);
    let query =
        SiteGrids { atp: grid(Kind::Atp, Site::Query), atp_star: star(&query_fix, Site::Query), qk_fix: query_fix };
    let key = SiteGrids { atp: grid(Kind::Atp, Site::Key), atp_star: star(&key_fix, Site::Key), qk_fix: key_fix };

    manifest.runtime = rt.describe();
    let (clean, corrupted): (Vec<f64>, Vec<f64>) = pair_metrics.iter().copied().unzip();
    let result = JobResult {
        baselines: crate::sanity::check_baselines(opts.metric, &clean, &corrupted),
        manifest,
        clean_metric: totals.clean(),
        corrupted_metric: totals.corrupted(),
        grids: output_sites.atp_star.clone(),
        per_pair: vec![],
        runtime_calls: calls,
        batches_resumed: 0,
        seconds: p.seconds.clone(),
        pair_metrics,
        rows: RowsRun { shared: false, rows: 2 * n, pairs: n },
    };
    Ok(AtpStarRun { result, output: output_sites, query, key, sweeps: if grad_drop { layers - 1 } else { 0 } })
}

/// Every output the job reads, besides the metric values.
fn output_names(layers: usize, grad_drop: bool) -> Vec<String> {
    let mut v = vec![];
    for l in 0..layers {
        v.push(names::heads(l));
        v.push(names::positions(l));
        for kind in [Kind::Atp, Kind::QkFix] {
            for site in [Site::Query, Site::Key] {
                for g in [Grid::Heads, Grid::Positions] {
                    v.push(output(kind, site, g, l));
                }
            }
        }
    }
    if grad_drop {
        for sweep in 1..layers {
            for j in 0..sweep {
                for site in [Site::Output, Site::Query, Site::Key] {
                    for g in [Grid::Heads, Grid::Positions] {
                        v.push(output(Kind::Sweep(sweep), site, g, j));
                    }
                }
            }
        }
    }
    v
}

/// Sweep `l`'s grids of the layers below it (the graph outputs no others).
fn partial_grid(sums: &Sums, k: f64, kind: Kind, site: Site, l: usize) -> Grids {
    let rows = |g: Grid| (0..l).map(|j| sums[&output(kind, site, g, j)].iter().map(|v| k * v).collect()).collect();
    Grids { heads: rows(Grid::Heads), positions: rows(Grid::Positions) }
}

/// GradDrop (AtP* eq. 11): a node of layer j scores
/// (1 / (L - 1)) sum_l |c_l|, where c_l is its estimate with layer l's
/// residual writes dropped from the gradient: the plain estimate for l < j,
/// 0 for l = j, sweep l's for l > j. One layer: |c|.
pub fn grad_drop_grids(plain: &Grids, sweeps: &[Grids]) -> Grids {
    let layers = plain.heads.len().max(plain.positions.len());
    let combine = |rows: &[Vec<f64>], of: &dyn Fn(&Grids) -> &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
        rows.iter()
            .enumerate()
            .map(|(j, row)| {
                row.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if layers < 2 {
                            return v.abs();
                        }
                        let below = j as f64 * v.abs();
                        let above: f64 = sweeps.iter().skip(j).map(|s| of(s)[j][i].abs()).sum();
                        (below + above) / (layers - 1) as f64
                    })
                    .collect()
            })
            .collect()
    };
    Grids { heads: combine(&plain.heads, &|g| &g.heads), positions: combine(&plain.positions, &|g| &g.positions) }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

//! The diagnostic of the AtP* paper (Kramár et al. 2024, arXiv 2403.00745)
//! for what a ranking of heads missed: after the top K heads by |estimate|
//! (to be verified by exact patching), patch random subsets of the other heads,
//! each subset jointly (every head of it at the pair's last position, in one
//! row of the patching graph), and report each subset's exact effect. If no
//! subset moves the metric much, no single head outside the top K is likely
//! to have a large effect on its own, unless its subset's other heads cancel it.
//!
//! Sampling: each subset is M heads drawn uniformly without replacement from
//! the R heads outside the top K, independently of the other subsets; M is half
//! of R, rounded up, by default, so each head is in each subset with
//! probability M / R (about 1/2) and in at least one of N subsets with
//! probability 1 - (1 - M / R)^N. The paper's exact sampling scheme is not
//! reproduced here (this is attrpatch's choice, written in the book, docs/src/ground-truth.md).
//! A fixed seed (SplitMix64) makes the subsets reproducible.
//!
//! Effects are in the grids' units: per pair, the patched metric minus the
//! corrupted one, summed and divided by N * (CLEAN - CORR).

use super::plan::{Plan, Unit};
use super::{check_counts, graph, graph_options, plan_rows, run_rows, Estimator};
use crate::batches::{BatchResult, Totals};
use crate::graph_cache::GraphKey;
use crate::job::{self, JobOptions, JobResult};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::fsutil::write_atomic;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Heads left out of the subsets unless told otherwise: the 10 of largest |estimate|.
pub const DEFAULT_TOP: usize = 10;
/// The sampling's seed unless told otherwise.
pub const DEFAULT_SEED: u64 = 0;

/// What the diagnostic samples and how it runs.
#[derive(Debug, Clone)]
pub struct DiagnosticOptions {
    /// Subsets to patch (N).
    pub subsets: usize,
    /// Heads of largest |estimate| left out (K).
    pub top: usize,
    /// Heads per subset (M); None: half of those outside the top K, rounded up.
    pub size: Option<usize>,
    /// Seed of the sampling.
    pub seed: u64,
    /// Patched rows per runtime call; None: as many as the memory budget holds.
    pub rows_per_call: Option<usize>,
}

impl DiagnosticOptions {
    /// `subsets` subsets with the defaults for the rest.
    pub fn new(subsets: usize) -> Self {
        DiagnosticOptions { subsets, top: DEFAULT_TOP, size: None, seed: DEFAULT_SEED, rows_per_call: None }
    }
}

/// A head of the heads grid and its estimate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RankedHead {
    /// Row of the heads grid (the hook's index, as in heads.csv).
    pub layer: usize,
    /// The head within the layer.
    pub head: usize,
    /// Its value in the ranked grid.
    pub estimate: f64,
}

/// The subsets drawn from the heads outside the top K.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    /// The top K heads by |estimate|, largest first.
    pub top: Vec<RankedHead>,
    /// R: the heads outside the top K.
    pub outside: usize,
    /// M: heads per subset.
    pub size: usize,
    /// Each subset's heads as [grid row, head], sorted.
    pub subsets: Vec<Vec<[usize; 2]>>,
}

/// One patched subset.
#[derive(Debug, Clone, Serialize)]
pub struct SubsetEffect {
    /// Its heads as [grid row, head].
    pub heads: Vec<[usize; 2]>,
    /// Exact patching's effect of patching them all together (normalised, mean over pairs).
    pub effect: f64,
    /// The sum of their estimates: what a linear estimate says the subset does.
    pub estimate_sum: f64,
}

/// What the diagnostic found: diagnostic.json.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    /// The method whose heads grid was ranked.
    pub ranked_by: String,
    /// K: the heads left out of the subsets.
    pub top_k: usize,
    /// The top K heads, largest |estimate| first.
    pub top: Vec<RankedHead>,
    /// R: heads outside the top K, the pool of the subsets.
    pub outside: usize,
    /// M: heads per subset.
    pub subset_size: usize,
    /// The sampling's seed.
    pub seed: u64,
    /// Each subset and its exact effect.
    pub subsets: Vec<SubsetEffect>,
    /// The largest |effect| of any subset.
    pub max_abs_effect: f64,
    /// The index of the subset with that effect.
    pub max_subset: usize,
    /// The probability that a given head outside the top K is in at least one subset: 1 - (1 - M / R)^N.
    pub inclusion_probability: f64,
    /// The bound, in words.
    pub bound: String,
    /// Runtime calls of the patching runs.
    pub runtime_calls: usize,
    /// Seconds of the patching runs (the graph's preparation and session excluded).
    pub run_seconds: f64,
}

/// SplitMix64: a small, well-mixed generator, so the subsets depend on the seed only.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (the modulo bias is below 2^-40 for any grid size).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Ranks the heads grid by |estimate| and draws the subsets from the heads
/// outside the top K; refuses a K that leaves no head, or a size outside 1 ..= R.
pub fn draw(heads: &[Vec<f64>], o: &DiagnosticOptions) -> Result<Draw> {
    let width = heads.first().map_or(0, Vec::len);
    if width == 0 {
        return Err(Error::Input(
            "the diagnostic patches attention heads, and this run has no heads grid (its hook does not split into \
             heads); run it with the attn hook"
                .into(),
        ));
    }
    if o.subsets == 0 {
        return Err(Error::Input("the diagnostic's subset count must be at least 1".into()));
    }
    let values: Vec<f64> = heads.iter().flatten().copied().collect();
    let total = values.len();
    if o.top >= total {
        return Err(Error::Input(format!(
            "the diagnostic's top count K = {} leaves no head to sample: the run has {total} heads ({} layers x \
             {width}); give a K below {total}",
            o.top,
            heads.len()
        )));
    }
    let order = crate::recall::by_magnitude(&values);
    let cell = |i: usize| [i / width, i % width];
    let top =
        order[..o.top].iter().map(|&i| RankedHead { layer: i / width, head: i % width, estimate: values[i] }).collect();
    let mut pool: Vec<usize> = order[o.top..].to_vec();
    pool.sort_unstable();
    let outside = pool.len();
    let size = o.size.unwrap_or(outside.div_ceil(2));
    if size == 0 || size > outside {
        return Err(Error::Input(format!(
            "the diagnostic's subset size M = {size} must be between 1 and the {outside} heads outside the top {}",
            o.top
        )));
    }
    let mut rng = SplitMix(o.seed);
    let subsets = (0..o.subsets)
        .map(|_| {
            // A partial Fisher-Yates shuffle: the first `size` of the pool.
            for i in 0..size {
                let j = i + rng.below(outside - i);
                pool.swap(i, j);
            }
            let mut s: Vec<[usize; 2]> = pool[..size].iter().map(|&i| cell(i)).collect();
            s.sort_unstable();
            s
        })
        .collect();
    Ok(Draw { top, outside, size, subsets })
}

/// Exact effects of subsets of heads, each patched jointly.
#[derive(Debug, Clone)]
pub struct SubsetRun {
    /// Each subset's effect in the grids' units (normalised, mean over pairs).
    pub effects: Vec<f64>,
    /// Runtime calls made.
    pub runtime_calls: usize,
    /// Seconds of those calls.
    pub run_seconds: f64,
}

/// Patches each subset of heads ([grid row, head]) jointly at every pair's
/// last position, by exact patching on the one patching graph (a subset may
/// span layers, so the layer groups of `patch` do not apply).
pub fn patch_subsets(
    opts: &JobOptions,
    subsets: &[Vec<[usize; 2]>],
    rows_per_call: Option<usize>,
) -> Result<SubsetRun> {
    let estimator = Estimator::Exact { positions: false };
    check_counts(estimator, rows_per_call)?;
    let g = graph_options(opts, estimator);
    let mut p = job::prepare(opts, GraphKey::new("patch", &g), |model| graph::build(model, &g))?;
    let (hooks, units) = (p.graph.hooks.len(), p.graph.units());
    if p.graph.heads.is_none() {
        return Err(Error::Input("the diagnostic patches attention heads; the hook does not split into heads".into()));
    }
    let graph_units: Vec<Vec<Unit>> = subsets
        .iter()
        .map(|s| {
            s.iter()
                .map(|&[l, h]| match (p.graph.hooks.get(l), h < units) {
                    (Some(hook), true) => Ok((hook.layer, h)),
                    _ => Err(Error::Input(format!(
                        "subset head [{l}, {h}] is outside the model's {hooks} layers x {units} heads"
                    ))),
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    crate::progress::stage(&opts.progress, "creating the runtime session");
    let mut rt = p.session(&opts.runtime)?;
    let plan = Plan::Subsets { count: subsets.len() };
    let (rows, mut acc, sizing) = plan_rows(opts, estimator, plan, rows_per_call, &p);
    let clock = Instant::now();
    let calls = run_rows(opts, rt.as_mut(), &mut p, &rows, sizing.per_call, &mut acc, &graph_units)?;
    let run_seconds = clock.elapsed().as_secs_f64();
    // The grids' normalisation: the subsets are the cells of a one-row grid.
    let batch = BatchResult::new(0, String::new(), acc.finish()?, false)?;
    let mut totals = Totals::default();
    totals.add(&batch)?;
    let k = totals.normaliser()?;
    let effects = totals.heads.first().map_or_else(Vec::new, |row| row.iter().map(|v| v * k).collect());
    Ok(SubsetRun { effects, runtime_calls: calls, run_seconds })
}

/// Runs the diagnostic on the heads grid of `ranked`: draws the subsets,
/// patches them and states the bound.
pub fn run(opts: &JobOptions, ranked: &JobResult, o: &DiagnosticOptions) -> Result<Diagnostic> {
    let d = draw(&ranked.grids.heads, o)?;
    let r = patch_subsets(opts, &d.subsets, o.rows_per_call)?;
    Ok(summarise(&ranked.manifest.method.label(), &ranked.grids.heads, o, d, r))
}

/// The diagnostic's record from the drawn subsets and their effects.
pub fn summarise(ranked_by: &str, heads: &[Vec<f64>], o: &DiagnosticOptions, d: Draw, r: SubsetRun) -> Diagnostic {
    let subsets: Vec<SubsetEffect> = d
        .subsets
        .into_iter()
        .zip(&r.effects)
        .map(|(s, &effect)| {
            let estimate_sum = s.iter().map(|&[l, h]| heads[l][h]).sum();
            SubsetEffect { heads: s, effect, estimate_sum }
        })
        .collect();
    let (max_subset, max_abs_effect) = subsets
        .iter()
        .map(|s| s.effect.abs())
        .enumerate()
        .fold((0, 0.0), |best, (i, v)| if v > best.1 { (i, v) } else { best });
    let n = subsets.len();
    let inclusion_probability = 1.0 - (1.0 - d.size as f64 / d.outside as f64).powi(n as i32);
    let bound = format!(
        "No random subset of {m} of the {r} heads outside the top {k} by |{ranked_by}| moved the normalised metric \
         by more than {x} (subset {max_subset}). A single head outside the top {k} whose own effect exceeds {x} in \
         size was in at least one of the {n} subsets with probability {p}, and would have shown there unless the \
         other heads of its subset cancelled it (heads patched together need not add up).",
        m = d.size,
        r = d.outside,
        k = o.top,
        x = fmt_effect(max_abs_effect),
        p = fmt_probability(inclusion_probability),
    );
    Diagnostic {
        ranked_by: ranked_by.into(),
        top_k: o.top,
        top: d.top,
        outside: d.outside,
        subset_size: d.size,
        seed: o.seed,
        subsets,
        max_abs_effect,
        max_subset,
        inclusion_probability,
        bound,
        runtime_calls: r.runtime_calls,
        run_seconds: r.run_seconds,
    }
}

/// An effect as the bound states it: 4 decimals, or 3 significant digits when below 1e-3 (0 as 0).
pub fn fmt_effect(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// A probability: 4 decimals, or "1 - 9.5e-7" when that would round to 1.
pub fn fmt_probability(p: f64) -> String {
    if p < 1.0 && 1.0 - p < 5e-5 {
        format!("1 - {:.1e}", 1.0 - p)
    } else {
        format!("{p:.4}")
    }
}

impl Diagnostic {
    /// The line the CLI prints.
    pub fn summary(&self) -> String {
        format!(
            "diagnostic: {} subsets of {} of the {} heads outside the top {}: largest |effect| {} (subset {}); a \
             missed head with a larger effect was in some subset with probability {}",
            self.subsets.len(),
            self.subset_size,
            self.outside,
            self.top_k,
            fmt_effect(self.max_abs_effect),
            self.max_subset,
            fmt_probability(self.inclusion_probability)
        )
    }
}

/// Writes `out/diagnostic.json`; returns its path.
pub fn write(d: &Diagnostic, out: &Path) -> Result<PathBuf> {
    let path = out.join("diagnostic.json");
    let text = serde_json::to_vec_pretty(d).map_err(|e| Error::Runtime(format!("serialising diagnostic.json: {e}")))?;
    write_atomic(&path, &text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Vec<Vec<f64>> {
        vec![vec![0.5, -0.01, 0.02, 0.0], vec![0.03, -0.7, 0.001, 0.2], vec![0.0, 0.04, -0.3, 0.005]]
    }

    #[test]
    fn subsets_come_from_outside_the_top_k_and_follow_the_seed() {
        let mut o = DiagnosticOptions::new(6);
        o.top = 4;
        let d = draw(&grid(), &o).unwrap();
        let top: Vec<[usize; 2]> = d.top.iter().map(|h| [h.layer, h.head]).collect();
        assert_eq!(top, vec![[1, 1], [0, 0], [2, 2], [1, 3]]);
        assert_eq!((d.outside, d.size, d.subsets.len()), (8, 4, 6));
        for s in &d.subsets {
            assert_eq!(s.len(), 4);
            assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats: {s:?}");
            assert!(s.iter().all(|c| !top.contains(c)), "{s:?} holds a top head");
        }
        assert_eq!(draw(&grid(), &o).unwrap(), d, "the same seed draws the same subsets");
        o.seed = 7;
        assert_ne!(draw(&grid(), &o).unwrap().subsets, d.subsets, "another seed draws others");
    }

    #[test]
    fn a_k_leaving_no_head_or_a_wrong_size_is_refused() {
        let mut o = DiagnosticOptions::new(3);
        o.top = 12;
        let e = draw(&grid(), &o).unwrap_err().to_string();
        assert!(e.contains("K = 12 leaves no head") && e.contains("12 heads (3 layers x 4)"), "{e}");
        o.top = 10;
        o.size = Some(3);
        let e = draw(&grid(), &o).unwrap_err().to_string();
        assert!(e.contains("subset size M = 3") && e.contains("the 2 heads outside the top 10"), "{e}");
        assert!(draw(&[], &DiagnosticOptions::new(3)).is_err());
    }

    #[test]
    fn the_reported_max_is_the_largest_subset_effect_in_size() {
        let mut o = DiagnosticOptions::new(3);
        o.top = 4;
        let d = draw(&grid(), &o).unwrap();
        let r = SubsetRun { effects: vec![0.01, -0.08, 0.05], runtime_calls: 1, run_seconds: 0.0 };
        let first = d.subsets[0].clone();
        let s = summarise("AtP", &grid(), &o, d, r);
        assert_eq!((s.max_subset, s.max_abs_effect), (1, 0.08));
        let want: f64 = first.iter().map(|&[l, h]| grid()[l][h]).sum();
        assert_eq!(s.subsets[0].estimate_sum, want);
        // 4 of 8 heads per subset: 1 - (1/2)^3.
        assert!((s.inclusion_probability - 0.875).abs() < 1e-12);
        assert!(s.bound.contains("by more than 0.0800 (subset 1)"), "{}", s.bound);
        assert!(s.bound.contains("with probability 0.8750,"), "{}", s.bound);
        assert_eq!((fmt_effect(2.34e-5), fmt_effect(0.0)), ("2.340e-5".to_string(), "0.0000".to_string()));
        assert_eq!(fmt_probability(1.0 - 0.5f64.powi(20)), "1 - 9.5e-7");
    }
}

//! Exact activation patching and integrated gradients (`attrpatch patch`,
//! `compare --ig-steps`) against computations that do not use the patching
//! graph: patching by hand through the plain model, and toy graphs where the
//! answer is known in closed form.

use crate::common::by_hand::{self, assert_abs_close, Pairs};
use crate::common::synth::Synth;
use crate::common::*;
use attrpatch::hooks::HookKind;
use attrpatch::job::{run_job, JobOptions, JobResult};
use attrpatch::patch::{self, Estimator};
use attrpatch::prompts::{self, PromptTokenizer};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};
use std::path::PathBuf;

fn cpu() -> RuntimeOptions {
    RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 }
}

fn ioi_model() -> PathBuf {
    root().join("models/ioi-gpt2/model.onnx")
}

fn ioi_job() -> JobOptions {
    let mut opts = JobOptions::new(ioi_model());
    opts.runtime = cpu();
    opts
}

/// The tutorial's IOI pairs, tokenized for the bundled model.
fn ioi_pairs() -> Pairs {
    let tok = PromptTokenizer::from_file(&root().join("models/ioi-gpt2/tokenizer.json")).unwrap();
    let t = prompts::tokenize(&tok, &prompts::ioi_default(), false, usize::MAX).unwrap();
    let answers: Vec<Vec<i64>> = t.correct_ids.iter().zip(&t.incorrect_ids).map(|(&c, &w)| vec![c, w]).collect();
    Pairs::new(&t.clean_ids, &t.corrupted_ids, &answers)
}

/// Normalised metric: the bundled model's clean - corrupted difference is
/// about 52 logits, so float32 noise in a logit difference is ~1e-6 here.
const EXACT_TOL: f64 = 1e-4;

#[test]
fn exact_patching_matches_patching_by_hand() {
    let (want_heads, want_positions) = by_hand::exact_grids(&ioi_model(), &ioi_pairs(), 4);
    // Few rows per call: the rows of one pair are split across calls.
    let r = patch::run(&ioi_job(), Estimator::Exact { positions: true }, 7).unwrap();
    let eh = assert_abs_close("exact heads", &r.grids.heads, &want_heads, EXACT_TOL);
    let ep = assert_abs_close("exact positions", &r.grids.positions, &want_positions, EXACT_TOL);
    eprintln!("exact vs by hand: max abs error heads {eh:.2e}, positions {ep:.2e}");
    // Patching every position of a layer at once moves the metric a lot on this model.
    assert!(want_positions.iter().flatten().any(|v| v.abs() > 0.1), "the check has something to check");
    assert!(r.runtime_calls > 1);
}

#[test]
fn exact_patching_without_positions_writes_heads_only() {
    // The one patching graph (no layer groups): all rows in one call.
    let r = patch::run_grouped(&ioi_job(), Estimator::Exact { positions: false }, Some(1000), None).unwrap();
    assert_eq!(r.grids.heads.len(), 3);
    assert!(r.grids.positions.is_empty());
    assert_eq!(r.runtime_calls, 1);
    assert_eq!(r.manifest.method, attrpatch::job::Method::ExactPatching);
}

fn synth_job(model: PathBuf, heads: usize) -> JobOptions {
    let mut opts = JobOptions::new(model);
    opts.runtime = cpu();
    opts.heads = Some(heads);
    // Three pairs of 5 tokens; answers are distinct ids of the toy vocabulary.
    let clean = vec![vec![1, 5, 9, 3, 7], vec![2, 4, 6, 8, 10], vec![11, 3, 5, 12, 13]];
    let corrupted = vec![vec![1, 5, 20, 3, 17], vec![2, 14, 6, 8, 21], vec![11, 3, 15, 12, 22]];
    opts.with_token_ids(clean, corrupted, &[vec![30, 31], vec![32, 33], vec![34, 35]]);
    opts
}

fn attribution(opts: &JobOptions) -> JobResult {
    run_job(opts).unwrap().unwrap()
}

/// The toy's logits are linear in the hook (MatMul, Add, MatMul): every
/// estimator is exact, per head and per position.
#[test]
fn integrated_gradients_on_a_linear_graph_equal_the_exact_effect() {
    let dir = fresh_dir("ig-linear");
    let model = Synth { vocab: 40, ..Default::default() }.write(&dir, "linear.onnx");
    let opts = synth_job(model, 2);
    let exact = patch::run(&opts, Estimator::Exact { positions: true }, 256).unwrap();
    for steps in [1, 3] {
        let ig = patch::run(&opts, Estimator::IntegratedGradients { steps }, 256).unwrap();
        assert_abs_close(&format!("IG {steps} heads"), &ig.grids.heads, &exact.grids.heads, 1e-4);
        assert_abs_close(&format!("IG {steps} positions"), &ig.grids.positions, &exact.grids.positions, 1e-4);
    }
    let plain = attribution(&opts);
    assert_abs_close("attribution heads", &plain.grids.heads, &exact.grids.heads, 1e-4);
    assert!(exact.grids.heads.iter().flatten().any(|v| v.abs() > 0.05));
}

/// With the projection squared the metric is quadratic in the hook, so the
/// gradient is linear along the path and the midpoint rule integrates it
/// exactly with any number of steps, while plain attribution (the gradient
/// at the corrupted end) misses. The toy mixes no positions, so patching the
/// whole hook at the last position (one "head") is what IG's path does there.
#[test]
fn integrated_gradients_are_exact_on_a_quadratic_graph_and_attribution_is_not() {
    let dir = fresh_dir("ig-quadratic");
    let model =
        Synth { vocab: 40, extra_op: Some("Square".into()), ..Default::default() }.write(&dir, "quadratic.onnx");
    let opts = synth_job(model, 1);
    let exact = patch::run(&opts, Estimator::Exact { positions: true }, 256).unwrap();
    for steps in [1, 2, 5] {
        let ig = patch::run(&opts, Estimator::IntegratedGradients { steps }, 256).unwrap();
        assert_abs_close(&format!("IG {steps} heads"), &ig.grids.heads, &exact.grids.heads, 1e-4);
        assert_abs_close(&format!("IG {steps} positions"), &ig.grids.positions, &exact.grids.positions, 1e-4);
    }
    let plain = attribution(&opts);
    let miss = plain.grids.heads[0][0] - exact.grids.heads[0][0];
    assert!(miss.abs() > 0.05, "attribution {} vs exact {}", plain.grids.heads[0][0], exact.grids.heads[0][0]);
}

/// Patching the last block's output at the last position restores the clean
/// logits exactly (normalised metric 1); at any earlier position it changes
/// nothing the metric reads (0). Hooks without heads get the positions grid.
#[test]
fn patching_the_last_residual_at_the_last_position_restores_the_clean_run() {
    let mut opts = ioi_job();
    opts.hooks = HookKind::Resid;
    let r = patch::run(&opts, Estimator::Exact { positions: false }, 256).unwrap();
    assert!(r.grids.heads.is_empty());
    let last = r.grids.positions.last().unwrap();
    assert!((last[13] - 1.0).abs() < 1e-5, "{last:?}");
    assert!(last[..13].iter().all(|v| v.abs() < 1e-5), "{last:?}");
}

#[test]
fn head_counts_that_do_not_split_the_width_are_refused() {
    let mut opts = ioi_job();
    opts.heads = Some(5);
    let e = patch::run(&opts, Estimator::Exact { positions: false }, 256)
        .err()
        .expect("5 heads of a 64-wide hook")
        .to_string();
    assert!(e.contains("5 heads do not split the width 64"), "{e}");
    let e = run_job(&opts).err().expect("the attribution job checks too").to_string();
    assert!(e.contains("5 heads do not split the width 64"), "{e}");
}

/// The library refuses zero counts itself (no panic in `chunks(0)`); the
/// binary names the flags before it gets there (tests/cli.rs).
#[test]
fn zero_rows_per_call_or_ig_steps_are_errors_not_panics() {
    let e = patch::run(&ioi_job(), Estimator::Exact { positions: false }, 0).err().expect("0 rows per call");
    assert!(e.to_string().contains("rows per call must be at least 1"), "{e}");
    let e = patch::run(&ioi_job(), Estimator::IntegratedGradients { steps: 0 }, 8).err().expect("0 steps");
    assert!(e.to_string().contains("integrated gradients need at least 1 step"), "{e}");
}

/// A subset row (several heads of several layers patched in one row) gives
/// what patching those heads together by hand gives: each layer's hook taken
/// from the run with the lower layers already patched.
#[test]
fn subset_rows_equal_patching_their_heads_together_by_hand() {
    use attrpatch::patch::diagnostic;
    let subsets = vec![vec![[0, 1], [2, 3]], vec![[1, 0], [1, 2], [2, 0]], vec![[0, 0], [0, 2], [1, 1], [2, 2]]];
    // Two rows per call: a pair's rows are split across calls.
    let got = diagnostic::patch_subsets(&ioi_job(), &subsets, Some(2)).unwrap();
    assert_eq!(got.effects.len(), subsets.len());
    assert!(got.runtime_calls > 1);
    let single = patch::run(&ioi_job(), Estimator::Exact { positions: false }, 256).unwrap().grids.heads;
    let mut interaction = 0f64;
    for (s, &g) in subsets.iter().zip(&got.effects) {
        let want = by_hand::joint_heads_effect(&ioi_model(), &ioi_pairs(), 4, s);
        assert!((g - want).abs() <= EXACT_TOL, "subset {s:?}: patching graph {g}, by hand {want}");
        // Joint patching is not the sum of the heads patched one at a time: the test tells them apart.
        let sum: f64 = s.iter().map(|&[l, h]| single[l][h]).sum();
        interaction = interaction.max((want - sum).abs());
        let first_only = single[s[0][0]][s[0][1]];
        assert!((want - first_only).abs() > 10.0 * EXACT_TOL, "subset {s:?}: its first head alone gives {first_only}");
    }
    eprintln!("largest |joint - sum of singles| over the subsets: {interaction:.3e}");
    assert!(interaction > 10.0 * EXACT_TOL, "no subset's heads interact, so a per-head sum would pass too");
}

/// `run --diagnostic` as a library call on the bundled model: the subsets
/// avoid the top heads, the reported max is the largest |effect| of its
/// subsets, and each subset's effect is its own patching (the first, rerun alone).
#[test]
fn the_diagnostic_reports_the_largest_subset_effect() {
    use attrpatch::patch::diagnostic::{self, DiagnosticOptions};
    let ranked = attribution(&ioi_job());
    let mut o = DiagnosticOptions::new(5);
    o.top = 6;
    o.seed = 3;
    let d = diagnostic::run(&ioi_job(), &ranked, &o).unwrap();
    assert_eq!((d.outside, d.subset_size, d.subsets.len()), (6, 3, 5));
    let top: Vec<[usize; 2]> = d.top.iter().map(|h| [h.layer, h.head]).collect();
    assert!(d.subsets.iter().all(|s| s.heads.iter().all(|c| !top.contains(c))));
    let max = d.subsets.iter().map(|s| s.effect.abs()).fold(0f64, f64::max);
    assert_eq!(d.max_abs_effect, max);
    assert_eq!(d.subsets[d.max_subset].effect.abs(), max);
    assert!(max > 0.0);
    let alone = diagnostic::patch_subsets(&ioi_job(), &[d.subsets[0].heads.clone()], None).unwrap();
    assert!((alone.effects[0] - d.subsets[0].effect).abs() <= 1e-6, "{} vs {}", alone.effects[0], d.subsets[0].effect);
    assert!((d.inclusion_probability - (1.0 - 0.5f64.powi(5))).abs() < 1e-12);
    assert!(d.bound.contains(&diagnostic::fmt_effect(max)), "{}", d.bound);
}

//! Distinct sequences run once (`--dedup`): the shared-rows graph gives the
//! two-copy graph's numbers (baselines, each pair's metrics, the grids and
//! every pair's own grid rows) within 1e-6 of the largest value, and `auto`
//! picks it exactly when sequences are shared.

use crate::common::*;
use attrpatch::job::{run_job, Dedup, JobOptions, JobResult, RowsRun};
use attrpatch::prompts::{ioi_default, PromptPair};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};
use std::path::PathBuf;

fn ioi_model() -> PathBuf {
    root().join("models/ioi-gpt2/model.onnx")
}

fn options(model: PathBuf) -> JobOptions {
    let mut o = JobOptions::new(model);
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    o.per_prompt = true;
    o
}

fn run(o: &JobOptions, dedup: Dedup) -> JobResult {
    let mut o = o.clone();
    o.dedup = dedup;
    run_job(&o).unwrap().unwrap()
}

/// The largest |a - b| over two grids, and the largest |a|.
fn grid_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0.0f64, 0.0f64);
    for (ra, rb) in a.iter().zip(b) {
        assert_eq!(ra.len(), rb.len());
        for (x, y) in ra.iter().zip(rb) {
            worst = (worst.0.max((x - y).abs()), worst.1.max(x.abs()));
        }
    }
    worst
}

fn assert_grid_equal(what: &str, a: &[Vec<f64>], b: &[Vec<f64>]) {
    let (_, scale) = grid_diff(a, a);
    assert_grid_within(what, a, b, scale);
}

/// Every |a - b| at most 1e-6 of `scale`.
fn assert_grid_within(what: &str, a: &[Vec<f64>], b: &[Vec<f64>], scale: f64) {
    let (diff, _) = grid_diff(a, b);
    assert!(scale > 0.0, "{what}: the grid is all zeros");
    assert!(
        diff <= 1e-6 * scale,
        "{what}: shared-rows and two-copy grids differ by {diff:.3e} (largest value {scale:.3e})"
    );
}

/// Runs `o` with dedup on and off and holds every number of the two to 1e-6 of its scale.
fn assert_same_numbers(o: &JobOptions) -> (JobResult, JobResult) {
    let on = run(o, Dedup::On);
    let off = run(o, Dedup::Off);
    assert!(on.rows.shared && !off.rows.shared);
    let metric_tol = 1e-6 * on.clean_metric.abs().max(on.corrupted_metric.abs());
    assert!((on.clean_metric - off.clean_metric).abs() <= metric_tol, "{} vs {}", on.clean_metric, off.clean_metric);
    assert!((on.corrupted_metric - off.corrupted_metric).abs() <= metric_tol);
    for (i, (a, b)) in on.pair_metrics.iter().zip(&off.pair_metrics).enumerate() {
        assert!((a.0 - b.0).abs() <= metric_tol && (a.1 - b.1).abs() <= metric_tol, "pair {i}: {a:?} vs {b:?}");
    }
    assert_grid_equal("heads", &on.grids.heads, &off.grids.heads);
    assert_grid_equal("positions", &on.grids.positions, &off.grids.positions);
    assert_eq!(on.per_pair.len(), off.per_pair.len());
    // Each pair's own grid (normalised like the set's), held to the largest value of any
    // pair's: a pair with small values differs by rounding at the set's scale.
    let largest = |grids: &dyn Fn(&attrpatch::batches::PairResult) -> &Vec<Vec<f64>>| {
        on.per_pair.iter().map(|p| grid_diff(grids(p), grids(p)).1).fold(0.0, f64::max)
    };
    let (heads_scale, positions_scale) = (largest(&|p| &p.grid.heads), largest(&|p| &p.grid.positions));
    for (a, b) in on.per_pair.iter().zip(&off.per_pair) {
        assert_grid_within(&format!("pair {} heads", a.index), &a.grid.heads, &b.grid.heads, heads_scale);
        assert_grid_within(
            &format!("pair {} positions", a.index),
            &a.grid.positions,
            &b.grid.positions,
            positions_scale,
        );
    }
    (on, off)
}

fn pair(clean: &str, corrupted: &str, correct: &str, incorrect: &str) -> PromptPair {
    PromptPair {
        clean: clean.into(),
        corrupted: corrupted.into(),
        correct: correct.into(),
        incorrect: incorrect.into(),
        origin: None,
    }
}

/// The pairs as a prompts file in a fresh dir, with the dir's guard (hold it while the file is used).
fn write_prompts(pairs: &[PromptPair]) -> (TestDir, PathBuf) {
    let dir = fresh_dir("dedup-prompts");
    let path = dir.join("prompts.jsonl");
    let lines: Vec<String> = pairs.iter().map(|p| serde_json::to_string(p).unwrap()).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    (dir, path)
}

#[test]
fn neighbour_swaps_run_once_with_the_two_copy_numbers() {
    let o = options(ioi_model());
    let (on, off) = assert_same_numbers(&o);
    assert_eq!(on.rows, RowsRun { shared: true, rows: 8, pairs: 8 });
    assert_eq!(off.rows, RowsRun { shared: false, rows: 16, pairs: 8 });
    // The graph is right, not only the same: the bundled model does IOI.
    assert!(on.clean_metric > 1.0 && on.corrupted_metric < -1.0);
}

/// Shared sequences, one corrupted prompt of two pairs, clean prompts used
/// once, and two pairs of a shorter template (padded rows).
#[test]
fn a_mixed_set_with_a_twice_corrupted_sequence_has_exact_pair_rows() {
    let t = ioi_default();
    let short = ("When Amy met Bob, Amy gave it to", "When Amy met Bob, Bob gave it to");
    let pairs = vec![
        // c1 is the corrupted prompt of pairs 0 and 1.
        pair(&t[0].clean, &t[1].clean, &t[0].correct, &t[0].incorrect),
        pair(&t[2].clean, &t[1].clean, &t[2].correct, &t[2].incorrect),
        // Its clean prompt c1 is the row of a twice-corrupted sequence; its corrupted prompt c0 is clean above.
        pair(&t[1].clean, &t[0].clean, &t[1].correct, &t[1].incorrect),
        // Clean prompts used once.
        pair(&t[4].clean, &t[5].clean, &t[4].correct, &t[4].incorrect),
        pair(&t[6].clean, &t[7].clean, &t[6].correct, &t[6].incorrect),
        pair(short.0, short.1, " Bob", " Amy"),
        pair(short.1, short.0, " Amy", " Bob"),
    ];
    let mut o = options(ioi_model());
    let (_dir, prompts) = write_prompts(&pairs);
    o.prompts = Some(prompts);
    let (on, _) = assert_same_numbers(&o);
    // Corrupted rows 7 (each its own); clean rows added: c2, c4, c6.
    assert_eq!(on.rows, RowsRun { shared: true, rows: 10, pairs: 7 });
    // Pairs 0 and 1 share their corrupted sequence but not their gradient rows.
    let (d, _) = grid_diff(&on.per_pair[0].grid.heads, &on.per_pair[1].grid.heads);
    assert!(d > 0.0, "pairs 0 and 1 got the same grid rows");
}

/// A second family (Llama, dynamo export: rotary positions, GQA, RMSNorm) on token ids.
#[test]
fn a_llama_fixture_gives_the_same_numbers_shared_or_not() {
    let dir = root().join("tests/fixtures/arch");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("llama-sdpa-dynamo-op18.json")).unwrap()).unwrap();
    let mut o = options(dir.join("llama-sdpa-dynamo-op18.onnx"));
    let seq = |seed: i64| -> Vec<i64> { (0..9).map(|k| (seed * 37 + k * 11) % 500 + 3).collect() };
    let (a, b, c, d) = (seq(1), seq(2), seq(3), seq(4));
    // Neighbour swaps (a, b), a twice-corrupted sequence (c), a clean-only sequence (d).
    let clean = vec![a.clone(), b.clone(), a.clone(), d.clone()];
    let corrupted = vec![b.clone(), a.clone(), c.clone(), c.clone()];
    let answers = vec![vec![5, 9], vec![9, 5], vec![7, 8], vec![11, 12]];
    o.with_token_ids(clean, corrupted, &answers);
    o.heads = meta["n_heads"].as_u64().map(|h| h as usize);
    let (on, _) = assert_same_numbers(&o);
    assert_eq!(on.rows, RowsRun { shared: true, rows: 5, pairs: 4 });
}

#[test]
fn auto_shares_neighbour_swaps_and_keeps_two_copies_when_nothing_is_shared() {
    let swapped = run(&options(ioi_model()), Dedup::Auto);
    assert_eq!(swapped.rows, RowsRun { shared: true, rows: 8, pairs: 8 });

    let t = ioi_default();
    let distinct: Vec<PromptPair> = t.iter().step_by(2).cloned().collect();
    let mut o = options(ioi_model());
    let (_dir, prompts) = write_prompts(&distinct);
    o.prompts = Some(prompts);
    let r = run(&o, Dedup::Auto);
    assert_eq!(r.rows, RowsRun { shared: false, rows: 8, pairs: 4 });
}

/// The facade's `Attributor` builds the graph `dedup` asks for, and keeps it for later pairs.
#[test]
fn the_attributor_shares_rows_when_asked_and_keeps_the_graph() {
    use attrpatch::{Attributor, Pairs};
    let attributor = |d: Dedup| {
        Attributor::builder(ioi_model())
            .runtime(RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 })
            .dedup(d)
            .build()
            .unwrap()
    };
    let (mut on, mut off) = (attributor(Dedup::On), attributor(Dedup::Off));
    let (a, b) = (on.attribute(&Pairs::Tutorial).unwrap(), off.attribute(&Pairs::Tutorial).unwrap());
    assert_eq!((a.rows.shared, a.rows.rows, b.rows.shared, b.rows.rows), (true, 8, false, 16));
    assert_grid_equal("heads", &a.grids.heads, &b.grids.heads);
    // Pairs with nothing shared run on the same shared-rows graph and session: R = 2B.
    let distinct = Pairs::Prompts(ioi_default().into_iter().step_by(2).collect());
    let (a, b) = (on.attribute(&distinct).unwrap(), off.attribute(&distinct).unwrap());
    assert_eq!((a.rows.shared, a.rows.rows, on.graphs_built()), (true, 8, 1));
    assert_grid_equal("heads", &a.grids.heads, &b.grids.heads);
    assert_grid_equal("positions", &a.grids.positions, &b.grids.positions);
}

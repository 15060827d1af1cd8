//! Exact patching in layer groups (patch::staged, patch::cut): the grids
//! from the cut graphs fed the unpatched run's activations equal the grids
//! of the one patching graph, on the bundled model and on other exporter x
//! architecture families, for every grouping from one group to one per layer.

use crate::common::*;
use attrpatch::job::{JobOptions, JobResult};
use attrpatch::patch::graph::{self, PatchGraphOptions};
use attrpatch::patch::staged::Groups;
use attrpatch::patch::{self, cut, Estimator};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};

/// The same rows through another graph: float32 rounding only.
const TOL: f64 = 1e-6;
/// The same rows in calls of other sizes.
const SPLIT_TOL: f64 = 1e-5;

fn cpu() -> RuntimeOptions {
    RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 }
}

fn bundled_job() -> JobOptions {
    let mut o = JobOptions::new(root().join("models/ioi-gpt2/model.onnx"));
    o.runtime = cpu();
    o
}

fn fixture_job(name: &str) -> JobOptions {
    let dir = root().join("tests/fixtures/arch");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let mut o = JobOptions::new(dir.join(format!("{name}.onnx")));
    o.with_token_ids(ids("input_ids"), ids("corrupted_ids"), &ids("answer_ids"));
    o.heads = v["n_heads"].as_u64().map(|h| h as usize);
    o.runtime = cpu();
    o
}

fn run(o: &JobOptions, positions: bool, rows_per_call: usize, groups: Option<&Groups>) -> JobResult {
    patch::run_grouped(o, Estimator::Exact { positions }, Some(rows_per_call), groups)
        .unwrap_or_else(|e| panic!("{} with groups {groups:?}: {e}", o.model.display()))
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len(), "grid layer counts");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "grid row lengths");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

/// Every grouping against the one graph; returns the layer count.
fn check_groupings(what: &str, o: &JobOptions) -> usize {
    let want = run(o, true, 10_000, None);
    let layers = want.grids.heads.len();
    assert!(layers >= 2, "{what}: the check needs at least two layers to cut between");
    assert!(want.grids.positions.iter().flatten().any(|v| v.abs() > 1e-3), "{what}: the grids have something to check");
    let mut groupings: Vec<Groups> = (1..=layers).map(Groups::Count).collect();
    groupings.push(Groups::Starts(vec![0, layers - 1]));
    for groups in &groupings {
        let got = run(o, true, 10_000, Some(groups));
        let dh = max_diff(&got.grids.heads, &want.grids.heads);
        let dp = max_diff(&got.grids.positions, &want.grids.positions);
        eprintln!("{what}, groups {groups:?}: max difference heads {dh:.2e}, positions {dp:.2e}");
        assert!(dh <= TOL && dp <= TOL, "{what}, groups {groups:?}: heads differ by {dh:.2e}, positions by {dp:.2e}");
        assert!((got.clean_metric - want.clean_metric).abs() <= TOL, "{what}: clean metric");
        assert!((got.corrupted_metric - want.corrupted_metric).abs() <= TOL, "{what}: corrupted metric");
        // One cache run, then one call per group: the groups did run as separate graphs.
        let n = match groups {
            Groups::Count(n) => *n,
            Groups::Starts(s) => s.len(),
            Groups::Auto => unreachable!(),
        };
        assert_eq!(got.runtime_calls, 1 + n, "{what}, groups {groups:?}: calls");
    }
    // Heads only, and rows split over calls within a group: other batch shapes
    // round differently in the matrix products (seen: 2.4e-6 after the 1 / (CLEAN - CORR) scaling).
    let want = run(o, false, 10_000, None);
    let got = run(o, false, 3, Some(&Groups::Count(layers)));
    let dh = max_diff(&got.grids.heads, &want.grids.heads);
    assert!(dh <= SPLIT_TOL, "{what}, heads only in {layers} groups of 3-row calls: heads differ by {dh:.2e}");
    assert!(got.grids.positions.is_empty());
    layers
}

#[test]
fn layer_groups_equal_the_one_patching_graph_on_the_bundled_model() {
    check_groupings("bundled model", &bundled_job());
}

#[test]
fn layer_groups_equal_the_one_patching_graph_on_other_families() {
    for name in ["llama-legacy-op14", "gptneox-dynamo-op18", "gpt2-optimum"] {
        check_groupings(name, &fixture_job(name));
    }
}

#[test]
fn automatic_groups_give_the_one_graphs_grids() {
    let o = bundled_job();
    let want = run(&o, true, 64, None);
    let got = run(&o, true, 64, Some(&Groups::Auto));
    let d = max_diff(&got.grids.positions, &want.grids.positions).max(max_diff(&got.grids.heads, &want.grids.heads));
    assert!(d <= TOL, "automatic grouping differs by {d:.2e}");
}

/// The cut above the first hook reads activations from below it and leaves
/// the clean copy out; cuts higher up keep fewer nodes.
#[test]
fn cuts_drop_the_layers_below_and_the_clean_copy() {
    let o = bundled_job();
    let model = attrpatch::onnx::OnnxModel::load(&o.model).unwrap();
    let opts = PatchGraphOptions { metric: o.metric, hooks: o.hooks.clone(), heads: None, gradients: false };
    let pg = graph::build(model, &opts).unwrap();
    let dtype = attrpatch::onnx::consts::FLOAT;
    let cuts: Vec<cut::Cut> = (0..pg.hooks.len()).map(|s| cut::cut(&pg.proto, &pg.hooks, s, dtype).unwrap()).collect();
    let nodes = |c: &cut::Cut| c.proto.graph.as_ref().unwrap().node.len();
    let full = pg.proto.graph.as_ref().unwrap().node.len();
    for (a, b) in cuts.iter().zip(&cuts[1..]) {
        assert!(nodes(b) < nodes(a), "cut {} keeps {} nodes, cut {} keeps {}", b.start, nodes(b), a.start, nodes(a));
    }
    for c in &cuts {
        let g = c.proto.graph.as_ref().unwrap();
        assert!(nodes(c) < full, "cut {} keeps {} of {full} nodes", c.start, nodes(c));
        assert!(
            g.node.iter().all(|n| n.output.iter().all(|o| !o.starts_with("clean/"))),
            "cut {}: clean copy",
            c.start
        );
        // The hook's own corrupted activation comes from the cache, gathered per row.
        let hook = &pg.hooks[c.start].tensor;
        assert!(c.frontier.iter().any(|f| &f.name == hook && f.rows), "cut {}: frontier {:?}", c.start, c.frontier);
    }
}

/// Group starts that are not increasing hook indices from 0 are an error that
/// names them and says what was expected.
#[test]
fn bad_group_starts_are_an_error_naming_them() {
    let o = bundled_job();
    for starts in [vec![1, 2], vec![0, 2, 2], vec![0, 99]] {
        let e = patch::run_grouped(
            &o,
            Estimator::Exact { positions: false },
            Some(64),
            Some(&Groups::Starts(starts.clone())),
        )
        .err()
        .unwrap_or_else(|| panic!("starts {starts:?} were accepted"))
        .to_string();
        assert!(
            e.contains(&format!("{starts:?}")) && e.contains("expected increasing hook indices below"),
            "{starts:?}: {e}"
        );
    }
}

/// A cut at a hook the model does not have is an error naming the hook count.
#[test]
fn a_cut_beyond_the_hooks_is_an_error() {
    let o = bundled_job();
    let model = attrpatch::onnx::OnnxModel::load(&o.model).unwrap();
    let opts = PatchGraphOptions { metric: o.metric, hooks: o.hooks.clone(), heads: None, gradients: false };
    let pg = graph::build(model, &opts).unwrap();
    let n = pg.hooks.len();
    let e = cut::cut(&pg.proto, &pg.hooks, n, attrpatch::onnx::consts::FLOAT).err().expect("an error").to_string();
    assert!(e.contains(&format!("at hook {n}: the model has {n} hooks")), "{e}");
}

/// `--layer-groups` takes auto, off or a count of at least 1.
#[test]
fn cli_layer_groups_are_checked() {
    for bad in ["0", "some"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_attrpatch"))
            .args(["patch", "--device", "cpu", "--layer-groups", bad])
            .current_dir(root())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--layer-groups {bad} was accepted");
        assert!(text.contains(&format!("'{bad}': expected auto, off or a number of groups of at least 1")), "{text}");
    }
}

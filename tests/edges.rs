//! Edge scores (EAP, EAP-IG; issue 14 items 1 and 2): the identity that ties
//! them to `run`'s node attribution, a reader's gradient against a finite
//! difference through its copy alone, a linear toy where EAP is exact edge
//! patching, the edge list against the topology, and the CLI.

use crate::common::*;
use attrpatch::edges::{run_edges_detailed, EdgeRun, Topology};
use attrpatch::job::{run_job, JobOptions};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};

/// A fixture's job on its token ids, one thread.
fn fixture(name: &str) -> (JobOptions, serde_json::Value) {
    let dir = root().join("tests/fixtures/arch");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let mut o = JobOptions::new(dir.join(format!("{name}.onnx")));
    o.with_token_ids(ids("input_ids"), ids("corrupted_ids"), &ids("answer_ids"));
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    (o, v)
}

fn edges_of(name: &str, ig_steps: usize) -> EdgeRun {
    let (o, _) = fixture(name);
    run_edges_detailed(&o, ig_steps).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Sum of the scores of the edges out of `from`.
fn out_sum(r: &EdgeRun, from: &str) -> f64 {
    r.scores.edges.iter().filter(|e| e.from == from).map(|e| e.score).sum()
}

/// float32 sums of cancelling terms: relative 1e-3 with a floor of 1e-3 of the scale.
fn assert_close(what: &str, a: f64, b: f64, scale: f64) {
    let tol = 1e-3 * b.abs().max(scale);
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b} (tolerance {tol:.2e})");
}

/// The identity: per head, its outgoing edges sum to its node attribution
/// summed over positions (gradient at z, from the same graph); per layer, the
/// heads' outgoing edges sum to `run`'s positions-grid row summed over positions.
fn identity(name: &str) {
    let r = edges_of(name, 1);
    let (o, _) = fixture(name);
    let run = run_job(&o).unwrap().unwrap();
    let scale = r.head_attribution.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{name}: every head attribution is zero");
    for (l, row) in r.head_attribution.iter().enumerate() {
        let mut layer_sum = 0.0;
        for (h, &node) in row.iter().enumerate() {
            let edges = out_sum(&r, &format!("a{l}.h{h}"));
            assert_close(&format!("{name} a{l}.h{h}"), edges, node, scale);
            layer_sum += edges;
        }
        let positions: f64 = run.grids.positions[l].iter().sum();
        assert_close(&format!("{name} layer {l} vs run's positions grid"), layer_sum, positions, scale);
    }
}

#[test]
fn identity_gpt2() {
    identity("gpt2-legacy-op14");
}

#[test]
fn identity_llama_gqa() {
    identity("llama-legacy-op14");
}

#[test]
fn identity_gptneox_parallel() {
    identity("gptneox-legacy-op14");
}

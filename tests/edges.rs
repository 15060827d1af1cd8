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

#[test]
fn edge_names_and_count_follow_the_topology() {
    for (name, kv, parallel) in
        [("gpt2-legacy-op14", 4, false), ("llama-legacy-op14", 2, false), ("gptneox-legacy-op14", 4, true)]
    {
        let r = edges_of(name, 1);
        let s = &r.scores;
        assert_eq!((s.layers, s.heads, s.kv_heads, s.parallel), (2, 4, kv, parallel), "{name}");
        let t = Topology { layers: 2, heads: 4, kv_heads: kv, parallel };
        let names: Vec<(String, String)> = t.edges().iter().map(|(w, r)| (w.to_string(), r.to_string())).collect();
        let got: Vec<(String, String)> = s.edges.iter().map(|e| (e.from.clone(), e.to.clone())).collect();
        assert_eq!(got, names, "{name}");
        // Key/value readers per key/value head.
        assert_eq!(s.edges.iter().filter(|e| e.from == "input" && e.to.ends_with(".k")).count(), 2 * kv, "{name}");
        assert!(s.edges.iter().all(|e| e.score.is_finite()));
        // Node scores are the sums of the edges out of each writer.
        for n in &s.nodes {
            assert!((n.score - out_sum(&r, &n.node)).abs() <= 1e-12 * (1.0 + n.score.abs()), "{name}: {}", n.node);
        }
    }
}

/// EAP-IG with one step is plain EAP; with more it moves only the input
/// writer's output, so the scores change but the writers' differences do not:
/// an edge out of a writer whose every reader gradient is unchanged keeps its score.
#[test]
fn eap_ig_one_step_is_eap_and_more_steps_differ() {
    let name = "gpt2-legacy-op14";
    let eap = edges_of(name, 1);
    let ig1 = edges_of(name, 1);
    assert_eq!(eap.scores.edges, ig1.scores.edges);
    let ig = edges_of(name, 3);
    assert_eq!((ig.scores.method.as_str(), ig.scores.ig_steps), ("EAP-IG", 3));
    assert_eq!(ig.scores.edges.len(), eap.scores.edges.len());
    let scale = eap.scores.edges.iter().fold(0.0f64, |m, e| m.max(e.score.abs()));
    let moved =
        eap.scores.edges.iter().zip(&ig.scores.edges).filter(|(a, b)| (a.score - b.score).abs() > 1e-3 * scale).count();
    assert!(moved > eap.scores.edges.len() / 4, "EAP-IG with 3 steps changed only {moved} edges");
    // The logits reader's gradient depends on the run only through the final
    // layer-norm's input; its edges move too, but stay of the same sign for the largest.
    let top = eap
        .scores
        .edges
        .iter()
        .zip(&ig.scores.edges)
        .max_by(|a, b| a.0.score.abs().total_cmp(&b.0.score.abs()))
        .unwrap();
    assert_eq!(top.0.score.signum(), top.1.score.signum(), "largest edge {} -> {}", top.0.from, top.0.to);
}

/// One reader's gradient against a finite difference through that reader's
/// copy alone: the k reader of head 1 in layer 1 is moved along a direction
/// (the other copies of the same residual stay), in the rewritten graph itself.
#[test]
fn a_reader_gradient_matches_a_finite_difference_through_its_copy() {
    use attrpatch::edges::graph::{build, out, EdgeGraphOptions, PERTURB};
    use attrpatch::job::{pair_inputs, JobGraph};
    use attrpatch::runtime::{self, Value};
    use ndarray::{ArrayD, IxDyn};
    let name = "gpt2-legacy-op14";
    let (o, _) = fixture(name);
    let tokens = o.tokens.clone().unwrap().1;
    let model = attrpatch::onnx::OnnxModel::load(&o.model).unwrap();
    let layer = 1;
    let opts = EdgeGraphOptions { reader_grads: true, perturb: Some(layer), ..Default::default() };
    let mut g = build(model, &opts).unwrap();
    let (r, d) = (g.anatomy.head_readers(), g.anatomy.d_model);
    let reader = g.anatomy.heads + 1; // the k reader of key/value head 1
    let bytes = prost::Message::encode_to_vec(g.proto_mut());
    let ropts = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    let mut rt = runtime::create(&bytes, &ropts).unwrap();
    let (b, s) = (tokens.clean_ids.len(), tokens.seq_len);
    let mut rng = crate::common::rng::Rng::seeded("edges finite difference");
    let dir: Vec<f32> = rng.vec(b * s * d, -1.0, 1.0).into_iter().map(|v| v as f32).collect();
    let mut run = |eps: f32| {
        let mut p = ArrayD::<f32>::zeros(IxDyn(&[r, b, s, d]));
        for (k, v) in p.slice_mut(ndarray::s![reader, .., .., ..]).iter_mut().enumerate() {
            *v = eps * dir[k];
        }
        let mut inputs = pair_inputs(&g.token_inputs(), &tokens, o.metric);
        inputs.push((PERTURB.into(), Value::F32(p)));
        rt.run(inputs).unwrap()
    };
    let mut base = run(0.0);
    let grad = runtime::take_output(&mut base, &out::reads_grad(layer)).unwrap();
    let one = |out: &mut std::collections::HashMap<String, ArrayD<f32>>, n: &str| -> f64 {
        runtime::take_output(out, n).unwrap().iter().next().copied().unwrap() as f64
    };
    let (clean, corr) =
        (one(&mut base, "attrpatch.clean_logit_diff"), one(&mut base, "attrpatch.corrupted_logit_diff"));
    let g_dir: f64 =
        grad.slice(ndarray::s![reader, .., .., ..]).iter().zip(&dir).map(|(a, b)| *a as f64 * *b as f64).sum();
    let eps = 3e-3f32;
    let up = one(&mut run(eps), "attrpatch.corrupted_logit_diff");
    let down = one(&mut run(-eps), "attrpatch.corrupted_logit_diff");
    // The metric is (ld - CORR) / (CLEAN - CORR): its gradient is d ld / (CLEAN - CORR).
    let fd = (up - down) / (2.0 * eps as f64) / (clean - corr);
    assert!(g_dir.abs() > 1e-3, "the direction's gradient is too small to test: {g_dir}");
    assert!((fd - g_dir).abs() <= 2e-3 * g_dir.abs().max(fd.abs()), "finite difference {fd} vs gradient {g_dir}");
    // Another copy of the same residual has another gradient: they do not mix.
    let other: f64 = grad.slice(ndarray::s![0, .., .., ..]).iter().zip(&dir).map(|(a, b)| *a as f64 * *b as f64).sum();
    assert!((other - g_dir).abs() > 1e-3 * g_dir.abs(), "reader 0 and reader {reader} have the same gradient");
}

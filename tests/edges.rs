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
    identity_on(name, &fixture(name).0);
}

fn identity_on(name: &str, o: &JobOptions) {
    let r = run_edges_detailed(o, 1).unwrap_or_else(|e| panic!("{name}: {e}"));
    let run = run_job(o).unwrap().unwrap();
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

/// The GenAI builder's Llama (GroupQueryAttention, SkipSimplifiedLayerNormalization
/// whose residual sum leaves through its own output): float32, and int4 with the
/// embedding sharing the lm_head's codes (regression: "no residual add after the
/// MLP found").
#[test]
fn identity_llama_built_by_genai_float32_and_int4() {
    let contrib = root().join("tests/fixtures/contrib");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(contrib.join("llama-genai.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    for model in
        [contrib.join("llama-genai/model.onnx"), root().join("tests/fixtures/genai/int4-tied-shared-gbq/model.onnx")]
    {
        let mut o = JobOptions::new(model.clone());
        o.with_token_ids(ids("input_ids"), ids("corrupted_ids"), &ids("answer_ids"));
        o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
        identity_on(&model.display().to_string(), &o);
    }
}

#[test]
fn identity_llama_gqa() {
    identity("llama-legacy-op14");
}

#[test]
fn identity_falcon_grouped() {
    identity("falcon-legacy-op14");
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
        // Under grouped-query attention they are named as key/value heads, not as query heads.
        let kv_named = s.edges.iter().filter(|e| e.to.contains(".kv")).count();
        assert_eq!(kv_named > 0, kv < 4, "{name}: {kv_named} edges into a{{l}}.kv{{g}} readers");
        assert!(s.edges.iter().all(|e| e.to.ends_with(".q") || !e.to.contains(".h") || kv == 4), "{name}");
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
    assert_eq!((ig.scores.method.as_str(), ig.scores.ig_steps), ("EAP-IG-inputs", 3));
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
        let mut inputs = pair_inputs(&g.token_inputs(), &tokens);
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

/// Every family the edge anatomy supports, each export: the identity holds.
const SUPPORTED: &[&str] = &[
    "bloom-dynamo-op18",
    "bloom-legacy-op14",
    "gemma-legacy-op14",
    "gemma-sdpa-dynamo-op18",
    "gpt2-dynamo-op18",
    "gpt2-legacy-op17",
    "gpt2-optimum",
    "gptbigcode-legacy-op14",
    "gptj-legacy-op14",
    "gptj-sdpa-dynamo-op18",
    "phi-legacy-op14",
    "phi-sdpa-dynamo-op18",
    "gptbigcode-sdpa-dynamo-op18",
    "gptneo-dynamo-op18",
    "gptneo-legacy-op14",
    "gptneox-dynamo-op18",
    "llama-dynamo-op18",
    "llama-sdpa-dynamo-op18",
    "llama-sdpa-dynamo-op23",
    "llama-sdpa-legacy-op17",
    "mistral-legacy-op14",
    "mistral-sdpa-dynamo-op18",
    "mixtral-legacy-op14",
    "mixtral-sdpa-dynamo-op18",
    "olmo-legacy-op14",
    "olmo-sdpa-dynamo-op18",
    "opt-legacy-op14",
    "opt-sdpa-dynamo-op18",
    "phi3-legacy-op14",
    "phi3-sdpa-dynamo-op18",
    "qwen2-legacy-op14",
    "qwen2-sdpa-dynamo-op18",
    "qwen3-legacy-op14",
    "qwen3-sdpa-dynamo-op18",
    "qwen3-sdpa-dynamo-op23",
    "stablelm-legacy-op14",
    "stablelm-sdpa-dynamo-op18",
];

#[test]
fn identity_on_every_supported_export() {
    for name in SUPPORTED {
        identity(name);
    }
}

/// Families whose blocks the edge definitions do not fit yet are refused with
/// the layer, the node and what was expected.
#[test]
fn unsupported_blocks_are_refused_by_layer_and_node() {
    for (name, says) in [
        ("gemma2-legacy-op14", "/model/layers.0/post_attention_layernorm/Pow"),
        ("olmo2-legacy-op14", "/model/layers.0/Add"),
    ] {
        let (o, _) = fixture(name);
        let e = run_edges_detailed(&o, 1).err().unwrap_or_else(|| panic!("{name}: edge scores ran")).to_string();
        assert!(e.contains("layer 0") && e.contains(says) && e.contains("not supported"), "{name}: {e}");
    }
}

/// Which columns a reader's copy feeds is checked through causality: the
/// metric reads the last position, so in the last layer only that position's
/// query matters, while keys and values are read at every earlier position.
/// A column layout that mixed up queries with keys or values fails this.
#[test]
fn last_layer_query_readers_read_only_the_last_position() {
    use attrpatch::edges::graph::{build, out, EdgeGraphOptions};
    use attrpatch::job::{pair_inputs, JobGraph};
    use attrpatch::runtime;
    for name in
        ["gpt2-legacy-op14", "llama-legacy-op14", "gptneox-dynamo-op18", "falcon-legacy-op14", "bloom-legacy-op14"]
    {
        let (o, _) = fixture(name);
        let tokens = o.tokens.clone().unwrap().1;
        let model = attrpatch::onnx::OnnxModel::load(&o.model).unwrap();
        let mut g = build(model, &EdgeGraphOptions { reader_grads: true, ..Default::default() }).unwrap();
        let (heads, last) = (g.anatomy.heads, g.anatomy.blocks.len() - 1);
        let bytes = prost::Message::encode_to_vec(g.proto_mut());
        let ropts = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
        let mut rt = runtime::create(&bytes, &ropts).unwrap();
        let mut outs = rt.run(pair_inputs(&g.token_inputs(), &tokens)).unwrap();
        let grad = runtime::take_output(&mut outs, &out::reads_grad(last)).unwrap();
        let sh = grad.shape().to_vec();
        assert_eq!(sh.len(), 4, "{name}: reads are [R, B, S, d]");
        let (r, b, s) = (sh[0], sh[1], sh[2]);
        let scale = grad.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for i in 0..r {
            let early = (0..b).flat_map(|bi| (0..s - 1).map(move |t| (bi, t)));
            let early_max = early
                .map(|(bi, t)| grad.slice(ndarray::s![i, bi, t, ..]).iter().fold(0.0f32, |m, v| m.max(v.abs())))
                .fold(0.0f32, f32::max);
            if i < heads {
                assert!(
                    early_max <= 1e-6 * scale,
                    "{name}: query reader {i} has gradient {early_max} before the last position"
                );
            } else {
                assert!(
                    early_max > 1e-4 * scale,
                    "{name}: key/value reader {i} has no gradient before the last position"
                );
            }
        }
    }
}

fn attrpatch_cli(args: &[&str]) -> (bool, String) {
    let o =
        std::process::Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(args).current_dir(root()).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn cli_writes_edges_json_and_csv() {
    let out = fresh_dir("edges-cli");
    let dir = out.to_str().unwrap();
    let (ok, t) = attrpatch_cli(&[
        "edges",
        "--model",
        "models/gpt2-tiny-random.onnx",
        "--device",
        "cpu",
        "--out",
        dir,
        "--top-k",
        "3",
    ]);
    assert!(ok, "{t}");
    assert!(t.contains("1 runtime call"), "{t}");
    let s: attrpatch::edges::EdgeScores =
        serde_json::from_slice(&std::fs::read(out.join("edges.json")).unwrap()).unwrap();
    let topo = Topology { layers: s.layers, heads: s.heads, kv_heads: s.kv_heads, parallel: s.parallel };
    assert_eq!(s.edges.len(), topo.edges().len());
    assert_eq!((s.method.as_str(), s.ig_steps), ("EAP", 1));
    let csv = std::fs::read_to_string(out.join("edges.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "from,to,score");
    assert_eq!(lines.len(), s.edges.len() + 1);
    for (line, e) in lines[1..].iter().zip(&s.edges) {
        assert_eq!(*line, format!("{},{},{}", e.from, e.to, e.score));
    }
    // The printed top edges are the largest by |score|.
    let mut top: Vec<f64> = s.edges.iter().map(|e| e.score.abs()).collect();
    top.sort_by(|a, b| b.total_cmp(a));
    assert!(top[0] > 0.0);
    let largest = s.edges.iter().find(|e| e.score.abs() == top[0]).unwrap();
    assert!(t.contains(&format!("{} -> {}", largest.from, largest.to)), "{t}");
}

/// `edges --report`: the node job's files beside the edges, and report.html whose embedded data
/// carries every edge, the circuit's K and the faithfulness points.
#[test]
fn cli_report_embeds_the_edges_and_the_node_grids() {
    let out = fresh_dir("edges-cli-report");
    let dir = out.to_str().unwrap();
    let args = ["edges", "--model", "models/gpt2-tiny-random.onnx", "--device", "cpu", "--out", dir];
    let (ok, t) = attrpatch_cli(&[&args[..], &["--top-k", "5", "--faithfulness", "--report"]].concat());
    assert!(ok, "{t}");
    for f in ["heads.csv", "positions.csv", "results.json", "circuit.png", "faithfulness.png"] {
        assert!(out.join(f).is_file(), "{f} missing: {t}");
    }
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    let start = page.find(r#"<script type="application/json" id="data">"#).expect("data block") + 42;
    let end = start + page[start..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&page[start..end]).unwrap();
    let scores: attrpatch::edges::EdgeScores =
        serde_json::from_slice(&std::fs::read(out.join("edges.json")).unwrap()).unwrap();
    let edges = &data["edges"];
    assert_eq!(edges["n_edges"].as_u64(), Some(scores.edges.len() as u64), "{edges}");
    assert_eq!(edges["faithfulness"]["points"].as_array().map(|p| p.is_empty()), Some(false), "{edges}");
    assert!(data["grids"].is_array() || data["grids"].is_object(), "the node grids are in the page too");
    // Without --report there is no page.
    let plain = fresh_dir("edges-cli-no-report");
    let (ok, t) = attrpatch_cli(&[
        "edges",
        "--model",
        "models/gpt2-tiny-random.onnx",
        "--device",
        "cpu",
        "--out",
        plain.to_str().unwrap(),
    ]);
    assert!(ok, "{t}");
    assert!(!plain.join("report.html").exists());
}

#[test]
fn cli_refuses_bad_edge_options_by_flag() {
    let m = ["--model", "models/gpt2-tiny-random.onnx", "--device", "cpu"];
    for (extra, says) in [
        (vec!["--ig-steps", "0"], "--ig-steps must be at least 1"),
        (vec!["--top-k", "0"], "--top-k must be at least 1"),
        (vec!["--hook", "mlp"], "--hook"),
        (vec!["--per-prompt"], "--per-prompt"),
    ] {
        let out = fresh_dir("edges-bad");
        let mut args = vec!["edges", "--out", out.to_str().unwrap()];
        args.extend(m);
        args.extend(extra.iter().copied());
        let (ok, t) = attrpatch_cli(&args);
        assert!(!ok && t.contains(says), "{extra:?}: {t}");
        assert!(!out.join("edges.json").exists());
    }
    let out = fresh_dir("edges-gemma2");
    let model = "tests/fixtures/arch/gemma2-legacy-op14.onnx";
    let (ok, t) = attrpatch_cli(&[
        "edges",
        "--model",
        model,
        "--tokenizer",
        "tests/fixtures/arch/tokenizer-128.json",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && t.contains("layer 0") && t.contains("not supported"), "{t}");
}

#[test]
fn identity_gptj_shared_norm() {
    identity("gptj-legacy-op14");
}

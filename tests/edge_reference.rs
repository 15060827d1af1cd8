//! Edge scores (EAP and EAP-IG-inputs) against the independent PyTorch float64
//! reference of tools/edge_reference.py (tests/fixtures/edges/NAME.json: its own
//! forward with one input copy per reader, self-checked there against finite
//! differences and the identity), on a GPT-2, a Llama with grouped-query
//! attention, a GPT-NeoX with parallel attention and MLP, a Gemma (embedding
//! scale, grouped-query attention), a GPTBigCode (multi-query attention) and a
//! Falcon (parallel block and grouped-query attention); the noising convention
//! (the EAP-IG codebase's) with every ablation on the GPT-2, Llama and GPT-NeoX ones.
//!
//! Tolerance (issue 14): |ours - ref| <= 1e-3 |ref| + 1e-2 max|ref|. Edge
//! scores are sums whose terms cancel; float32 misses a tighter floor.

use crate::common::*;
use attrpatch::edges::convention::{Ablation, Convention, Method};
use attrpatch::edges::{run_edges_method, EdgeMethod, EdgeScores, Topology};
use attrpatch::job::JobOptions;
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};
use serde_json::Value;

const REL: f64 = 1e-3;
const FLOOR: f64 = 1e-2;

fn reference(name: &str) -> Value {
    let path = root().join(format!("tests/fixtures/edges/{name}.json"));
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (tools/edge_reference.py writes it)", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (from, to, score) of a reference edge list.
fn ref_edges(list: &Value) -> Vec<(String, String, f64)> {
    list.as_array()
        .expect("edge list")
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
                e["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn topology(r: &Value) -> Topology {
    let t = &r["topology"];
    let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("topology.{k}")) as usize;
    Topology {
        layers: n("layers"),
        heads: n("heads"),
        kv_heads: n("kv_heads"),
        parallel: t["parallel"].as_bool().unwrap(),
    }
}

fn options(name: &str, r: &Value) -> JobOptions {
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(r[k].clone()).unwrap() };
    let mut o = JobOptions::new(root().join(format!("tests/fixtures/arch/{name}.onnx")));
    o.with_token_ids(ids("input_ids"), ids("corrupted_ids"), &ids("answer_ids"));
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    o
}

/// A share of the tolerance that misses it (NaN included).
fn over(share: f64) -> bool {
    share.is_nan() || share > 1.0
}

/// Names and order equal, then every score within tolerance; the failure names
/// the worst edges. Returns the largest share of the tolerance used.
fn assert_edges_close(what: &str, ours: &EdgeScores, want: &[(String, String, f64)]) -> f64 {
    let got: Vec<(&str, &str)> = ours.edges.iter().map(|e| (e.from.as_str(), e.to.as_str())).collect();
    let expected: Vec<(&str, &str)> = want.iter().map(|(f, t, _)| (f.as_str(), t.as_str())).collect();
    assert_eq!(got.len(), expected.len(), "{what}: {} edges, the reference has {}", got.len(), expected.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!("{what}: edge {i} is {:?}, the reference's is {:?}", got[i], expected[i]);
    }
    let scale = want.iter().map(|w| w.2.abs()).fold(0.0, f64::max);
    assert!(scale > 0.0, "{what}: every reference score is 0");
    let mut misses: Vec<(f64, usize)> = ours
        .edges
        .iter()
        .zip(want)
        .enumerate()
        .map(|(i, (o, w))| ((o.score - w.2).abs() / (REL * w.2.abs() + FLOOR * scale), i))
        .collect();
    misses.sort_by(|a, b| b.0.total_cmp(&a.0));
    let worst = misses[0].0;
    if over(worst) {
        let lines: Vec<String> = misses
            .iter()
            .take(8)
            .filter(|m| over(m.0))
            .map(|&(share, i)| {
                format!(
                    "  {} -> {}: ours {:.6e}, reference {:.6e} ({share:.2}x tolerance)",
                    want[i].0, want[i].1, ours.edges[i].score, want[i].2
                )
            })
            .collect();
        let n = misses.iter().filter(|m| over(m.0)).count();
        panic!(
            "{what}: {n} of {} edges miss |ours - ref| <= {REL} |ref| + {FLOOR} * {scale:.4e}; worst:\n{}",
            want.len(),
            lines.join("\n")
        );
    }
    worst
}

/// Each head's node score (its outgoing edges summed) against the reference's
/// node attribution by ordinary autograd: the identity, on our side.
fn assert_head_nodes_close(what: &str, ours: &EdgeScores, r: &Value) {
    let want = r["node_attribution"].as_object().expect("node_attribution");
    let scale = want.values().map(|v| v.as_f64().unwrap().abs()).fold(0.0, f64::max);
    for (head, w) in want {
        let w = w.as_f64().unwrap();
        let got = ours
            .nodes
            .iter()
            .find(|n| &n.node == head)
            .unwrap_or_else(|| panic!("{what}: no node score for {head}"))
            .score;
        assert!(
            (got - w).abs() <= REL * w.abs() + FLOOR * scale,
            "{what}: head {head}: sum of its edges {got:.6e}, reference node attribution {w:.6e}"
        );
    }
}

fn check(name: &str) {
    check_export(name, name);
}

/// `export` (a fixture of the same weights as `name`'s, e.g. another exporter)
/// against `name`'s reference.
fn check_export(export: &str, name: &str) {
    let r = reference(name);
    let topo = topology(&r);
    let o = options(export, &r);
    let eap_ref = ref_edges(&r["eap"]);
    let steps = r["eap_ig"]["steps"].as_u64().expect("eap_ig.steps") as usize;
    assert!(steps > 1, "{name}: the reference's EAP-IG must have more than one step");
    let ig_ref = ref_edges(&r["eap_ig"]["edges"]);
    for (ig_steps, want, label) in [(1, &eap_ref, "EAP"), (steps, &ig_ref, "EAP-IG")] {
        let what = format!("{export} {label} (ig_steps {ig_steps})");
        let ours = attrpatch::edges::run_edges(&o, ig_steps).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(ours.ig_steps, ig_steps, "{what}: ig_steps");
        let shape = (ours.layers, ours.heads, ours.kv_heads, ours.parallel);
        assert_eq!(
            shape,
            (topo.layers, topo.heads, topo.kv_heads, topo.parallel),
            "{what}: (layers, heads, kv_heads, parallel)"
        );
        let worst = assert_edges_close(&what, &ours, want);
        if ig_steps == 1 {
            assert_head_nodes_close(&what, &ours, &r);
        }
        eprintln!("{what}: {} edges, worst {worst:.2e} of the tolerance", want.len());
    }
}

/// The reference lists exactly `Topology::edges()` in its order, so the name
/// check above tests the scorer, not a mismatch of conventions.
fn check_reference_follows_topology(name: &str) {
    let r = reference(name);
    let names: Vec<(String, String)> =
        topology(&r).edges().iter().map(|(w, v)| (w.to_string(), v.to_string())).collect();
    for key in ["eap", "eap_ig"] {
        let list = if key == "eap" { &r["eap"] } else { &r["eap_ig"]["edges"] };
        let got: Vec<(String, String)> = ref_edges(list).into_iter().map(|(f, t, _)| (f, t)).collect();
        assert_eq!(got, names, "{name}: the reference's {key} edges differ from Topology::edges()");
    }
    let passed: Vec<&str> = r["checks"]["passed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for c in ["hf_logits", "onnx_logits", "identity", "edge_fd", "reader_fd", "ig1_equals_eap"] {
        assert!(passed.contains(&c), "{name}: the reference did not record its {c} check");
    }
}

macro_rules! fixtures {
    ($($id:ident => $name:literal),* $(,)?) => {
        $(mod $id {
            #[test]
            fn scores_match_reference() {
                super::check($name);
            }
            #[test]
            fn reference_follows_topology() {
                super::check_reference_follows_topology($name);
            }
        })*
    };
}

fixtures! {
    gpt2_legacy_op14 => "gpt2-legacy-op14",
    llama_legacy_op14 => "llama-legacy-op14",
    gptneox_legacy_op14 => "gptneox-legacy-op14",
    gemma_legacy_op14 => "gemma-legacy-op14",
    gptbigcode_legacy_op14 => "gptbigcode-legacy-op14",
}

/// Falcon's new decoder architecture: parallel attention and MLP with their own
/// layer-norms and grouped-query attention in one fused projection laid out
/// [kv_heads, heads/kv_heads + 2, head_dim].
#[test]
fn falcon_legacy_op14_scores_match_reference() {
    check("falcon-legacy-op14");
}

#[test]
fn falcon_legacy_op14_reference_follows_topology() {
    check_reference_follows_topology("falcon-legacy-op14");
}

/// Every export of one architecture holds the same weights (tools/fixtures/README.md),
/// so the legacy export's reference holds the others' scores too.
macro_rules! other_exports {
    ($($(#[$attr:meta])* $id:ident => $export:literal of $name:literal),* $(,)?) => {
        mod other_exports {
            $(#[test]
            $(#[$attr])*
            fn $id() {
                super::check_export($export, $name);
            })*
        }
    };
}

other_exports! {
    gpt2_dynamo_op18 => "gpt2-dynamo-op18" of "gpt2-legacy-op14",
    gpt2_legacy_op17 => "gpt2-legacy-op17" of "gpt2-legacy-op14",
    gpt2_optimum => "gpt2-optimum" of "gpt2-legacy-op14",
    llama_dynamo_op18 => "llama-dynamo-op18" of "llama-legacy-op14",
    llama_sdpa_legacy_op17 => "llama-sdpa-legacy-op17" of "llama-legacy-op14",
    llama_sdpa_dynamo_op18 => "llama-sdpa-dynamo-op18" of "llama-legacy-op14",
    llama_sdpa_dynamo_op23 => "llama-sdpa-dynamo-op23" of "llama-legacy-op14",
    gemma_sdpa_dynamo_op18 => "gemma-sdpa-dynamo-op18" of "gemma-legacy-op14",
    // Fused Q/K/V projections whose node names the dynamo exporter drops ("node_MatMul_75").
    gptneox_dynamo_op18 => "gptneox-dynamo-op18" of "gptneox-legacy-op14",
    gptbigcode_sdpa_dynamo_op18 => "gptbigcode-sdpa-dynamo-op18" of "gptbigcode-legacy-op14",
    falcon_sdpa_dynamo_op18 => "falcon-sdpa-dynamo-op18" of "falcon-legacy-op14",
}

/// The reference recorded each of `checks` as passed.
fn assert_reference_checked(name: &str, r: &Value, checks: &[&str]) {
    let passed: Vec<&str> = r["checks"]["passed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for c in checks {
        assert!(passed.contains(c), "{name}: the reference did not record its {c} check");
    }
}

/// Whether `values` miss `want` by more than the tolerance anywhere.
fn misses_reference(values: &[f64], want: &[(String, String, f64)]) -> bool {
    let scale = want.iter().map(|w| w.2.abs()).fold(0.0, f64::max);
    values.iter().zip(want).any(|(v, w)| over((v - w.2).abs() / (REL * w.2.abs() + FLOOR * scale)))
}

/// One test module of `check` on each fixture the conventions are held on: GPT-2,
/// Llama (grouped-query) and GPT-NeoX (parallel).
macro_rules! per_fixture {
    ($module:ident, $check:ident) => {
        mod $module {
            #[test]
            fn gpt2_legacy_op14() {
                super::$check("gpt2-legacy-op14");
            }
            #[test]
            fn llama_legacy_op14() {
                super::$check("llama-legacy-op14");
            }
            #[test]
            fn gptneox_legacy_op14() {
                super::$check("gptneox-legacy-op14");
            }
        }
    };
}

const ABLATIONS: [(Ablation, &str); 4] = [
    (Ablation::Patching, "patching"),
    (Ablation::Zero, "zero"),
    (Ablation::Mean, "mean"),
    (Ablation::MeanPositional, "mean-positional"),
];

/// The noising convention (the EAP-IG codebase's) for every ablation, and its
/// EAP-IG-inputs, against the reference's "noising" lists.
fn check_noising(name: &str) {
    let r = reference(name);
    let o = options(name, &r);
    let mut seen: Vec<(&str, Vec<f64>)> = vec![];
    for (ablation, key) in ABLATIONS {
        let what = format!("{name} noising EAP, --ablation {key}");
        let m = EdgeMethod { method: Method::Eap, ig_steps: 1, convention: Convention::Noising, ablation };
        let run = run_edges_method(&o, &m).unwrap_or_else(|e| panic!("{what}: {e}"));
        let ours = &run.scores;
        assert_eq!((ours.convention.as_str(), ours.ablation.as_str()), ("noising", key), "{what}: labels");
        let want = ref_edges(&r["noising"][key]);
        let worst = assert_edges_close(&what, ours, &want);
        // The identity on our side: each head's outgoing edges sum to its node attribution.
        for (l, row) in run.head_attribution.iter().enumerate() {
            for (h, a) in row.iter().enumerate() {
                let node = ours.nodes.iter().find(|n| n.node == format!("a{l}.h{h}")).unwrap().score;
                assert!((node - a).abs() <= 1e-4 * (1.0 + a.abs()), "{what}: a{l}.h{h}: edges {node} vs node {a}");
            }
        }
        eprintln!("{what}: {} edges, worst {worst:.2e} of the tolerance", want.len());
        if ablation.is_mean() {
            // One pair per call: the means are the data set's, summed over the calls' first pass.
            let mut one = options(name, &r);
            one.batch_size = Some(1);
            let split = run_edges_method(&one, &m).unwrap_or_else(|e| panic!("{what}, one pair per call: {e}"));
            assert_eq!(split.runtime_calls, 2 * r["input_ids"].as_array().unwrap().len(), "{what}: two passes");
            assert_edges_close(&format!("{what}, one pair per call"), &split.scores, &want);
        }
        seen.push((key, ours.edges.iter().map(|e| e.score).collect()));
    }
    // The test can fail: a sign error, or any other ablation's (a per-position mean for the
    // mean, the whole data set's for mean-positional), misses each reference.
    for (key, values) in &seen {
        let want = ref_edges(&r["noising"][*key]);
        let negated: Vec<f64> = values.iter().map(|v| -v).collect();
        assert!(misses_reference(&negated, &want), "{name} {key}: the negated scores pass too");
        for (other, theirs) in &seen {
            if other != key {
                assert!(misses_reference(theirs, &want), "{name}: --ablation {other}'s scores pass {key}'s reference");
            }
        }
    }
    let steps = r["noising_eap_ig"]["steps"].as_u64().unwrap() as usize;
    let what = format!("{name} noising EAP-IG (ig_steps {steps})");
    let m = EdgeMethod {
        method: Method::EapIgInputs,
        ig_steps: steps,
        convention: Convention::Noising,
        ablation: Ablation::Patching,
    };
    let ours = run_edges_method(&o, &m).unwrap_or_else(|e| panic!("{what}: {e}")).scores;
    let worst = assert_edges_close(&what, &ours, &ref_edges(&r["noising_eap_ig"]["edges"]));
    eprintln!("{what}: worst {worst:.2e} of the tolerance");
    assert_reference_checked(name, &r, &["noising_edge_fd", "noising_ig_vs_denoising"]);
}

per_fixture!(noising, check_noising);

/// EAP-IG-activations (both conventions; noising with every ablation) and
/// clean-corrupted (both conventions) against the reference's lists, each in as
/// many runtime calls as plain EAP (a mean ablation: twice as many, its first pass).
fn check_family(name: &str) {
    let r = reference(name);
    let o = options(name, &r);
    let steps = r["ig_activations"]["steps"].as_u64().expect("ig_activations.steps") as usize;
    let plain = run_edges_method(&o, &EdgeMethod::steps(1)).unwrap_or_else(|e| panic!("{name} EAP: {e}"));
    let mut cases = vec![(
        Method::EapIgActivations,
        steps,
        Convention::Denoising,
        Ablation::Patching,
        &r["ig_activations"]["denoising"],
    )];
    for (ablation, key) in ABLATIONS {
        cases.push((
            Method::EapIgActivations,
            steps,
            Convention::Noising,
            ablation,
            &r["ig_activations"]["noising"][key],
        ));
    }
    for (convention, key) in [(Convention::Denoising, "denoising"), (Convention::Noising, "noising")] {
        cases.push((Method::CleanCorrupted, 1, convention, Ablation::Patching, &r["clean_corrupted"][key]));
    }
    for (method, ig_steps, convention, ablation, list) in cases {
        let m = EdgeMethod { method, ig_steps, convention, ablation };
        let what = format!("{name} {}", m.describe());
        let run = run_edges_method(&o, &m).unwrap_or_else(|e| panic!("{what}: {e}"));
        let s = &run.scores;
        let labels = (s.method.as_str(), s.ig_steps, s.convention.as_str(), s.ablation.as_str());
        assert_eq!(labels, (method.label(), ig_steps, convention.label(), ablation.label()), "{what}: labels");
        let calls = plain.runtime_calls * if ablation.is_mean() { 2 } else { 1 };
        assert_eq!(run.runtime_calls, calls, "{what}: runtime calls");
        let want = ref_edges(list);
        let worst = assert_edges_close(&what, s, &want);
        eprintln!("{what}: {} edges, worst {worst:.2e} of the tolerance", want.len());
        // The test can fail: plain EAP of the same convention and ablation, or the negated
        // scores, miss this reference.
        let values: Vec<f64> = s.edges.iter().map(|e| e.score).collect();
        let negated: Vec<f64> = values.iter().map(|v| -v).collect();
        assert!(misses_reference(&negated, &want), "{what}: the negated scores pass too");
        let base = EdgeMethod { method: Method::Eap, ig_steps: 1, convention, ablation };
        let eap = run_edges_method(&o, &base).unwrap_or_else(|e| panic!("{what}, EAP: {e}")).scores;
        let eap: Vec<f64> = eap.edges.iter().map(|e| e.score).collect();
        assert!(misses_reference(&eap, &want), "{what}: plain EAP's scores pass its reference");
    }
    let checks = ["ig_activations_held", "ig_activations_reader_fd", "clean_corrupted_noising_vs_denoising"];
    assert_reference_checked(name, &r, &checks);
}

per_fixture!(family, check_family);

/// EAP-IG-activations with a mean ablation, one pair per call: the means are the
/// whole set's (the first pass sums over the calls), the scores the same.
#[test]
fn ig_activations_mean_one_pair_per_call() {
    let name = "gpt2-legacy-op14";
    let r = reference(name);
    let mut o = options(name, &r);
    o.batch_size = Some(1);
    let steps = r["ig_activations"]["steps"].as_u64().unwrap() as usize;
    let m = EdgeMethod {
        method: Method::EapIgActivations,
        ig_steps: steps,
        convention: Convention::Noising,
        ablation: Ablation::MeanPositional,
    };
    let run = run_edges_method(&o, &m).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.runtime_calls, 2 * r["input_ids"].as_array().unwrap().len(), "two passes of one pair each");
    assert_edges_close(
        "one pair per call",
        &run.scores,
        &ref_edges(&r["ig_activations"]["noising"]["mean-positional"]),
    );
}

/// Combinations without a definition are refused before any work, naming the flag and the fix.
#[test]
fn refused_combinations_say_what_to_use() {
    let r = reference("gpt2-legacy-op14");
    let o = options("gpt2-legacy-op14", &r);
    let cases = [
        (
            EdgeMethod {
                method: Method::Eap,
                ig_steps: 1,
                convention: Convention::Denoising,
                ablation: Ablation::Mean,
            },
            "--convention noising",
        ),
        (
            EdgeMethod {
                method: Method::EapIgInputs,
                ig_steps: 4,
                convention: Convention::Noising,
                ablation: Ablation::Zero,
            },
            "drop --ig-steps",
        ),
    ];
    for (m, fix) in cases {
        let e = match run_edges_method(&o, &m) {
            Ok(_) => panic!("{m:?} ran"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("--ablation") && e.contains(fix), "{m:?}: {e}");
    }
}

/// EAP-IG-activations runs 1 + C N rows per pair: the pairs per call shrink with it.
/// Under a budget that holds every pair of plain EAP in one call it takes more calls,
/// to the same scores.
#[test]
fn ig_activations_sizes_its_calls_by_its_rows() {
    let mut o = JobOptions::new(bundled_model());
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    let m = EdgeMethod::new(Method::EapIgActivations, 5);
    let free = run_edges_method(&o, &m).unwrap();
    o.max_memory = Some(300 << 20);
    let eap = run_edges_method(&o, &EdgeMethod::steps(1)).unwrap();
    assert_eq!(eap.runtime_calls, 1, "plain EAP fits 300 MiB in one call");
    let tight = run_edges_method(&o, &m).unwrap();
    assert!(tight.runtime_calls > 1, "EAP-IG-activations ran {} call under 300 MiB", tight.runtime_calls);
    let scale = free.scores.edges.iter().map(|e| e.score.abs()).fold(0.0, f64::max);
    for (a, b) in tight.scores.edges.iter().zip(&free.scores.edges) {
        assert!((a.score - b.score).abs() <= 1e-5 * scale, "{} -> {}: {} vs {}", a.from, a.to, a.score, b.score);
    }
}

//! AtP* (`run --method atp-star`): the QK-fix against the attention pattern
//! recomputed through the plain model with the patched query or key fed in,
//! GradDrop's sweeps against finite differences of the model with a layer's
//! residual writes held constant, and the CLI's files and refusals.

use crate::common::by_hand::{Pairs, Plain};
use crate::common::root;
use attrpatch::atp_star::graph::Plan;
use attrpatch::atp_star::names::raw;
use attrpatch::augment::{augment_with, Anatomy, AugmentOptions};
use attrpatch::hooks::HookKind;
use attrpatch::job::{pair_inputs, JobGraph};
use attrpatch::onnx::OnnxModel;
use attrpatch::prompts::TokenizedPrompts;
use attrpatch::runtime::{self, Device, RuntimeKind, RuntimeOptions};
use ndarray::{ArrayD, Axis};
use prost::Message;
use std::collections::HashMap;

/// A fixture of tests/fixtures/arch: its model, pairs and head count.
fn fixture(name: &str) -> (OnnxModel, Pairs, TokenizedPrompts, usize) {
    let dir = root().join("tests/fixtures/arch");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let (clean, corrupted, answers) = (ids("input_ids"), ids("corrupted_ids"), ids("answer_ids"));
    let pairs = Pairs::new(&clean, &corrupted, &answers);
    let mut o = attrpatch::job::JobOptions::new(dir.join(format!("{name}.onnx")));
    o.with_token_ids(clean, corrupted, &answers);
    let tokens = o.tokens.take().unwrap().1;
    let model = OnnxModel::load(&o.model).unwrap();
    (model, pairs, tokens, v["n_heads"].as_u64().unwrap() as usize)
}

/// The AtP* graph's outputs (raw ones included) on the fixture's pairs.
fn atp_star_outputs(
    model: &OnnxModel,
    tokens: &TokenizedPrompts,
    heads: usize,
    grad_drop: bool,
) -> HashMap<String, ArrayD<f32>> {
    let aug = augment_with(
        OnnxModel::load(&model.path).unwrap(),
        AugmentOptions { raw_outputs: true, heads: Some(heads), atp_star: Some(grad_drop), ..Default::default() },
    )
    .unwrap();
    let opts = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    let mut rt = runtime::create(&aug.proto.encode_to_vec(), &opts).unwrap();
    rt.run(pair_inputs(&aug.token_inputs(), tokens)).unwrap()
}

fn plan(model: &OnnxModel, heads: usize, grad_drop: bool) -> Plan {
    let anat = Anatomy::read(model, &HookKind::AttnOut).unwrap();
    Plan::read(model, &anat, heads, grad_drop).unwrap()
}

/// sum over `axes` of g * (a - b), for g, a, b of one shape.
fn weighted_change(g: &ArrayD<f32>, a: &ArrayD<f32>, b: &ArrayD<f32>, axes: &[usize]) -> ArrayD<f64> {
    let mut x: ArrayD<f64> =
        ndarray::Zip::from(g).and(a).and(b).map_collect(|&g, &a, &b| g as f64 * (a as f64 - b as f64));
    for &ax in axes.iter().rev() {
        x = x.sum_axis(Axis(ax));
    }
    x
}

fn max_abs_diff(got: &ArrayD<f32>, want: &ArrayD<f64>) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "shapes {:?} and {:?}", got.shape(), want.shape());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want.iter()).fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    (err, scale)
}

/// Each query's and each key's QK-fix equals sum g (A' - A), A' the pattern
/// the plain model computes with that query (key) fed its clean value.
fn check_qk_fix(name: &str) {
    let (model, pairs, tokens, heads) = fixture(name);
    let outs = atp_star_outputs(&model, &tokens, heads, false);
    for p in plan(&model, heads, false).patterns() {
        let (q, kt, probs) = (p.q.clone(), p.kt.clone(), p.probs().to_string());
        let mut plain = Plain::new(&model, &[], &[q.clone(), kt.clone(), probs.clone()]);
        let clean = plain.run(&pairs.clean, vec![]);
        let corrupted = plain.run(&pairs.corrupted, vec![]);
        let a = &corrupted[&probs];
        let g = &outs[&raw("probs_grad", p.layer)];
        assert_eq!(g.shape(), a.shape(), "{name} layer {}: dL/dA and A", p.layer);
        let rank = a.ndim();

        // Queries: row t of the pattern depends on q_t alone, so one run patches every row.
        let mut cut_q = Plain::new(&model, &[(q.clone(), clean[&q].ndim())], &[probs.clone()]);
        let aq = cut_q.run(&pairs.corrupted, vec![(q.clone(), clean[&q].clone())]).remove(&probs).unwrap();
        let want_q = weighted_change(g, &aq, a, &[rank - 1]);
        let (err, scale) = max_abs_diff(&outs[&raw("query", p.layer)], &want_q);
        assert!(err <= 1e-5 * scale.max(1.0), "{name} layer {}: queries off by {err:.2e} (scale {scale:.2e})", p.layer);

        // Keys: one run per key position, the keys' last axis.
        let kts = corrupted[&kt].shape().to_vec();
        let keys = *kts.last().unwrap();
        let mut cut_k = Plain::new(&model, &[(kt.clone(), kts.len())], &[probs.clone()]);
        let got_k = &outs[&raw("key", p.layer)];
        let mut worst = (0f64, 0f64);
        for s in 0..keys {
            let mut fed = corrupted[&kt].clone();
            fed.index_axis_mut(Axis(kts.len() - 1), s).assign(&clean[&kt].index_axis(Axis(kts.len() - 1), s));
            let ak = cut_k.run(&pairs.corrupted, vec![(kt.clone(), fed)]).remove(&probs).unwrap();
            let want = weighted_change(g, &ak, a, &[rank - 2, rank - 1]);
            let got = got_k.index_axis(Axis(got_k.ndim() - 1), s).to_owned().into_dyn();
            let (err, scale) = max_abs_diff(&got, &want);
            worst = (worst.0.max(err), worst.1.max(scale));
        }
        assert!(
            worst.0 <= 1e-5 * worst.1.max(1.0),
            "{name} layer {}: keys off by {:.2e} (scale {:.2e})",
            p.layer,
            worst.0,
            worst.1
        );
        eprintln!("{name} layer {}: QK-fix vs recomputed pattern, query {err:.1e}, key {:.1e}", p.layer, worst.0);
    }
}

/// Every attention form: eager (GPT-2 legacy), SDPA decompositions (dynamo),
/// GQA and rotary (Llama, GPT-NeoX), multi-query (GPT-BigCode), ALiBi (BLOOM),
/// opset 23's Attention op (normalised), Falcon's rotary GQA.
#[test]
fn the_qk_fix_equals_the_pattern_recomputed_with_the_patched_query_or_key() {
    for name in [
        "gpt2-legacy-op14",
        "gpt2-dynamo-op18",
        "llama-legacy-op14",
        "llama-sdpa-dynamo-op18",
        "llama-sdpa-dynamo-op23",
        "gptneox-dynamo-op18",
        "gptbigcode-sdpa-dynamo-op18",
        "bloom-legacy-op14",
        "bloom-dynamo-op18",
        "falcon-sdpa-dynamo-op18",
    ] {
        check_qk_fix(name);
    }
}

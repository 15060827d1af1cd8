//! Every exporter x architecture fixture made by tools/make_fixtures.py
//! (tests/fixtures/arch/NAME.onnx + NAME.json) against its PyTorch autograd
//! reference, through ONNX Runtime, at the core tolerance.

use crate::common::*;
use attrpatch::job::{run_job, JobOptions};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};

fn options(name: &str) -> (JobOptions, serde_json::Value) {
    let dir = root().join("tests/fixtures/arch");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let (clean, corrupted, answers) = (ids("input_ids"), ids("corrupted_ids"), ids("answer_ids"));
    let mut o = JobOptions::new(dir.join(format!("{name}.onnx")));
    o.with_token_ids(clean, corrupted, &answers);
    o.heads = v["n_heads"].as_u64().map(|h| h as usize);
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    (o, v)
}

fn check(name: &str) {
    let (o, v) = options(name);
    let r = run_job(&o).unwrap_or_else(|e| panic!("{name}: {e}")).unwrap();
    let grid = |k: &str| -> Vec<Vec<f64>> { serde_json::from_value(v[k].clone()).unwrap() };
    assert!(close(r.clean_logit_diff, v["clean_logit_diff"].as_f64().unwrap()), "{name}: clean ld");
    assert!(close(r.corrupted_logit_diff, v["corrupted_logit_diff"].as_f64().unwrap()), "{name}: corrupted ld");
    let eh = assert_grid_close(&format!("{name} heads"), &r.grids.heads, &grid("heads"));
    let ep = assert_grid_close(&format!("{name} positions"), &r.grids.positions, &grid("positions"));
    eprintln!("{name}: max relative error heads {eh:.2e}, positions {ep:.2e}");
}

#[test]
fn gpt2_dynamo_op18() {
    check("gpt2-dynamo-op18");
}

#[test]
fn gpt2_legacy_op14() {
    check("gpt2-legacy-op14");
}

#[test]
fn gpt2_legacy_op17() {
    check("gpt2-legacy-op17");
}

#[test]
fn gpt2_optimum() {
    check("gpt2-optimum");
}

#[test]
fn gptneox_dynamo_op18() {
    check("gptneox-dynamo-op18");
}

#[test]
fn gptneox_legacy_op14() {
    check("gptneox-legacy-op14");
}

#[test]
fn llama_dynamo_op18() {
    check("llama-dynamo-op18");
}

#[test]
fn llama_legacy_op14() {
    check("llama-legacy-op14");
}

/// The patching graph on every exporter x architecture (rotary, GQA,
/// dynamo and legacy hooks, rank-2 and rank-3 hook tensors) against patching
/// by hand through the plain model.
#[test]
fn exact_patching_matches_patching_by_hand_on_every_architecture() {
    for name in [
        "gpt2-dynamo-op18",
        "gpt2-legacy-op14",
        "gpt2-legacy-op17",
        "gpt2-optimum",
        "gptneox-dynamo-op18",
        "gptneox-legacy-op14",
        "llama-dynamo-op18",
        "llama-legacy-op14",
    ] {
        let (o, v) = options(name);
        let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
        let pairs = by_hand::Pairs::new(&ids("input_ids"), &ids("corrupted_ids"), &ids("answer_ids"));
        let (want_heads, want_positions) = by_hand::exact_grids(&o.model, &pairs, o.heads.unwrap());
        let exact = attrpatch::patch::run(&o, attrpatch::patch::Estimator::Exact { positions: true }, 64)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Float32 noise in a logit difference, amplified by 1 / (CLEAN - CORR) (up to ~30 here).
        let scale = want_positions.iter().flatten().fold(1f64, |m, v| m.max(v.abs()));
        let eh = by_hand::assert_abs_close(&format!("{name} heads"), &exact.grids.heads, &want_heads, 1e-4 * scale);
        let ep = by_hand::assert_abs_close(
            &format!("{name} positions"),
            &exact.grids.positions,
            &want_positions,
            1e-4 * scale,
        );
        eprintln!("{name}: exact vs by hand, max abs error heads {eh:.2e}, positions {ep:.2e}");
    }
}

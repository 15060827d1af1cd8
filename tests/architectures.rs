//! Every exporter x architecture fixture made by tools/make_fixtures.py
//! (tests/fixtures/arch/NAME.onnx + NAME.json) against its PyTorch autograd
//! reference, through ONNX Runtime, at the core tolerance.

mod common;
use attrpatch::job::{run_job, JobOptions};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};
use common::*;

fn check(name: &str) {
    let dir = root().join("tests/fixtures/arch");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let (clean, corrupted, answers) = (ids("input_ids"), ids("corrupted_ids"), ids("answer_ids"));
    let mut o = JobOptions::new(dir.join(format!("{name}.onnx")));
    o.with_token_ids(clean, corrupted, &answers);
    o.heads = v["n_heads"].as_u64().map(|h| h as usize);
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
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

//! The bundled model (models/ioi-gpt2, trained on synthetic IOI sentences)
//! still loads, still does IOI on the tutorial's prompts, and its grids match
//! the PyTorch reference saved beside it.

use crate::common::*;
use attrpatch::job::{run_job, JobOptions};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};

fn ioi_model() -> std::path::PathBuf {
    root().join("models/ioi-gpt2/model.onnx")
}

fn reference() -> (serde_json::Value, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let p = root().join("models/ioi-gpt2/ioi-reference.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    let heads = serde_json::from_value(v["heads"].clone()).unwrap();
    let positions = serde_json::from_value(v["positions"].clone()).unwrap();
    (v, heads, positions)
}

#[test]
fn bundled_model_does_ioi_and_matches_pytorch() {
    let mut o = JobOptions::new(ioi_model());
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    let r = run_job(&o).unwrap().unwrap();
    assert!(r.clean_metric > 1.0, "clean logit diff {} should be clearly positive", r.clean_metric);
    assert!(r.corrupted_metric < -1.0, "corrupted logit diff {} should be clearly negative", r.corrupted_metric);
    let (v, heads, positions) = reference();
    assert!(close(r.clean_metric, v["clean_logit_diff"].as_f64().unwrap()));
    assert!(close(r.corrupted_metric, v["corrupted_logit_diff"].as_f64().unwrap()));
    let eh = assert_grid_close("bundled heads", &r.grids.heads, &heads);
    let ep = assert_grid_close("bundled positions", &r.grids.positions, &positions);
    eprintln!("bundled model: max relative error heads {eh:.2e}, positions {ep:.2e}");
}

#[test]
fn the_default_job_uses_the_bundled_model() {
    let out = fresh_dir("bundled");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["run", "--device", "cpu", "--out", out.to_str().unwrap()])
        .current_dir(root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("models/ioi-gpt2/model.onnx"), "{text}");
}

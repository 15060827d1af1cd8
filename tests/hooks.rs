//! Hook choices: presets for the residual stream and MLP outputs, and
//! user patterns over tensor names.

use crate::common::*;
use attrpatch::hooks::{find_hooks, HookKind};
use attrpatch::job::{run_job, JobOptions};
use attrpatch::onnx::OnnxModel;
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};

fn tensors(model: &std::path::Path, kind: &str) -> Vec<String> {
    let m = OnnxModel::load(model).unwrap();
    find_hooks(&m, &kind.parse().unwrap()).unwrap().into_iter().map(|h| h.tensor).collect()
}

#[test]
fn resid_and_mlp_presets_find_block_and_mlp_outputs_in_both_exporters() {
    assert_eq!(
        tensors(&legacy_op14(), "resid"),
        ["/transformer/h.0/Add_1_output_0", "/transformer/h.1/Add_1_output_0"]
    );
    assert_eq!(
        tensors(&legacy_op14(), "mlp"),
        ["/transformer/h.0/mlp/c_proj/Reshape_1_output_0", "/transformer/h.1/mlp/c_proj/Reshape_1_output_0"]
    );
    assert_eq!(tensors(&dynamo_op18(), "resid"), ["add_8", "add_13"]);
    assert_eq!(tensors(&dynamo_op18(), "mlp"), ["view_12", "view_23"]);
}

fn positions(kind: HookKind) -> Vec<Vec<f64>> {
    let mut o = JobOptions::new(legacy_op14());
    o.hooks = kind;
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    run_job(&o).unwrap().unwrap().grids.positions
}

#[test]
fn a_tensor_pattern_naming_the_attention_hooks_gives_the_attn_positions_grid() {
    let by_pattern = positions(r"/transformer/h\.\d+/attn/c_proj/Reshape_output_0".parse().unwrap());
    assert_grid_close("pattern vs preset", &by_pattern, &reference("ioi-reference.json").positions);
}

#[test]
fn resid_grid_of_the_last_block_carries_the_whole_effect_at_the_last_position() {
    // After the last block only the last position reaches the metric: every
    // other position's gradient, hence attribution, is exactly zero there.
    let g = positions(HookKind::Resid);
    let last = g.last().unwrap();
    assert!(last[..last.len() - 1].iter().all(|&v| v == 0.0), "{last:?}");
    assert!(last[last.len() - 1] != 0.0);
}

#[test]
fn a_pattern_that_matches_nothing_or_is_invalid_says_so() {
    let m = OnnxModel::load(&legacy_op14()).unwrap();
    let e = find_hooks(&m, &"no_such_tensor".parse().unwrap()).unwrap_err().to_string();
    assert!(e.contains("--hook 'no_such_tensor' matches no tensor name"), "{e}");
    let e = "(unclosed".parse::<HookKind>().unwrap_err().to_string();
    assert!(e.contains("not a preset (attn, resid, mlp) nor a valid regex"), "{e}");
}

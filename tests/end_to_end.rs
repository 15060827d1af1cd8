//! The grids of the whole job against PyTorch autograd references, for both
//! exporters and both runtimes.

use crate::common::*;
use attrpatch::job::{run_job, JobOptions};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};
use std::path::PathBuf;

fn job(model: PathBuf, bos: bool, kind: RuntimeKind) -> attrpatch::job::JobResult {
    let mut opts = JobOptions::new(model);
    opts.tokenizer = Some(tokenizer());
    opts.bos = bos;
    opts.runtime = RuntimeOptions { kind, device: Device::Cpu, ort_lib: None, threads: 1 };
    run_job(&opts).unwrap_or_else(|e| panic!("job failed: {e}")).expect("not a shard")
}

fn check(model: PathBuf, reference_file: &str, bos: bool, kind: RuntimeKind) {
    let want = reference(reference_file);
    let r = job(model.clone(), bos, kind);
    let tag = format!("{} / {reference_file} / {kind:?}", model.file_name().unwrap().to_string_lossy());
    assert!(close(r.clean_metric, want.clean_metric), "{tag}: clean ld {} vs {}", r.clean_metric, want.clean_metric);
    assert!(
        close(r.corrupted_metric, want.corrupted_metric),
        "{tag}: corrupted ld {} vs {}",
        r.corrupted_metric,
        want.corrupted_metric
    );
    let eh = assert_grid_close(&format!("{tag} heads"), &r.grids.heads, &want.heads);
    let ep = assert_grid_close(&format!("{tag} positions"), &r.grids.positions, &want.positions);
    assert_eq!(r.runtime_calls, 1);
    eprintln!("{tag}: max relative error heads {eh:.2e}, positions {ep:.2e}");
}

#[test]
fn legacy_op14_ort_matches_pytorch() {
    check(legacy_op14(), "ioi-reference.json", false, RuntimeKind::Ort);
}

#[test]
fn legacy_op14_tract_matches_pytorch() {
    check(legacy_op14(), "ioi-reference.json", false, RuntimeKind::Tract);
}

#[test]
fn dynamo_op18_ort_matches_pytorch() {
    check(dynamo_op18(), "ioi-reference.json", false, RuntimeKind::Ort);
}

#[test]
fn dynamo_op18_tract_matches_pytorch() {
    check(dynamo_op18(), "ioi-reference.json", false, RuntimeKind::Tract);
}

#[test]
fn bos_prepended_matches_pytorch() {
    check(legacy_op14(), "ioi-reference-bos.json", true, RuntimeKind::Ort);
}

#[test]
fn heads_read_from_the_graph() {
    let r = job(dynamo_op18(), false, RuntimeKind::Ort);
    assert_eq!(r.manifest.n_heads, 4);
    assert_eq!(r.manifest.hooks.len(), 2);
    assert_eq!(r.manifest.token_labels.len(), 14);
    assert_eq!(r.manifest.token_labels[1], " John");
}

/// The lm_head runs on the last position only and the backward graph never
/// touches the clean copy: the speed rewrites of the augmented graph.
#[test]
fn augmented_graph_has_no_needless_work() {
    for model in [legacy_op14(), dynamo_op18()] {
        let m = attrpatch::onnx::OnnxModel::load(&model).unwrap();
        let aug = attrpatch::augment::augment(m).unwrap();
        assert!(aug.lm_head_last_position_only, "{}", model.display());
        let g = aug.proto.graph.as_ref().unwrap();
        assert!(!g.node.iter().any(|n| n.input.iter().any(|i| i == "logits")), "full logits are still consumed");
        // ONNX Runtime runs unused nodes too: the full-sequence lm_head must be gone.
        assert!(
            !g.node.iter().any(|n| n.output.iter().any(|o| o == "logits" || o == "clean/logits")),
            "full lm_head kept"
        );
        assert!(g.output.iter().all(|o| o.name.starts_with("attrpatch.")), "original outputs kept");
        // Backward nodes are the builder's ("attrpatch/..."); none reads a clean tensor
        // other than through the clean activation output.
        let clean_inputs_of_backward = g
            .node
            .iter()
            .filter(|n| n.name.starts_with("attrpatch/") && n.op_type != "Identity")
            .flat_map(|n| n.input.iter())
            .filter(|i| i.starts_with("clean/"))
            .count();
        // The clean metric reads the clean copy's hidden state once and each layer's
        // grid reads its clean activation once; a backward through the clean copy
        // would add dozens.
        let layers = aug.hooks.len();
        assert!(clean_inputs_of_backward <= 1 + layers, "{clean_inputs_of_backward} added nodes read the clean copy");
    }
}

//! Bad input, each with the exit status and the message a user sees
//! (docs/src/errors.md, "Bad input"). None may panic.

use crate::common::synth::Synth;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs attrpatch; asserts it fails with exit status 1, without a panic, and
/// that stderr contains every `expected` piece. Returns stderr.
fn fails(args: &[&str], expected: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(args).current_dir(root()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "attrpatch {args:?} should fail with status 1:\n{err}");
    assert!(!err.contains("panicked"), "attrpatch {args:?} panicked:\n{err}");
    for e in expected {
        assert!(err.contains(e), "attrpatch {args:?}: '{e}' missing from:\n{err}");
    }
    err
}

/// The synthetic models do not mix positions, so the prompts differ in their last token.
const SYNTH_PROMPTS: &str = r#"{"clean": "When John and Mary went to the shops, John gave the bag to", "corrupted": "When John and Mary went to the shops, John gave the bag at", "correct": " Mary", "incorrect": " John"}"#;

/// `run` of `model` on SYNTH_PROMPTS, written to `dir`/prompts.jsonl, into `dir`/out (all inside
/// `dir`: a file beside a fresh dir would outlive its guard).
fn synth_args(model: &Path, dir: &Path) -> Vec<String> {
    let prompts = dir.join("prompts.jsonl");
    let out = dir.join("out");
    std::fs::write(&prompts, SYNTH_PROMPTS).unwrap();
    [
        "run",
        "--device",
        "cpu",
        "--heads",
        "2",
        "--tokenizer",
        "models/tokenizer.json",
        "--prompts",
        prompts.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_model(model: &Path, extra: &[&str], expected: &[&str]) -> String {
    let dir = fresh_dir("out");
    let owned = synth_args(model, &dir);
    let mut args: Vec<&str> = owned.iter().map(|s| s.as_str()).collect();
    args.extend_from_slice(extra);
    fails(&args, expected)
}

#[test]
fn synthetic_model_runs() {
    // The baseline the other cases break: this one must work.
    let d = fresh_dir("ok");
    let m = Synth::default().write(&d, "ok.onnx");
    let o =
        Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(synth_args(&m, &d)).current_dir(root()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn not_an_onnx_file() {
    let d = fresh_dir("text");
    let p = d.join("notes.onnx");
    std::fs::write(&p, "this is a text file, not a model\n").unwrap();
    fails(&["inspect", p.to_str().unwrap()], &["notes.onnx", "not a valid ONNX model"]);
    fails(&["inspect", "README.md"], &["README.md"]);
}

#[test]
fn missing_model_file() {
    fails(&["run", "--model", "/nonexistent/model.onnx"], &["/nonexistent/model.onnx", "No such file"]);
}

#[test]
fn truncated_protobuf() {
    let d = fresh_dir("trunc");
    let bytes = std::fs::read(dynamo_op18()).unwrap();
    let p = d.join("cut.onnx");
    std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).unwrap();
    fails(&["inspect", p.to_str().unwrap()], &["cut.onnx", "not a valid ONNX model"]);
}

#[test]
fn corrupted_protobuf() {
    let d = fresh_dir("corrupt");
    let mut bytes = std::fs::read(dynamo_op18()).unwrap();
    for i in (0..4000).step_by(7) {
        bytes[i] ^= 0xa5;
    }
    let p = d.join("corrupt.onnx");
    std::fs::write(&p, &bytes).unwrap();
    fails(&["inspect", p.to_str().unwrap()], &["corrupt.onnx"]);
}

#[test]
fn no_logits_like_output() {
    let d = fresh_dir("nologits");
    let m = Synth {
        output_name: "hidden".into(),
        c_proj_names: vec!["/transformer/h.0/attn/c_proj/MatMul".into()],
        ..Default::default()
    };
    // One rank-3 float output is taken as the logits even when named otherwise...
    let p = m.write(&d, "renamed.onnx");
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["inspect", p.to_str().unwrap()])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // ...but a graph whose only output is not [batch, sequence, vocab] has none.
    let mut proto = m.build();
    let g = proto.graph.as_mut().unwrap();
    g.node.push(attrpatch::onnx::pb::NodeProto {
        op_type: "Shape".into(),
        name: "shape".into(),
        input: vec!["hidden".into()],
        output: vec!["hidden_shape".into()],
        ..Default::default()
    });
    g.output[0] = attrpatch::augment::value_info("hidden_shape", attrpatch::onnx::consts::INT64, &[]);
    let p = d.join("nologits.onnx");
    std::fs::write(&p, prost::Message::encode_to_vec(&proto)).unwrap();
    fails(&["inspect", p.to_str().unwrap()], &["no logits-like output", "hidden_shape"]);
}

#[test]
fn no_hook_point() {
    let d = fresh_dir("nohook");
    let p = Synth { c_proj_names: vec!["/transformer/h.0/mlp/c_proj/MatMul".into()], ..Default::default() }
        .write(&d, "nohook.onnx");
    fails(&["inspect", p.to_str().unwrap()], &["nohook.onnx", "no attention out-projection found", "h.N.attn.c_proj"]);
}

#[test]
fn two_hook_points_in_one_layer() {
    let d = fresh_dir("twohooks");
    let names =
        vec!["/transformer/h.0/attn/c_proj/MatMul".to_string(), "/transformer/h.0/attn/c_proj/MatMul_1".to_string()];
    let p = Synth { c_proj_names: names, ..Default::default() }.write(&d, "two.onnx");
    fails(
        &["inspect", p.to_str().unwrap()],
        &["layer 0 has 2 candidate attention out-projection nodes", "MatMul_1", "expected exactly one"],
    );
}

#[test]
fn op_without_gradient_rule_on_the_path() {
    let d = fresh_dir("norule");
    let p = Synth { extra_op: Some("Tan".into()), ..Default::default() }.write(&d, "tan.onnx");
    run_model(&p, &[], &["no gradient rule for op 'Tan'", "/transformer/h.0/attn/extra"]);
    fails(&["rewrite", p.to_str().unwrap(), "-o", d.join("x.onnx").to_str().unwrap()], &["'Tan'"]);
}

/// float16 logits are computed in float32 (normalize::precision); float64 ones are refused.
#[test]
fn unsupported_element_type() {
    let d = fresh_dir("fp64");
    let p = Synth { logits_type: attrpatch::onnx::consts::DOUBLE, ..Default::default() }.write(&d, "fp64.onnx");
    run_model(&p, &[], &["float64", "float32"]);
}

/// Opsets 11 and 12 are upgraded (normalize::opset_upgrade); older ones are refused.
#[test]
fn old_opset() {
    let d = fresh_dir("opset");
    let p = Synth { opset: 10, ..Default::default() }.write(&d, "op10.onnx");
    fails(&["inspect", p.to_str().unwrap()], &["opset 10 is not supported", "opset 11 or newer"]);
}

#[test]
fn external_data_outside_the_model_folder() {
    let d = fresh_dir("ext");
    for loc in ["/etc/passwd", "../secret.bin", "sub/../../secret.bin"] {
        let p = Synth { external: Some((loc.into(), None)), ..Default::default() }.write(&d, "ext.onnx");
        fails(&["inspect", p.to_str().unwrap()], &["w_unembed", "outside the model's folder"]);
    }
}

#[test]
fn external_data_missing_or_too_short() {
    let d = fresh_dir("extmissing");
    let m = Synth { external: Some(("weights.bin".into(), None)), ..Default::default() };
    let p = m.write(&d, "ext.onnx");
    std::fs::remove_file(d.join("weights.bin")).unwrap();
    fails(&["inspect", p.to_str().unwrap()], &["w_unembed", "weights.bin"]);
    let p = Synth { external: Some(("short.bin".into(), Some(100))), ..Default::default() }.write(&d, "short.onnx");
    fails(&["inspect", p.to_str().unwrap()], &["w_unembed", "short.bin", "too short"]);
}

#[test]
fn external_data_inside_the_folder_works() {
    let d = fresh_dir("extok");
    let p = Synth { external: Some(("weights.bin".into(), None)), ..Default::default() }.write(&d, "ext.onnx");
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["inspect", p.to_str().unwrap()])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn tokenizer_does_not_match_the_vocabulary() {
    let d = fresh_dir("vocab");
    let p = Synth { vocab: 1000, ..Default::default() }.write(&d, "small.onnx");
    run_model(&p, &[], &["outside the model's vocabulary of 1000", "does not match the model's vocabulary size"]);
}

/// A prompts file of `text` in a fresh dir, with the dir's guard (hold it while the file is used).
fn jsonl(name: &str, text: &str) -> (TestDir, PathBuf) {
    let dir = fresh_dir(name);
    let p = dir.join("prompts.jsonl");
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

fn run_prompts(p: &Path, expected: &[&str]) {
    let out = fresh_dir("pout");
    fails(&["run", "--device", "cpu", "--prompts", p.to_str().unwrap(), "--out", out.to_str().unwrap()], expected);
}

#[test]
fn answer_that_is_not_one_token() {
    let (_dir, p) = jsonl(
        "answer",
        r#"{"clean": "When John and Mary went to the shops, John gave the bag to", "corrupted": "When John and Mary went to the shops, Mary gave the bag to", "correct": " Maryland-ish", "incorrect": " John"}"#,
    );
    run_prompts(&p, &["pair 0", "\" Maryland-ish\"", "exactly one token"]);
}

#[test]
fn pair_lengths_differ() {
    let (_dir, p) = jsonl(
        "lengths",
        r#"{"clean": "When John and Mary went to the shops, John gave the bag to", "corrupted": "When John and Mary went to the big shops, Mary gave the bag to", "correct": " Mary", "incorrect": " John"}"#,
    );
    run_prompts(&p, &["pair 0", "14 tokens", "15", "positions correspond"]);
}

#[test]
fn empty_prompt_file() {
    let (_dir, p) = jsonl("empty", "\n\n");
    run_prompts(&p, &["contains no prompt pairs"]);
}

#[test]
fn malformed_jsonl_line() {
    let good = r#"{"clean": "a b", "corrupted": "a c", "correct": " x", "incorrect": " y"}"#;
    let (_dir, p) = jsonl("malformed", &format!("{good}\n{{\"clean\": \"oops\"\n"));
    run_prompts(&p, &["prompts.jsonl:2:"]);
}

#[test]
fn output_folder_cannot_be_written() {
    let d = fresh_dir("ro");
    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = file.join("out");
    fails(&["run", "--device", "cpu", "--out", out.to_str().unwrap()], &["a-file/out"]);
}

#[test]
fn equal_baselines_are_explained() {
    let text = r#"{"clean": "When John and Mary went to the shops, John gave the bag to", "corrupted": "When John and Mary went to the shops, John gave the bag to", "correct": " Mary", "incorrect": " John"}"#;
    let (_dir, p) = jsonl("same", text);
    run_prompts(&p, &["logit differences are equal", "divides by their difference"]);
}

#[test]
fn absurd_declared_sizes_are_refused_before_allocating() {
    let d = fresh_dir("absurd");
    let mut proto = Synth::default().build();
    let t = proto.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.name == "w_unembed").unwrap();
    t.dims = vec![1 << 30, 1 << 20];
    let p = d.join("absurd.onnx");
    std::fs::write(&p, prost::Message::encode_to_vec(&proto)).unwrap();
    fails(&["inspect", p.to_str().unwrap()], &["w_unembed", "declares shape [1073741824, 1048576]", "but holds"]);
}

/// KV-cache decoders are fed an empty cache (normalize::kv_cache, tests/normalize.rs);
/// one whose cache input declares no shape cannot be, and the input is named.
#[test]
fn kv_cache_input_without_a_shape_is_refused_by_name() {
    let d = fresh_dir("pastkv");
    let mut proto = Synth::default().build();
    let g = proto.graph.as_mut().unwrap();
    g.input.push(attrpatch::augment::value_info("past_key_values.0.key", 1, &[]));
    let p = d.join("decoder_with_past_model.onnx");
    std::fs::write(&p, prost::Message::encode_to_vec(&proto)).unwrap();
    fails(
        &["inspect", p.to_str().unwrap()],
        &["KV-cache input 'past_key_values.0.key'", "declares no element type or shape"],
    );
    fails(&["rewrite", p.to_str().unwrap(), "-o", d.join("x.onnx").to_str().unwrap()], &["past_key_values.0.key"]);
}

/// A --hook pattern matching a constant: the patching graph said the tensor was
/// "not produced by any node", which was wrong; both jobs now name the real problem.
#[test]
fn regression_constant_hook_was_reported_as_not_produced() {
    for cmd in ["run", "patch"] {
        let out = fresh_dir("constant-hook");
        let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
            .args([cmd, "--hook", "/transformer/Constant_output_0", "--device", "cpu", "--out", out.to_str().unwrap()])
            .current_dir(root())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{cmd}: {err}");
        assert!(
            err.contains("hook tensor '/transformer/Constant_output_0' (layer 0, from Constant")
                && err.contains("is a constant"),
            "{cmd}: {err}"
        );
    }
}

/// A model whose logits are NaN (log of negative projections): every job stops
/// and names the value that went wrong instead of writing NaN grids.
#[test]
fn non_finite_metric_is_named() {
    let d = fresh_dir("nan");
    let m = Synth { extra_op: Some("Log".into()), ..Default::default() }.write(&d, "nan.onnx");
    let owned = synth_args(&m, &d);
    let args: Vec<&str> = owned.iter().map(|s| s.as_str()).collect();
    fails(&args, &["'attrpatch.clean_logit_diffs' is NaN for pair 0"]);
    let mut patch = args.clone();
    patch[0] = "patch";
    fails(&patch, &["the clean run's metric of pair 0 is NaN"]);
    let mut ig = args.clone();
    ig.extend(["--ig-steps", "2"]);
    fails(&ig, &["the clean run's metric of pair 0 is NaN"]);
}

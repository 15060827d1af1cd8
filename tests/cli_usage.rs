//! Common misuse of the command line gets a message that says what to do
//! instead, and every subcommand spells its options the same way (issue 12,
//! items 5 and 6).

use crate::common::*;
use std::path::Path;
use std::process::{Command, Output};

fn attrpatch_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(args).current_dir(dir).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ioi_model() -> String {
    root().join("models/ioi-gpt2/model.onnx").to_string_lossy().into_owned()
}

#[test]
fn a_folder_as_model_names_the_onnx_files_inside() {
    let o = attrpatch_in(root(), &["inspect", "models/ioi-gpt2"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("models/ioi-gpt2: is a folder; pass the .onnx file inside it (found: model.onnx)"), "{e}");
}

#[test]
fn an_external_data_file_as_model_says_to_pass_the_onnx() {
    let d = fresh_dir("external-data-as-model");
    let data = d.join("model.onnx.data");
    std::fs::write(&data, [0u8; 64]).unwrap();
    let o = attrpatch_in(
        root(),
        &[
            "run",
            "--model",
            data.to_str().unwrap(),
            "--tokenizer",
            "models/tokenizer.json",
            "--out",
            d.join("o").to_str().unwrap(),
        ],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("this is an external-data file"), "{e}");
    assert!(e.contains("pass the .onnx file that refers to it (model.onnx)"), "{e}");
}

#[test]
fn an_existing_file_as_out_is_refused_before_any_work() {
    let d = fresh_dir("out-is-a-file");
    let f = d.join("results.txt");
    std::fs::write(&f, "keep me").unwrap();
    let o = attrpatch_in(root(), &["run", "--out", f.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("results.txt: this is a file; attrpatch writes several files, so give it a folder"), "{e}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep me");
}

#[test]
fn rows_per_call_without_ig_steps_is_refused_on_run() {
    let d = fresh_dir("rows-per-call-alone");
    let o = attrpatch_in(root(), &["run", "--rows-per-call", "8", "--out", d.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("--rows-per-call sets the patching rows of --ig-steps"), "{e}");
}

#[test]
fn rewrite_takes_out_hook_and_metric_like_run() {
    let d = fresh_dir("rewrite-options");
    let aug = d.join("resid.onnx");
    let o = attrpatch_in(
        root(),
        &["rewrite", &ioi_model(), "--out", aug.to_str().unwrap(), "--hook", "resid", "--metric", "prob"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (proto, _) = attrpatch::onnx::io::read_model(&aug).unwrap();
    let outputs: Vec<String> = proto.graph.unwrap().output.into_iter().map(|o| o.name).collect();
    assert!(outputs.iter().any(|o| o == "attrpatch.positions.0"), "{outputs:?}");
    // Block outputs do not split into heads: no heads rows.
    assert!(!outputs.iter().any(|o| o.starts_with("attrpatch.heads.")), "{outputs:?}");
    // --output stays as an alias of --out.
    let again = d.join("attn.onnx");
    let o = attrpatch_in(root(), &["rewrite", &ioi_model(), "--output", again.to_str().unwrap()]);
    assert!(o.status.success() && again.is_file(), "{}", stderr(&o));
}

#[test]
fn inspect_spells_the_hook_as_typed() {
    let o = attrpatch_in(root(), &["inspect", &ioi_model(), "--hook", "resid"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("--hook resid matches 3 tensors"), "{out}");
    assert!(!out.contains("Resid"), "{out}");
}

#[test]
fn patch_writes_into_its_own_default_folder_not_runs() {
    let d = fresh_dir("patch-default-out");
    let o = attrpatch_in(&d, &["patch", "--device", "cpu", "--model", &ioi_model()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("attrpatch-patch/heads.csv").is_file());
    assert!(!d.join("attrpatch-out").exists());
}

#[test]
fn the_summary_gives_the_range_of_prompt_lengths_and_no_zero_heads() {
    let d = fresh_dir("length-range");
    let prompts = d.join("pairs.jsonl");
    std::fs::write(
        &prompts,
        [
            r#"{"clean": "When John and Mary went to the shops, John gave the bag to", "corrupted": "When John and Mary went to the shops, Mary gave the bag to", "correct": " Mary", "incorrect": " John"}"#,
            r#"{"clean": "John and Mary: John gave it to", "corrupted": "John and Mary: Mary gave it to", "correct": " Mary", "incorrect": " John"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let args = ["run", "--device", "cpu", "--prompts", prompts.to_str().unwrap(), "--out", d.to_str().unwrap()];
    let o = attrpatch_in(root(), &args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("2 prompt pairs of 8-14 tokens, 3 layers x 4 heads"), "{out}");
    let o = attrpatch_in(root(), &[&args[..], &["--hook", "resid"]].concat());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("2 prompt pairs of 8-14 tokens, 3 layers\n"), "{out}");
}

#[test]
fn a_hook_pattern_that_matches_nothing_suggests_names() {
    // Matches inside names, not whole names: say how to write it.
    let o = attrpatch_in(root(), &["inspect", &ioi_model(), "--hook", "attn/c_proj"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("it matches inside '/transformer/h.0/attn/c_proj/"), "{e}");
    assert!(e.contains("write '.*attn/c_proj.*'"), "{e}");
    // A misspelt name: the closest ones.
    let o = attrpatch_in(root(), &["inspect", &ioi_model(), "--hook", "/transformer/h.0/attn/Ad_output_0"]);
    let e = stderr(&o);
    assert!(e.contains("the closest tensor names are '/transformer/h.0/attn/Add_output_0'"), "{e}");
}

/// The library says "the hook pattern" and "a head count"; the binary prints the
/// flags that set them, in errors and in inspect's report.
#[test]
fn the_binary_names_the_flags_the_library_describes() {
    let o = attrpatch_in(root(), &["inspect", &ioi_model(), "--hook", "no_such_tensor"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--hook 'no_such_tensor' matches no tensor name"), "{err}");
    assert!(!err.contains("hook pattern"), "{err}");
    let o = attrpatch_in(root(), &["inspect", &ioi_model(), "--hook", ".*c_proj/Reshape_output_0"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("(--hook .*c_proj/Reshape_output_0)"), "{out}");
    assert!(!out.contains("hook pattern"), "{out}");
}

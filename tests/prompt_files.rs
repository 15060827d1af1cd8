//! Prompt files as users write them, through the whole job: `--metric kl`
//! needs no answers (its help says so), every other metric does.

use crate::common::*;
use attrpatch::augment::Metric;
use attrpatch::job::{run_job, JobOptions};

/// A prompts file without answers in a fresh dir, with the dir's guard (hold it while the file is used).
fn no_answer_file(name: &str) -> (TestDir, std::path::PathBuf) {
    let dir = fresh_dir(name);
    let path = dir.join("pairs.jsonl");
    let lines = [
        r#"{"clean": "When John and Mary went to the shops, John gave the bag to", "corrupted": "When John and Mary went to the shops, Mary gave the bag to"}"#,
        r#"{"clean": "When Tom and James went to the park, James gave the ball to", "corrupted": "When Tom and James went to the park, Tom gave the ball to"}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    (dir, path)
}

#[test]
fn kl_runs_on_a_prompt_file_without_answers() {
    let mut o = JobOptions::new(root().join("models/ioi-gpt2/model.onnx"));
    let (_dir, prompts) = no_answer_file("kl-no-answers");
    o.prompts = Some(prompts);
    o.metric = Metric::Kl;
    let r = run_job(&o).unwrap().unwrap();
    assert!(r.corrupted_metric > 1.0, "KL(clean||corrupted) of the IOI model: {}", r.corrupted_metric);
    assert!(r.grids.heads.iter().flatten().any(|v| v.abs() > 1e-3), "{:?}", r.grids.heads);
}

#[test]
fn logit_diff_on_a_prompt_file_without_answers_names_the_line() {
    let mut o = JobOptions::new(root().join("models/ioi-gpt2/model.onnx"));
    let (_dir, path) = no_answer_file("ld-no-answers");
    o.prompts = Some(path.clone());
    let msg = match run_job(&o) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a logit-difference job without answers ran"),
    };
    assert!(msg.contains(&format!("{}:1: pair 0: the correct answer is missing", path.display())), "{msg}");
}

/// The random-weight fixture's logit differences are ~3e-4: normalising by
/// them makes every cell noise, and the run must say so (issue 12, item 3).
#[test]
fn a_run_whose_baselines_are_noise_warns_on_the_terminal_and_in_results() {
    let out = fresh_dir("noise-warning");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["run", "--device", "cpu", "--model"])
        .arg(bundled_model())
        .arg("--tokenizer")
        .arg(tokenizer())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("warning: the clean and corrupted logit diff differ by only"), "{stderr}");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let warnings = results["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("differ by only")), "{warnings:?}");

    // The bundled IOI model on the tutorial's prompts: no warning, every clean prompt right.
    let ioi = fresh_dir("no-warning");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["run", "--device", "cpu", "--out"])
        .arg(&ioi)
        .current_dir(root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !stderr.contains("warning:"), "{stderr}");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(ioi.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["warnings"], serde_json::json!([]));
    assert_eq!(results["clean_accuracy"], serde_json::json!(1.0));
}

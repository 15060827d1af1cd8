//! Prompt sets in batches: the grids do not depend on the batch size,
//! shards merged give exactly a single run's files, interrupted jobs resume,
//! per-prompt grids add up to the summed ones.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attrpatch(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(args).current_dir(root()).output().unwrap();
    assert!(
        o.status.success(),
        "attrpatch {args:?}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attrpatch-batches-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "run",
        "--model",
        "models/gpt2-tiny-random.onnx",
        "--device",
        "cpu",
        "--prompts",
        "models/ioi-prompts.jsonl",
        "--per-prompt",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    String::from_utf8_lossy(&attrpatch(&args).stdout).to_string()
}

fn grids(out: &Path) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    (
        serde_json::from_value(v["heads"]["values"].clone()).unwrap(),
        serde_json::from_value(v["positions"]["values"].clone()).unwrap(),
    )
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn batch_size_does_not_change_the_grids() {
    let (one, two) = (dir("bs64"), dir("bs3"));
    run(&one, &[]);
    let out = run(&two, &["--batch-size", "3"]);
    assert!(out.contains("(3 calls)"), "{out}");
    let (h1, p1) = grids(&one);
    let (h2, p2) = grids(&two);
    let want = reference("ioi-reference.json");
    assert_grid_close("batch 64 heads", &h1, &want.heads);
    assert_grid_close("batch 3 heads", &h2, &want.heads);
    assert_grid_close("batch 3 positions", &p2, &want.positions);
    assert_grid_close("batch 3 vs 64", &h2, &h1);
    assert_grid_close("batch 3 vs 64 positions", &p2, &p1);
}

#[test]
fn three_shards_merged_equal_one_run() {
    let single = dir("single");
    run(&single, &["--batch-size", "2"]);
    let shards: Vec<PathBuf> = (0..3).map(|k| dir(&format!("shard{k}"))).collect();
    for (k, d) in shards.iter().enumerate() {
        let out = run(d, &["--batch-size", "2", "--shard", &format!("{k}/3")]);
        assert!(out.contains(&format!("shard {k}/3 done")), "{out}");
    }
    let merged = dir("merged");
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(|d| d.to_str().unwrap()));
    args.extend(["--out", merged.to_str().unwrap()]);
    attrpatch(&args);
    for f in ["heads.csv", "positions.csv", "per_prompt.jsonl"] {
        assert_eq!(read(single.join(f)), read(merged.join(f)), "{f} differs between one run and merged shards");
    }
    assert_eq!(grids(&single), grids(&merged));
}

#[test]
fn merge_refuses_a_missing_shard() {
    let shards: Vec<PathBuf> = (0..2).map(|k| dir(&format!("partial{k}"))).collect();
    for (k, d) in shards.iter().enumerate() {
        run(d, &["--batch-size", "2", "--shard", &format!("{k}/2")]);
    }
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["merge", shards[0].to_str().unwrap(), "--out", dir("partial-merged").to_str().unwrap()])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("batch 2 of 4 is in none of the shard folders"), "{e}");
}

#[test]
fn interrupted_job_resumes_without_recomputing() {
    let d = dir("resume");
    run(&d, &["--batch-size", "2"]);
    let before = grids(&d);
    // As if the job had died before batch 2 and the final files.
    std::fs::remove_file(d.join("batches/batch-000002.json")).unwrap();
    std::fs::remove_file(d.join("results.json")).unwrap();
    let out = run(&d, &["--batch-size", "2", "--resume"]);
    assert!(out.contains("(1 call)"), "{out}");
    assert!(out.contains("resumed 3 finished batch(es)"), "{out}");
    assert_eq!(grids(&d), before);
    // Without --resume everything is recomputed.
    let out = run(&d, &["--batch-size", "2"]);
    assert!(out.contains("(4 calls)"), "{out}");
}

#[test]
fn per_prompt_grids_add_up_to_the_summed_grids() {
    let d = dir("perprompt");
    run(&d, &["--batch-size", "3"]);
    let (heads, positions) = grids(&d);
    let text = read(d.join("per_prompt.jsonl"));
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 8);
    let mut sum_h = vec![vec![0.0; heads[0].len()]; heads.len()];
    let mut sum_p = vec![vec![0.0; positions[0].len()]; positions.len()];
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
        let h: Vec<Vec<f64>> = serde_json::from_value(l["grid"]["heads"].clone()).unwrap();
        let p: Vec<Vec<f64>> = serde_json::from_value(l["grid"]["positions"].clone()).unwrap();
        for (a, b) in sum_h.iter_mut().flatten().zip(h.iter().flatten()) {
            *a += b;
        }
        for (a, b) in sum_p.iter_mut().flatten().zip(p.iter().flatten()) {
            *a += b;
        }
    }
    assert_grid_close("sum of per-prompt heads", &sum_h, &heads);
    assert_grid_close("sum of per-prompt positions", &sum_p, &positions);
}

#[test]
fn bad_shard_and_batch_size_are_rejected() {
    for (args, msg) in [
        (vec!["run", "--shard", "3/3"], "--shard '3/3': expected K/N with 0 <= K < N"),
        (vec!["run", "--shard", "x"], "expected K/N"),
        (vec!["run", "--batch-size", "0"], "--batch-size must be at least 1"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(&args).current_dir(root()).output().unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(msg), "{args:?}: {e}");
    }
}

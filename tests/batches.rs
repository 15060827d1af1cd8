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

fn dir(name: &str) -> TestDir {
    fresh_dir(&format!("batches-{name}"))
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
    let shards: Vec<TestDir> = (0..3).map(|k| dir(&format!("shard{k}"))).collect();
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
    let shards: Vec<TestDir> = (0..2).map(|k| dir(&format!("partial{k}"))).collect();
    for (k, d) in shards.iter().enumerate() {
        run(d, &["--batch-size", "2", "--shard", &format!("{k}/2")]);
    }
    let merged = dir("partial-merged");
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["merge", shards[0].to_str().unwrap(), "--out", merged.to_str().unwrap()])
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
        (vec!["run", "--shard", "3/3"], "for '--shard <SHARD>': shard '3/3': expected K/N with 0 <= K < N"),
        (vec!["run", "--shard", "x"], "expected K/N"),
        (vec!["run", "--batch-size", "0"], "--batch-size must be at least 1"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(&args).current_dir(root()).output().unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(msg), "{args:?}: {e}");
    }
}

/// The runtime calls a run made, from its "(N call(s))" line.
fn calls(out: &str) -> usize {
    let line = out.lines().find(|l| l.starts_with("runtime: ")).unwrap_or_else(|| panic!("no runtime line in:\n{out}"));
    let at = line.rfind(" call").unwrap_or_else(|| panic!("no call count in:\n{out}"));
    let open = line[..at].rfind('(').unwrap();
    line[open + 1..at].parse().unwrap()
}

fn results(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

/// The measured bug: `run --metric kl`, then `run --resume` with the default
/// metric reused the KL batches (heads of 0.266 where a fresh run gives 0.133,
/// clean_metric 0.0, and "logit-diff" in results.json). The batch key
/// covered the model's path and size, BOS and the token ids only.
#[test]
fn regression_resume_reused_batches_of_another_metric() {
    let fresh = dir("metric-fresh");
    run(&fresh, &["--batch-size", "3"]);
    let d = dir("metric-resume");
    run(&d, &["--batch-size", "3", "--metric", "kl"]);
    let out = run(&d, &["--batch-size", "3", "--resume"]);
    assert_eq!(calls(&out), 3, "every KL batch must be recomputed:\n{out}");
    assert!(!out.contains("resumed"), "{out}");
    let (r, f) = (results(&d), results(&fresh));
    assert_eq!(r["metric"], "logit-diff");
    assert_eq!(r["clean_logit_diff"], f["clean_logit_diff"]);
    assert_eq!(grids(&d), grids(&fresh));
}

/// Every option that decides a batch's numbers makes `--resume` recompute:
/// the hook set (and with it the head count), BOS, the metric, the batch layout.
#[test]
fn resume_recomputes_when_any_job_option_changes() {
    let d = dir("options");
    let base = ["--batch-size", "4"];
    run(&d, &base);
    let out = run(&d, &[&base[..], &["--resume"]].concat());
    assert_eq!((calls(&out), out.contains("resumed 2 finished batch(es)")), (0, true), "same job:\n{out}");
    for changed in [vec!["--hook", "resid"], vec!["--bos"], vec!["--metric", "logprob-diff"], vec!["--batch-size", "2"]]
    {
        // Back to the base job's batch files, then resume with one option changed.
        run(&d, &base);
        let mut args = vec!["--resume"];
        if changed[0] != "--batch-size" {
            args.extend(base);
        }
        args.extend(&changed);
        let out = run(&d, &args);
        assert!(!out.contains("resumed"), "{changed:?} reused batches of another job:\n{out}");
    }
}

/// A model re-exported with new weights but the same path, size and mtime
/// must not reuse the old batches: the key hashes the model's content.
#[test]
fn regression_resume_reused_batches_of_a_model_with_new_weights() {
    let d = dir("weights");
    let model = d.join("model.onnx");
    std::fs::copy(root().join("models/gpt2-tiny-random.onnx"), &model).unwrap();
    let out_dir = d.join("out");
    let job = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            model.to_str().unwrap(),
            "--tokenizer",
            "models/tokenizer.json",
            "--device",
            "cpu",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        String::from_utf8_lossy(&attrpatch(&args).stdout).to_string()
    };
    job(&[]);
    let resumed = job(&["--resume"]);
    assert!(resumed.contains("resumed 1 finished batch(es)"), "the same model resumes:\n{resumed}");

    // One float of the largest weight, in the middle of the tensor, nudged in place.
    let loaded = attrpatch::onnx::OnnxModel::load(&model).unwrap();
    let w = loaded.graph().initializer.iter().max_by_key(|t| t.raw_data.len()).unwrap();
    let mut bytes = std::fs::read(&model).unwrap();
    let head = &w.raw_data[..64];
    let at = bytes.windows(64).position(|win| win == head).expect("the weight's bytes in the file");
    let mid = at + (w.raw_data.len() / 2) / 4 * 4;
    bytes[mid] ^= 0x01;
    let mtime = std::fs::metadata(&model).unwrap().modified().unwrap();
    let len = bytes.len();
    std::fs::write(&model, bytes).unwrap();
    std::fs::File::options().write(true).open(&model).unwrap().set_modified(mtime).unwrap();
    let meta = std::fs::metadata(&model).unwrap();
    assert_eq!((meta.len() as usize, meta.modified().unwrap()), (len, mtime), "same size and mtime");

    let out = job(&["--resume"]);
    assert_eq!(calls(&out), 1, "new weights, same size and mtime: the batch must be recomputed:\n{out}");
    assert!(!out.contains("resumed"), "{out}");
}

/// `merge` combined shards run with different metrics.
#[test]
fn regression_merge_accepted_shards_of_different_metrics() {
    let (a, b) = (dir("metric-shard0"), dir("metric-shard1"));
    run(&a, &["--batch-size", "2", "--shard", "0/2"]);
    run(&b, &["--batch-size", "2", "--shard", "1/2", "--metric", "kl"]);
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["merge", a.to_str().unwrap(), b.to_str().unwrap(), "--out", dir("metric-merged").to_str().unwrap()])
        .current_dir(root())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("parts of different jobs: their metric differs (\"logit-diff\" vs \"kl\")"), "{e}");
}

/// A shard folder reused with --resume keeps the batch files of its earlier
/// job outside the shard's range; merge took the first file it found for each
/// batch, so a stale KL batch entered a logit-diff result.
#[test]
fn regression_merge_took_a_stale_batch_of_another_job() {
    let single = dir("stale-single");
    run(&single, &["--batch-size", "2"]);
    let (a, b) = (dir("stale-shard0"), dir("stale-shard1"));
    run(&a, &["--batch-size", "2", "--metric", "kl"]);
    run(&a, &["--batch-size", "2", "--shard", "0/2", "--resume"]);
    assert!(a.join("batches/batch-000003.json").is_file(), "the stale KL batch is still there");
    run(&b, &["--batch-size", "2", "--shard", "1/2"]);
    let merged = dir("stale-merged");
    attrpatch(&["merge", a.to_str().unwrap(), b.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert_eq!(grids(&merged), grids(&single));
    // With only the folder holding stale batches, merge names the stale file.
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["merge", a.to_str().unwrap(), "--out", dir("stale-alone").to_str().unwrap()])
        .current_dir(root())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("batch-000002.json: batch 2 was computed by a different job"), "{e}");
}

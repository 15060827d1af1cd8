//! Pairs and rows per call chosen from the memory budget: a small
//! `--max-memory` splits the bundled model's job into several calls and gives
//! the same grids; the choice is printed and recorded in results.json.

use crate::common::*;
use attrpatch::memory::BASE_BYTES;
use std::path::Path;
use std::process::{Command, Output};

fn attrpatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(args).current_dir(root()).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = attrpatch(args);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "attrpatch {args:?}:\n{text}");
    text
}

fn results(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

fn grid(v: &serde_json::Value, key: &str) -> Vec<Vec<f64>> {
    serde_json::from_value(v[key]["values"].clone()).unwrap()
}

/// The budget in bytes that holds `k` rows of the estimate a default run recorded.
fn budget_for(k: u64, recorded: &serde_json::Value) -> String {
    let m = &recorded["memory"];
    let (weights, row) = (m["weight_bytes"].as_u64().unwrap(), m["row_bytes"].as_u64().unwrap());
    assert!(weights > 20 << 20 && row > 0, "{m}");
    (weights + BASE_BYTES + k * row + row / 2).to_string()
}

#[test]
fn a_small_budget_runs_several_calls_with_the_same_grids() {
    let (big, small) = (fresh_dir("memory-default"), fresh_dir("memory-small"));
    let out = ok(&["run", "--device", "cpu", "--out", big.to_str().unwrap()]);
    assert!(out.contains("(1 call)"), "{out}");
    let line = out.lines().find(|l| l.starts_with("batch of 8 pairs per call (memory budget ")).unwrap_or_else(|| {
        panic!("no sizing line in:\n{out}");
    });
    assert!(line.ends_with(" available)"), "{line}");
    let default = results(&big);
    assert_eq!(default["memory"]["per_call"], 8, "{}", default["memory"]);
    assert_eq!(default["memory"]["explicit"], false);

    let budget = budget_for(3, &default);
    let out = ok(&["run", "--device", "cpu", "--max-memory", &budget, "--out", small.to_str().unwrap()]);
    assert!(out.contains("batch of 3 pairs per call (memory budget ") && out.contains("(--max-memory)"), "{out}");
    assert!(out.contains("(3 calls)"), "{out}");
    let split = results(&small);
    assert_eq!(split["memory"]["per_call"], 3);
    assert_eq!(split["batch_size"], 3);
    assert_grid_close("heads, 3 calls vs 1", &grid(&split, "heads"), &grid(&default, "heads"));
    assert_grid_close("positions, 3 calls vs 1", &grid(&split, "positions"), &grid(&default, "positions"));
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("models/ioi-gpt2/ioi-reference.json")).unwrap()).unwrap();
    let want_heads: Vec<Vec<f64>> = serde_json::from_value(want["heads"].clone()).unwrap();
    assert_grid_close("heads vs PyTorch", &grid(&split, "heads"), &want_heads);
}

#[test]
fn patching_rows_follow_the_budget_and_explicit_flags_win() {
    let (big, small, given) = (fresh_dir("memory-patch"), fresh_dir("memory-patch-small"), fresh_dir("memory-given"));
    // The one patching graph: its calls are what the sizing counts (layer groups add a cache run per block).
    let out = ok(&["patch", "--device", "cpu", "--layer-groups", "off", "--out", big.to_str().unwrap()]);
    // 8 pairs x (3 layers x 4 heads + 1 baseline) rows, all in one call.
    assert!(out.contains("patching: 104 rows per call (memory budget "), "{out}");
    let default = results(&big);
    let budget = budget_for(40, &default);
    let small_out = small.to_str().unwrap();
    let out = ok(&["patch", "--device", "cpu", "--layer-groups", "off", "--max-memory", &budget, "--out", small_out]);
    assert!(out.contains("patching: 40 rows per call") && out.contains("(3 calls)"), "{out}");
    assert_grid_close("exact heads, 3 calls vs 1", &grid(&results(&small), "heads"), &grid(&default, "heads"));

    // --rows-per-call wins over any budget, and the line says so.
    let out = ok(&[
        "patch",
        "--device",
        "cpu",
        "--layer-groups",
        "off",
        "--max-memory",
        "1M",
        "--rows-per-call",
        "52",
        "--out",
        given.to_str().unwrap(),
    ]);
    assert!(out.contains("patching: 52 rows per call, as given") && out.contains("(2 calls)"), "{out}");
    assert!(!out.contains("warning: the memory budget"), "{out}");
}

#[test]
fn a_tiny_budget_runs_one_pair_per_call_with_a_warning() {
    let d = fresh_dir("memory-tiny");
    let out = ok(&["run", "--device", "cpu", "--max-memory", "1M", "--out", d.to_str().unwrap()]);
    assert!(out.contains("batch of 1 pairs per call"), "{out}");
    assert!(out.contains("(8 calls)"), "{out}");
    assert!(out.contains("warning: the memory budget 1M (--max-memory)") && out.contains("leaves no room"), "{out}");
}

#[test]
fn a_bad_max_memory_is_refused_by_name() {
    for bad in ["8X", "0", "lots"] {
        let o = attrpatch(&["run", "--max-memory", bad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains(&format!("--max-memory {bad}: expected a size like 8G or 512M")), "{err}");
    }
}

#[test]
fn resume_keeps_the_interrupted_runs_batch_size() {
    let d = fresh_dir("memory-resume");
    let out = d.to_str().unwrap();
    ok(&["run", "--device", "cpu", "--out", out]);
    let budget = budget_for(3, &results(&d));
    let first = ok(&["run", "--device", "cpu", "--max-memory", &budget, "--out", out]);
    assert!(first.contains("(3 calls)"), "{first}");
    // The budget differs now (none given); the batch files of 3 pairs are reused all the same.
    let again = ok(&["run", "--device", "cpu", "--resume", "--out", out]);
    assert!(again.contains("resumed 3 finished batch(es)") && again.contains("batch of 3 pairs per call"), "{again}");
}

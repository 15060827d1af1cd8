//! Prompt pairs of different lengths in one batch: right padding, each
//! pair's metric read at its own last token, pads attributed exactly zero.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHORT: &str = r#"{"clean": "When Ann and Bob left, Bob gave it to", "corrupted": "When Ann and Bob left, Ann gave it to", "correct": " Ann", "incorrect": " Bob"}"#;

fn run(name: &str, jsonl: &str) -> (TestDir, PathBuf, serde_json::Value) {
    run_cmd(&["run"], name, jsonl)
}

/// `attrpatch CMD...` on these prompts with --per-prompt, in a fresh dir: the dir's guard (hold it
/// while the output is read), the output folder and results.json.
fn run_cmd(cmd: &[&str], name: &str, jsonl: &str) -> (TestDir, PathBuf, serde_json::Value) {
    let d = fresh_dir(&format!("pad-{name}"));
    let p = d.join("prompts.jsonl");
    std::fs::write(&p, jsonl).unwrap();
    let out = d.join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(cmd)
        .args([
            "--model",
            "models/gpt2-tiny-random.onnx",
            "--device",
            "cpu",
            "--per-prompt",
            "--prompts",
            p.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    (d, out, v)
}

fn per_prompt(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("per_prompt.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A pair's attribution of its own logit difference (undoing the set's normalisation).
fn raw(pair: &serde_json::Value, results: &serde_json::Value, key: &str) -> Vec<Vec<f64>> {
    let n = results["n_pairs"].as_f64().unwrap();
    let k = n * (results["clean_logit_diff"].as_f64().unwrap() - results["corrupted_logit_diff"].as_f64().unwrap());
    let g: Vec<Vec<f64>> = serde_json::from_value(pair["grid"][key].clone()).unwrap();
    g.iter().map(|r| r.iter().map(|v| v * k).collect()).collect()
}

#[test]
fn a_short_pair_padded_in_a_batch_equals_the_pair_alone() {
    let long = std::fs::read_to_string(root().join("models/ioi-prompts.jsonl")).unwrap();
    let first = long.lines().next().unwrap();
    let (_mixed_dir, mixed_out, mixed) = run("mixed", &format!("{first}\n{SHORT}\n"));
    let (_alone_dir, alone_out, alone) = run("alone", &format!("{SHORT}\n"));
    assert_eq!(mixed["seq_len"], 14);
    assert_eq!(alone["seq_len"], 10);
    let m = &per_prompt(&mixed_out)[1];
    let a = &per_prompt(&alone_out)[0];
    for key in ["clean_metric", "corrupted_metric"] {
        assert!(close(m[key].as_f64().unwrap(), a[key].as_f64().unwrap()), "{key}: {} vs {}", m[key], a[key]);
    }
    let heads_m = raw(m, &mixed, "heads");
    let heads_a = raw(a, &alone, "heads");
    assert_grid_close("short pair heads, padded vs alone", &heads_m, &heads_a);
    let pos_m = raw(m, &mixed, "positions");
    let pos_a = raw(a, &alone, "positions");
    let real: Vec<Vec<f64>> = pos_m.iter().map(|r| r[..10].to_vec()).collect();
    assert_grid_close("short pair positions, padded vs alone", &real, &pos_a);
    for row in &pos_m {
        assert!(row[10..].iter().all(|&v| v == 0.0), "pads must get zero attribution: {row:?}");
    }
}

/// Without an attention_mask input, right padding still gives exact results:
/// the models are causal, so no real token sees a pad.
#[test]
fn a_model_without_attention_mask_takes_prompts_of_different_lengths() {
    let d = fresh_dir("pad-nomask");
    let mut proto = crate::common::synth::Synth::default().build();
    proto.graph.as_mut().unwrap().input.retain(|i| i.name != "attention_mask");
    let model = d.join("nomask.onnx");
    std::fs::write(&model, prost::Message::encode_to_vec(&proto)).unwrap();
    let prompts = d.join("p.jsonl");
    std::fs::write(
        &prompts,
        concat!(
            r#"{"clean": "When John and Mary went to the shops, John gave the bag to", "corrupted": "When John and Mary went to the shops, John gave the bag at", "correct": " Mary", "incorrect": " John"}"#,
            "\n",
            r#"{"clean": "Then Bob gave it to", "corrupted": "Then Bob gave it at", "correct": " Ann", "incorrect": " Bob"}"#,
            "\n"
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args([
            "run",
            "--device",
            "cpu",
            "--heads",
            "2",
            "--tokenizer",
            "models/tokenizer.json",
            "--model",
            model.to_str().unwrap(),
        ])
        .args(["--prompts", prompts.to_str().unwrap(), "--out", d.join("out").to_str().unwrap()])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Exact patching with pairs of different lengths: each pair's patches read
/// its own last position, and positions past its end are not patched (zero).
#[test]
fn exact_patching_of_a_short_pair_padded_in_a_batch_equals_the_pair_alone() {
    let long = std::fs::read_to_string(root().join("models/ioi-prompts.jsonl")).unwrap();
    let first = long.lines().next().unwrap();
    let (_mixed_dir, mixed_out, mixed) =
        run_cmd(&["patch", "--positions"], "patch-mixed", &format!("{first}\n{SHORT}\n"));
    let (_alone_dir, alone_out, alone) = run_cmd(&["patch", "--positions"], "patch-alone", &format!("{SHORT}\n"));
    let m = &per_prompt(&mixed_out)[1];
    let a = &per_prompt(&alone_out)[0];
    assert_grid_close("short pair exact heads, padded vs alone", &raw(m, &mixed, "heads"), &raw(a, &alone, "heads"));
    let pos_m = raw(m, &mixed, "positions");
    let real: Vec<Vec<f64>> = pos_m.iter().map(|r| r[..10].to_vec()).collect();
    assert_grid_close("short pair exact positions, padded vs alone", &real, &raw(a, &alone, "positions"));
    assert!(pos_m.iter().all(|r| r[10..].iter().all(|&v| v == 0.0)), "pads are not patched: {pos_m:?}");
}

//! The `attrpatch` binary as a user runs it.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Output};

fn attrpatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(args).current_dir(root()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The number printed after `label` on its own line of `t`.
fn printed(t: &str, label: &str) -> f64 {
    let line = t.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no '{label}' line in:\n{t}"));
    line[label.len()..].trim().parse().unwrap_or_else(|e| panic!("'{line}': {e}"))
}

#[test]
fn run_with_defaults_writes_every_output() {
    let out = fresh_dir("run");
    let o = attrpatch(&[
        "run",
        "--model",
        "models/gpt2-tiny-random.onnx",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("runtime: onnxruntime (CPU)"), "{t}");
    // The tutorial's baseline lines print the constants 1 and 0; what can be
    // wrong is the clean and corrupted metric they are computed from.
    let want = reference("ioi-reference.json");
    for (label, got, want) in [
        ("Clean logit diff:", printed(&t, "Clean logit diff:"), want.clean_metric),
        ("Corrupted logit diff:", printed(&t, "Corrupted logit diff:"), want.corrupted_metric),
    ] {
        // Printed with 4 decimals (or 4 significant digits in scientific notation).
        assert!((got - want).abs() <= 5e-5_f64.max(1e-3 * want.abs()), "{label} {got}, reference {want}");
    }
    for f in ["heads.png", "positions.png", "heads.csv", "positions.csv", "results.json"] {
        assert!(out.join(f).is_file(), "{f} not written");
    }
    let png = image::open(out.join("heads.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let heads: Vec<Vec<f64>> = serde_json::from_value(v["heads"]["values"].clone()).unwrap();
    assert_grid_close("results.json heads", &heads, &want.heads);
    assert!(close(v["clean_logit_diff"].as_f64().unwrap(), want.clean_metric), "{}", v["clean_logit_diff"]);
    assert!(close(v["corrupted_logit_diff"].as_f64().unwrap(), want.corrupted_metric));
    assert_eq!(v["runtime_calls"], 1);
    let csv = std::fs::read_to_string(out.join("positions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "header + 2 layers:\n{csv}");
    assert!(csv.lines().next().unwrap().contains("John"));
}

#[test]
fn prompts_from_jsonl() {
    let out = fresh_dir("jsonl");
    let o = attrpatch(&[
        "run",
        "--model",
        "models/gpt2-tiny-random.onnx",
        "--device",
        "cpu",
        "--prompts",
        "models/ioi-prompts.jsonl",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let heads: Vec<Vec<f64>> = serde_json::from_value(v["heads"]["values"].clone()).unwrap();
    assert_grid_close("jsonl heads", &heads, &reference("ioi-reference.json").heads);
}

#[test]
fn inspect_lists_layers_hooks_and_path_ops() {
    let o = attrpatch(&["inspect", "tests/fixtures/tiny-gpt2-rb-dynamo-op18.onnx"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("layers: 2 (attention heads: 4)"), "{t}");
    assert!(t.contains("layer 0: view_7"), "{t}");
    assert!(t.contains("layer 1: view_18"), "{t}");
    assert!(t.contains("node_addmm_1"), "{t}");
    assert!(t.contains("LayerNormalization"), "{t}");
    assert!(t.contains("input_ids int64[batch, sequence]"), "{t}");
    let o = attrpatch(&["inspect", "models/gpt2-tiny-random.onnx"]);
    let t = text(&o);
    assert!(t.contains("layer 1: /transformer/h.1/attn/c_proj/Reshape_output_0"), "{t}");
    assert!(t.contains("matched by node name"), "{t}");
}

/// The Python with onnxruntime and numpy: `ATTRPATCH_PYTHON` when set (a
/// virtualenv's python), else `python3`.
fn python_with_onnxruntime() -> Option<String> {
    let candidates = std::env::var("ATTRPATCH_PYTHON").map(|p| vec![p]).unwrap_or_else(|_| vec!["python3".into()]);
    candidates.into_iter().find(|py| {
        Command::new(py).args(["-c", "import onnxruntime, numpy"]).output().is_ok_and(|o| o.status.success())
    })
}

/// The rewritten file is a standard model: Python onnxruntime loads and runs
/// it, and the grids rebuilt from its outputs match the reference. It needs a
/// Python with onnxruntime and numpy, so it is ignored by default (a skip shows
/// as a skip, not as a pass); `.ci/run` installs them and runs it by name.
#[test]
#[ignore = "needs Python with onnxruntime and numpy (ATTRPATCH_PYTHON, else python3); run: cargo test --features internals --test main -- --ignored --exact cli::rewritten_model_runs_in_python_onnxruntime"]
fn rewritten_model_runs_in_python_onnxruntime() {
    let python = python_with_onnxruntime().expect(
        "no Python with onnxruntime and numpy: pip install onnxruntime numpy, or set ATTRPATCH_PYTHON to a python that has them",
    );
    let dir = fresh_dir("rewrite");
    for model in [legacy_op14(), dynamo_op18()] {
        let aug = dir.join("augmented.onnx");
        let o = attrpatch(&["rewrite", model.to_str().unwrap(), "-o", aug.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let ref_json = root().join("tests/fixtures/ioi-reference.json");
        let o = Command::new(&python)
            .args([root().join("tests/python/check_augmented.py").as_path(), aug.as_path(), ref_json.as_path()])
            .output()
            .unwrap();
        let t = text(&o);
        assert!(o.status.success() && t.contains("ok: 2 layers"), "{}: {t}", model.display());
        eprintln!("{}: {}", model.display(), t.trim());
    }
}

#[test]
fn missing_ort_library_says_what_to_do() {
    let out = fresh_dir("noort");
    let o = attrpatch(&[
        "run",
        "--device",
        "cpu",
        "--ort-lib",
        "/nonexistent/libonnxruntime.so",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("--ort-lib points to /nonexistent/libonnxruntime.so"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn cuda_requested_without_cuda_is_a_clear_error() {
    if Path::new(&root().join(".ort/libonnxruntime_providers_cuda.so")).exists() {
        eprintln!("skipped: this ONNX Runtime has a CUDA provider");
        return;
    }
    let out = fresh_dir("cuda");
    let o = attrpatch(&["run", "--device", "cuda", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("--device cuda"), "{t}");
    assert!(t.contains("onnxruntime-gpu"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

/// `--device auto` uses CUDA exactly when the library has the CUDA provider
/// and it starts; otherwise it runs on the CPU (with a note when the provider
/// is there but CUDA failed). Which case applies is read from the library the
/// run names, so the check holds on machines with and without a GPU.
#[test]
fn auto_device_falls_back_to_cpu_and_says_so() {
    let out = fresh_dir("auto");
    let o = attrpatch(&[
        "run",
        "--model",
        "models/gpt2-tiny-random.onnx",
        "--device",
        "auto",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let line = t.lines().find(|l| l.starts_with("runtime: onnxruntime (")).unwrap_or_else(|| panic!("{t}"));
    let lib = line
        .split(" from ")
        .nth(1)
        .and_then(|r| r.rsplit_once(" ("))
        .map(|(l, _)| l)
        .unwrap_or_else(|| panic!("{line}"));
    let has_provider = Path::new(lib).parent().unwrap().join("libonnxruntime_providers_cuda.so").is_file();
    let cuda_out = fresh_dir("auto-cuda");
    let cuda_starts = has_provider && {
        let o = attrpatch(&[
            "run",
            "--model",
            "models/gpt2-tiny-random.onnx",
            "--device",
            "cuda",
            "--out",
            cuda_out.to_str().unwrap(),
        ]);
        o.status.success()
    };
    if cuda_starts {
        assert!(line.starts_with("runtime: onnxruntime (CUDA (device 0))"), "CUDA starts, auto must use it: {t}");
    } else {
        assert!(line.starts_with("runtime: onnxruntime (CPU)"), "no usable CUDA, auto must fall back: {t}");
        // A provider that is there but fails is named; a library without one is no news.
        assert_eq!(t.contains("note: CUDA is not usable"), has_provider, "{t}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let heads: Vec<Vec<f64>> = serde_json::from_value(v["heads"]["values"].clone()).unwrap();
    assert_grid_close("auto device heads", &heads, &reference("ioi-reference.json").heads);
}

#[test]
fn tract_runtime_from_the_command_line() {
    let out = fresh_dir("tract");
    let o = attrpatch(&["run", "--runtime", "tract", "--out", out.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("runtime: tract (CPU)"), "{t}");
}

#[test]
fn compare_writes_grids_scatter_plots_and_correlations() {
    let out = fresh_dir("compare");
    let o = attrpatch(&[
        "compare",
        "--device",
        "cpu",
        "--positions",
        "--ig-steps",
        "2",
        "--atp-star",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for line in
        ["Pearson", "Spearman", "Attribution patching", "Integrated gradients (2 steps)", "largest misses, positions"]
    {
        assert!(t.contains(line), "missing '{line}' in:\n{t}");
    }
    for f in [
        "compare-heads.png",
        "scatter-heads.png",
        "compare-positions.png",
        "scatter-positions.png",
        "compare.json",
        "exact/heads.png",
        "exact/positions.csv",
        "attribution/heads.csv",
        "ig/results.json",
        "atp-star/heads.csv",
    ] {
        assert!(out.join(f).is_file(), "{f} not written");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    // The reported figures, recomputed from the grids each method wrote.
    let grid_of = |dir: &str, grid: &str| -> Vec<f64> {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(dir).join("results.json")).unwrap()).unwrap();
        let g: Vec<Vec<f64>> = serde_json::from_value(r[grid]["values"].clone()).unwrap();
        g.concat()
    };
    for est in ["attribution", "ig", "atp-star"] {
        for grid in ["heads", "positions"] {
            let (x, mut y) = (grid_of(est, grid), grid_of("exact", grid));
            if est == "atp-star" {
                // GradDrop's magnitudes are held to exact patching's magnitudes.
                y.iter_mut().for_each(|v| *v = v.abs());
            }
            let a = &v["estimates"][est][grid];
            let r = a["pearson"].as_f64().unwrap_or_else(|| panic!("{est} {grid} pearson in {v}"));
            assert!(
                (r - pearson(&x, &y)).abs() < 1e-9,
                "{est} {grid}: reported Pearson {r}, grids give {}",
                pearson(&x, &y)
            );
            let mae = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).sum::<f64>() / x.len() as f64;
            let got = a["mean_abs_error"].as_f64().unwrap();
            assert!((got - mae).abs() <= 1e-9 * mae.max(1e-12), "{est} {grid}: mean |err| {got}, grids give {mae}");
            assert_eq!(a["largest_misses"].as_array().unwrap().len(), 5);
        }
    }
    // As measured in docs/src/ground-truth.md: both estimates rank the bundled model's heads as exact patching does.
    for est in ["attribution", "ig"] {
        let r = v["estimates"][est]["heads"]["pearson"].as_f64().unwrap();
        assert!(r > 0.99, "{est} heads Pearson {r}");
    }
    let exact: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("exact/results.json")).unwrap()).unwrap();
    assert_eq!(exact["method"]["kind"], "exact-patching");
    // The recall curves, recomputed from the grids: verify cells in the order of
    // |estimate|; full recall of the top k is the last of exact's top k reached.
    let by_size = |v: &[f64]| {
        let mut o: Vec<usize> = (0..v.len()).collect();
        o.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()));
        o
    };
    let recall = v["recall"].as_array().unwrap();
    assert_eq!(recall.iter().map(|g| g["grid"].as_str().unwrap()).collect::<Vec<_>>(), ["heads", "positions"]);
    for g in recall {
        let grid = g["grid"].as_str().unwrap();
        let truth = by_size(&grid_of("exact", grid));
        assert_eq!(g["nodes"].as_u64().unwrap() as usize, truth.len());
        let ks: Vec<usize> = serde_json::from_value(g["ks"].clone()).unwrap();
        // 1, 5, 10 and 10% of the 12 heads (2) or of the 3 x 14 positions (5).
        assert_eq!(ks, if grid == "heads" { vec![1, 2, 5, 10] } else { vec![1, 5, 10] }, "{grid}");
        assert_eq!(g["methods"].as_array().unwrap().len(), 3);
        for (m, est) in g["methods"].as_array().unwrap().iter().zip(["attribution", "ig", "atp-star"]) {
            assert_eq!(m["key"], est);
            let order = by_size(&grid_of(est, grid));
            for (c, &k) in m["curves"].as_array().unwrap().iter().zip(&ks) {
                let at = truth[..k].iter().map(|t| order.iter().position(|o| o == t).unwrap() + 1).max().unwrap();
                assert_eq!(c["full_recall_at"].as_u64().unwrap() as usize, at, "{est} {grid} top {k}");
                let curve: Vec<f64> = serde_json::from_value(c["recall"].clone()).unwrap();
                if at >= 2 {
                    let found = order[..at - 1].iter().filter(|o| truth[..k].contains(o)).count();
                    assert_eq!(curve[at - 2], found as f64 / k as f64, "{est} {grid} top {k} before full recall");
                }
                assert_eq!((curve.len(), curve[at - 1]), (truth.len(), 1.0));
            }
        }
    }
    assert!(t.contains("full recall of exact's top k, heads, Attribution patching: top 1 after"), "{t}");
    for f in ["recall-heads.png", "recall-heads.svg", "recall-positions.png"] {
        assert!(out.join(f).is_file(), "{f} not written");
    }
}

/// `run --diagnostic`: the summary line, diagnostic.json (its max is the
/// largest |effect| of its subsets, which avoid the top K), the report page's
/// section, and the refusals that name their flag.
#[test]
fn run_diagnostic_writes_its_bound_and_refuses_a_top_k_leaving_no_head() {
    let out = fresh_dir("diagnostic");
    let args = ["run", "--device", "cpu", "--diagnostic", "4", "--diagnostic-top", "8", "--seed", "5", "--out"];
    let o = attrpatch(&[&args[..], &[out.to_str().unwrap()]].concat());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("diagnostic: 4 subsets of 2 of the 4 heads outside the top 8: largest |effect| "), "{t}");
    let d: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("diagnostic.json")).unwrap()).unwrap();
    let subsets = d["subsets"].as_array().unwrap();
    let max = subsets.iter().map(|s| s["effect"].as_f64().unwrap().abs()).fold(0f64, f64::max);
    assert_eq!(d["max_abs_effect"].as_f64().unwrap(), max);
    let top: Vec<[usize; 2]> = d["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| [h["layer"].as_u64().unwrap() as usize, h["head"].as_u64().unwrap() as usize])
        .collect();
    assert_eq!(top.len(), 8);
    for s in subsets {
        let heads: Vec<[usize; 2]> = serde_json::from_value(s["heads"].clone()).unwrap();
        assert!(heads.len() == 2 && heads.iter().all(|h| !top.contains(h)), "{heads:?} vs top {top:?}");
    }
    // The top 8 are the 8 largest |values| of the run's own heads grid.
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let heads: Vec<Vec<f64>> = serde_json::from_value(r["heads"]["values"].clone()).unwrap();
    let smallest_top = top.iter().map(|&[l, h]| heads[l][h].abs()).fold(f64::INFINITY, f64::min);
    assert!(heads
        .iter()
        .enumerate()
        .all(|(l, row)| row.iter().enumerate().all(|(h, v)| top.contains(&[l, h]) || v.abs() <= smallest_top)));
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.contains(d["bound"].as_str().unwrap()), "report.html lacks the bound");

    for (extra, msg) in [
        (
            vec!["--diagnostic", "3", "--diagnostic-top", "12"],
            "--diagnostic-top K = 12 leaves no head to sample: the run has 12 heads (3 layers x 4); give a K below 12",
        ),
        (vec!["--seed", "3"], "--seed sets the diagnostic; add --diagnostic N or drop it"),
        (vec!["--diagnostic", "0"], "--diagnostic must be at least 1"),
        (
            vec!["--diagnostic", "2", "--diagnostic-size", "5"],
            "--diagnostic-size M = 5 must be between 1 and the 2 heads outside the top 10",
        ),
    ] {
        let out = fresh_dir("diagnostic-refused");
        let o = attrpatch(&[&["run", "--device", "cpu", "--out", out.to_str().unwrap()][..], &extra[..]].concat());
        assert!(!o.status.success() && text(&o).contains(msg), "{extra:?}: {}", text(&o));
    }
}

#[test]
fn patch_writes_exact_grids_in_the_attribution_formats() {
    let out = fresh_dir("patch");
    let o = attrpatch(&[
        "patch",
        "--model",
        "models/gpt2-tiny-random.onnx",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("method: Activation patching (exact)"), "{t}");
    assert!(out.join("heads.png").is_file() && out.join("heads.csv").is_file());
    assert!(!out.join("positions.csv").exists(), "positions are patched only with --positions");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(v["heads"]["values"].as_array().unwrap().len(), 2);
    assert!(v["positions"].is_null());
}

#[test]
fn zero_ig_steps_or_rows_are_refused() {
    for (args, msg) in [
        (vec!["run", "--ig-steps", "0"], "--ig-steps must be at least 1"),
        (vec!["patch", "--rows-per-call", "0"], "--rows-per-call must be at least 1"),
        (vec!["compare", "--ig-steps", "0"], "--ig-steps must be at least 1"),
        (vec!["run", "--ig-steps", "2", "--rows-per-call", "0"], "--rows-per-call must be at least 1"),
        (vec!["run", "--ig-steps", "2", "--shard", "0/2"], "--ig-steps runs in one process"),
    ] {
        let out = fresh_dir("zero");
        let mut a = args.clone();
        a.extend(["--device", "cpu", "--out", out.to_str().unwrap()]);
        let o = attrpatch(&a);
        assert!(!o.status.success() && text(&o).contains(msg), "{args:?}: {}", text(&o));
    }
}

/// `--runtime tract --device cuda`: without the tract-cuda feature the error says how to build it;
/// with it, a machine without CUDA gets the missing library named, and one with CUDA must match
/// the PyTorch reference like every other runtime.
#[test]
fn tract_on_cuda_runs_or_says_what_is_missing() {
    let out = fresh_dir("tract-cuda");
    let o = attrpatch(&[
        "run",
        "--model",
        "models/gpt2-tiny-random.onnx",
        "--runtime",
        "tract",
        "--device",
        "cuda",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    if !cfg!(feature = "tract-cuda") {
        assert!(!o.status.success() && t.contains("--features tract-cuda"), "{t}");
        // The library says "the tract runtime with the device cuda"; the binary names the flags.
        assert!(t.contains("--runtime tract with --device cuda needs") && t.contains("or use --runtime ort"), "{t}");
    } else if o.status.success() {
        assert!(t.contains("tract (CUDA)"), "{t}");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
        let heads: Vec<Vec<f64>> = serde_json::from_value(v["heads"]["values"].clone()).unwrap();
        assert_grid_close("tract CUDA heads", &heads, &reference("ioi-reference.json").heads);
    } else {
        assert!(t.contains("tract CUDA runtime unavailable"), "{t}");
    }
    let o = attrpatch(&["run", "--runtime", "tract", "--device", "cuda:1", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("device 0 only"), "{}", text(&o));
}

/// Legacy exports reshape through symbolic batch*sequence sizes; inspect used
/// to say "attention heads: unknown" there while run found 4 with a probe.
#[test]
fn regression_inspect_reported_unknown_heads_for_legacy_exports() {
    let o = attrpatch(&["inspect", "models/ioi-gpt2/model.onnx"]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("layers: 3 (attention heads: 4)"), "{t}");
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// `edges --ablation` without `--convention noising`, or with a method that has no
/// ablated form, is refused before any work, naming the flag and what to use instead.
#[test]
fn edges_refuses_an_ablation_without_a_base_run() {
    for (args, fix) in [
        (vec!["edges", "--ablation", "zero"], "--convention noising"),
        (vec!["edges", "--convention", "noising", "--ablation", "mean", "--ig-steps", "3"], "drop --ig-steps"),
        (
            vec!["edges", "--convention", "noising", "--ablation", "zero", "--method", "clean-corrupted"],
            "--method eap or eap-ig-activations",
        ),
    ] {
        let o = attrpatch(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} ran");
        assert!(err.contains("--ablation") && err.contains(fix), "{args:?}: {err}");
    }
}

/// `--method` with `--ig-steps` it cannot take is refused naming both flags; `--ig-steps 0` too.
#[test]
fn edges_refuses_steps_the_method_does_not_take() {
    for (args, want) in [
        (vec!["edges", "--method", "eap", "--ig-steps", "5"], "--method eap with --ig-steps 5"),
        (vec!["edges", "--method", "clean-corrupted", "--ig-steps", "2"], "--method clean-corrupted with --ig-steps 2"),
        (vec!["edges", "--method", "eap-ig-activations", "--ig-steps", "0"], "--ig-steps must be at least 1"),
    ] {
        let o = attrpatch(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} ran");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `edges --method eap-ig-activations` (5 steps by default) names its method, steps,
/// convention and ablation in edges.json and on its method line, in one runtime call;
/// `--ig-steps 3` alone is still EAP-IG-inputs; `--faithfulness` under a mean
/// ablation runs and records it.
#[test]
fn edges_method_is_named_in_edges_json_and_the_method_line() {
    let dir = fresh_dir("cli-edges-method");
    let out = dir.to_str().unwrap();
    let read =
        |sub: &str| -> serde_json::Value { serde_json::from_slice(&std::fs::read(dir.join(sub)).unwrap()).unwrap() };
    let o = attrpatch(&[
        "edges",
        "--method",
        "eap-ig-activations",
        "--convention",
        "noising",
        "--ablation",
        "zero",
        "-o",
        out,
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("method: EAP-IG-activations (5 steps, noising, zero ablation;"), "{t}");
    let j = read("edges.json");
    assert_eq!(
        (j["method"].as_str(), j["ig_steps"].as_u64(), j["convention"].as_str(), j["ablation"].as_str()),
        (Some("EAP-IG-activations"), Some(5), Some("noising"), Some("zero"))
    );
    let o = attrpatch(&["edges", "--ig-steps", "3", "-o", out]);
    assert!(
        o.status.success() && text(&o).contains("method: EAP-IG-inputs (3 steps, denoising, patching ablation;"),
        "{}",
        text(&o)
    );
    let o = attrpatch(&["edges", "--method", "clean-corrupted", "-o", out]);
    assert!(
        o.status.success() && text(&o).contains("method: clean-corrupted (denoising, patching ablation;"),
        "{}",
        text(&o)
    );
    let o = attrpatch(&["edges", "--convention", "noising", "--ablation", "mean", "--faithfulness", "-o", out]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("carrying the mean value"), "{t}");
    let f = read("faithfulness.json");
    assert_eq!(f["ablation"], "mean");
    let pts = f["points"].as_array().unwrap();
    let first = pts[0]["faithfulness"].as_f64().unwrap();
    let last = pts[pts.len() - 1]["faithfulness"].as_f64().unwrap();
    assert!(first.abs() < 1e-9 && (last - 1.0).abs() < 1e-9, "{pts:?}");
}

/// A newcomer ran `attrpatch run models/ioi-gpt2/model.onnx` (as `inspect MODEL` takes it) and got
/// "unexpected argument" with no hint; and run from another folder, `run` used the bundled model
/// without saying so.
#[test]
fn regression_run_takes_the_model_as_its_first_argument_and_says_when_it_uses_the_bundled_one() {
    let out = fresh_dir("positional-model");
    let o = attrpatch(&["run", "models/gpt2-tiny-random.onnx", "--device", "cpu", "--out", out.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("model: models/gpt2-tiny-random.onnx"), "{t}");
    assert!(!t.contains("no --model given"), "{t}");
    let o = attrpatch(&["run", "a.onnx", "--model", "b.onnx"]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("'[MODEL]' cannot be used with '--model <MODEL>'"), "{t}");
    let elsewhere = fresh_dir("bundled-from-elsewhere");
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["run", "--device", "cpu", "--out", out.to_str().unwrap()])
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("no --model given: running the bundled IOI model"), "{t}");
}

/// A newcomer wrote `"correct": "Alice"` after a prompt ending in a word, which is accepted (it is
/// one token) but reads another token than " Alice" (clean logit diff 6.75 instead of about 20);
/// and mixed prompt lengths, whose positions grid is labelled with the first prompt's tokens.
/// Both now warn; the tutorial's prompts do not.
#[test]
fn regression_unspaced_answers_and_mixed_lengths_warn_before_the_grids_mislead() {
    let dir = fresh_dir("prompt-warnings");
    let line = |clean: &str, corrupted: &str, correct: &str, incorrect: &str| {
        serde_json::json!({"clean": clean, "corrupted": corrupted, "correct": correct, "incorrect": incorrect})
            .to_string()
    };
    let (a, b) = (
        "When John and Mary went to the shops, John gave the bag to",
        "When John and Mary went to the shops, Mary gave the bag to",
    );
    let files = [
        (
            "unspaced.jsonl",
            vec![line(a, b, "Mary", " John"), line(b, a, " John", " Mary")],
            "answer without the leading space",
        ),
        (
            "lengths.jsonl",
            vec![
                line(a, b, " Mary", " John"),
                line(
                    "Then John and Mary left, Mary gave it to",
                    "Then John and Mary left, John gave it to",
                    " John",
                    " Mary",
                ),
            ],
            "the prompts have 10 to 14 tokens",
        ),
    ];
    for (name, lines, says) in files {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        let out = dir.join(format!("{name}.out"));
        let o =
            attrpatch(&["run", "--device", "cpu", "--prompts", path.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert!(
            t.contains(&format!("warning: {}", if name == "unspaced.jsonl" { "1 " } else { "" })) && t.contains(says),
            "{name}: {t}"
        );
    }
    let out = dir.join("tutorial.out");
    let o = attrpatch(&["run", "--device", "cpu", "--out", out.to_str().unwrap()]);
    assert!(!text(&o).contains("warning:"), "{}", text(&o));
}

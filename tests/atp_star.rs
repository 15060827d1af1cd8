//! AtP* (`run --method atp-star`): the QK-fix against the attention pattern
//! recomputed through the plain model with the patched query or key fed in,
//! GradDrop's sweeps against finite differences of the model with a layer's
//! residual writes held constant, and the CLI's files and refusals.

use crate::common::by_hand::{Pairs, Plain};
use crate::common::root;
use attrpatch::atp_star::graph::Plan;
use attrpatch::atp_star::names::raw;
use attrpatch::augment::{augment_with, Anatomy, AugmentOptions};
use attrpatch::hooks::HookKind;
use attrpatch::job::{pair_inputs, JobGraph};
use attrpatch::onnx::OnnxModel;
use attrpatch::prompts::TokenizedPrompts;
use attrpatch::runtime::{self, Device, RuntimeKind, RuntimeOptions};
use ndarray::{ArrayD, Axis};
use prost::Message;
use std::collections::HashMap;

/// A fixture of tests/fixtures/arch: its model, pairs and head count.
fn fixture(name: &str) -> (OnnxModel, Pairs, TokenizedPrompts, usize) {
    let dir = root().join("tests/fixtures/arch");
    fixture_at(&dir.join(format!("{name}.json")), &dir.join(format!("{name}.onnx")))
}

/// A fixture from its JSON (token ids, head count) and model file.
fn fixture_at(json: &std::path::Path, model: &std::path::Path) -> (OnnxModel, Pairs, TokenizedPrompts, usize) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let (clean, corrupted, answers) = (ids("input_ids"), ids("corrupted_ids"), ids("answer_ids"));
    let pairs = Pairs::new(&clean, &corrupted, &answers);
    let mut o = attrpatch::job::JobOptions::new(model.to_path_buf());
    o.with_token_ids(clean, corrupted, &answers);
    let tokens = o.tokens.take().unwrap().1;
    let model = OnnxModel::load(&o.model).unwrap();
    (model, pairs, tokens, v["n_heads"].as_u64().unwrap() as usize)
}

/// The AtP* graph's outputs (raw ones included) on the fixture's pairs.
fn atp_star_outputs(
    model: &OnnxModel,
    tokens: &TokenizedPrompts,
    heads: usize,
    grad_drop: bool,
) -> HashMap<String, ArrayD<f32>> {
    let aug = augment_with(
        OnnxModel::load(&model.path).unwrap(),
        AugmentOptions { raw_outputs: true, heads: Some(heads), atp_star: Some(grad_drop), ..Default::default() },
    )
    .unwrap();
    let opts = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    let mut rt = runtime::create(&aug.proto.encode_to_vec(), &opts).unwrap();
    rt.run(pair_inputs(&aug.token_inputs(), tokens)).unwrap()
}

fn plan(model: &OnnxModel, heads: usize, grad_drop: bool) -> Plan {
    let anat = Anatomy::read(model, &HookKind::AttnOut).unwrap();
    Plan::read(model, &anat, heads, grad_drop).unwrap()
}

/// sum over `axes` of g * (a - b), for g, a, b of one shape.
fn weighted_change(g: &ArrayD<f32>, a: &ArrayD<f32>, b: &ArrayD<f32>, axes: &[usize]) -> ArrayD<f64> {
    let mut x: ArrayD<f64> =
        ndarray::Zip::from(g).and(a).and(b).map_collect(|&g, &a, &b| g as f64 * (a as f64 - b as f64));
    for &ax in axes.iter().rev() {
        x = x.sum_axis(Axis(ax));
    }
    x
}

fn max_abs_diff(got: &ArrayD<f32>, want: &ArrayD<f64>) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "shapes {:?} and {:?}", got.shape(), want.shape());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want.iter()).fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    (err, scale)
}

/// Each query's and each key's QK-fix equals sum g (A' - A), A' the pattern
/// the plain model computes with that query (key) fed its clean value.
fn check_qk_fix(name: &str) {
    check_qk_fix_on(fixture(name), name)
}

fn check_qk_fix_on((model, pairs, tokens, heads): (OnnxModel, Pairs, TokenizedPrompts, usize), name: &str) {
    let outs = atp_star_outputs(&model, &tokens, heads, false);
    for p in plan(&model, heads, false).patterns() {
        let (q, kt, probs) = (p.q.clone(), p.kt.clone(), p.probs().to_string());
        let mut plain = Plain::new(&model, &[], &[q.clone(), kt.clone(), probs.clone()]);
        let clean = plain.run(&pairs.clean, vec![]);
        let corrupted = plain.run(&pairs.corrupted, vec![]);
        let a = &corrupted[&probs];
        let g = &outs[&raw("probs_grad", p.layer)];
        assert_eq!(g.shape(), a.shape(), "{name} layer {}: dL/dA and A", p.layer);
        let rank = a.ndim();

        // Queries: row t of the pattern depends on q_t alone, so one run patches every row.
        let mut cut_q = Plain::new(&model, &[(q.clone(), clean[&q].ndim())], std::slice::from_ref(&probs));
        let aq = cut_q.run(&pairs.corrupted, vec![(q.clone(), clean[&q].clone())]).remove(&probs).unwrap();
        let want_q = weighted_change(g, &aq, a, &[rank - 1]);
        let (err, scale) = max_abs_diff(&outs[&raw("query", p.layer)], &want_q);
        assert!(err <= 1e-5 * scale.max(1.0), "{name} layer {}: queries off by {err:.2e} (scale {scale:.2e})", p.layer);

        // Keys: one run per key position, the keys' last axis.
        let kts = corrupted[&kt].shape().to_vec();
        let keys = *kts.last().unwrap();
        let mut cut_k = Plain::new(&model, &[(kt.clone(), kts.len())], std::slice::from_ref(&probs));
        let got_k = &outs[&raw("key", p.layer)];
        let mut worst = (0f64, 0f64);
        for s in 0..keys {
            let mut fed = corrupted[&kt].clone();
            fed.index_axis_mut(Axis(kts.len() - 1), s).assign(&clean[&kt].index_axis(Axis(kts.len() - 1), s));
            let ak = cut_k.run(&pairs.corrupted, vec![(kt.clone(), fed)]).remove(&probs).unwrap();
            let want = weighted_change(g, &ak, a, &[rank - 2, rank - 1]);
            let got = got_k.index_axis(Axis(got_k.ndim() - 1), s).to_owned().into_dyn();
            let (err, scale) = max_abs_diff(&got, &want);
            worst = (worst.0.max(err), worst.1.max(scale));
        }
        assert!(
            worst.0 <= 1e-5 * worst.1.max(1.0),
            "{name} layer {}: keys off by {:.2e} (scale {:.2e})",
            p.layer,
            worst.0,
            worst.1
        );
        eprintln!("{name} layer {}: QK-fix vs recomputed pattern, query {err:.1e}, key {:.1e}", p.layer, worst.0);
    }
}

/// Every attention form: eager (GPT-2 legacy), SDPA decompositions (dynamo),
/// GQA and rotary (Llama, GPT-NeoX), multi-query (GPT-BigCode), ALiBi (BLOOM),
/// opset 23's Attention op (normalised), Falcon's rotary GQA.
#[test]
fn the_qk_fix_equals_the_pattern_recomputed_with_the_patched_query_or_key() {
    for name in [
        "gpt2-legacy-op14",
        "gpt2-dynamo-op18",
        "llama-legacy-op14",
        "llama-sdpa-dynamo-op18",
        "llama-sdpa-dynamo-op23",
        "gptneox-dynamo-op18",
        "gptbigcode-sdpa-dynamo-op18",
        "bloom-legacy-op14",
        "bloom-dynamo-op18",
        "falcon-sdpa-dynamo-op18",
    ] {
        check_qk_fix(name);
    }
}

/// ONNX Runtime's fused attention (its GPT-2 converter and optimizer,
/// decomposed at load) and onnxruntime-genai builder files (GroupQueryAttention,
/// float16 and int4 weights kept).
#[test]
fn the_qk_fix_holds_on_fused_attention_and_builder_files() {
    let dir = root().join("tests/fixtures");
    for (json, model) in [
        ("contrib/gpt2-ortconv.json", "contrib/gpt2-ortconv.onnx"),
        ("contrib/gptneox-ortopt.json", "contrib/gptneox-ortopt.onnx"),
        ("contrib/llama-genai.json", "contrib/llama-genai/model.onnx"),
        ("genai/int4-sym.json", "genai/int4-sym/model.onnx"),
        ("genai/fp16-cpu.json", "genai/fp16-cpu/model.onnx"),
    ] {
        check_qk_fix_on(fixture_at(&dir.join(json), &dir.join(model)), json);
    }
}

/// GradDrop's sweep l: each head's estimate (at the last position) of the
/// layers below l equals the directional derivative, by central differences,
/// of the metric of the plain model whose layer-l attention and MLP outputs
/// are fed their corrupted values (held constant). Random-weight fixtures:
/// their metric is smooth enough for differences in float32.
fn check_grad_drop((model, pairs, tokens, heads): (OnnxModel, Pairs, TokenizedPrompts, usize), name: &str) {
    use attrpatch::atp_star::names::{output, Grid, Kind, Site};
    let outs = atp_star_outputs(&model, &tokens, heads, true);
    let residual: Vec<[String; 2]> =
        plan(&model, heads, true).residual().iter().map(|(w, _)| w.map(|s| s.to_string())).collect();
    let hooks: Vec<String> =
        attrpatch::hooks::find_hooks(&model, &HookKind::AttnOut).unwrap().iter().map(|h| h.tensor.clone()).collect();
    let logits = model.graph().output[0].name.clone();
    let mut exposed: Vec<String> = hooks.clone();
    exposed.extend(residual.iter().flatten().cloned());
    let mut plain = Plain::new(&model, &[], &exposed);
    let clean = plain.run(&pairs.clean, vec![]);
    let corrupted = plain.run(&pairs.corrupted, vec![]);
    let (ld_clean, ld_corr) = (pairs.mean_ld(&clean[&logits]), pairs.mean_ld(&corrupted[&logits]));
    let (b, s) = pairs.clean.dim();
    let (mut worst, mut moved, mut scale) = (0f64, 0f64, 0f64);
    for (l, writes) in residual.iter().enumerate().skip(1) {
        for (j, z) in hooks.iter().enumerate().take(l) {
            let mut fed: Vec<(String, usize)> = vec![(z.clone(), corrupted[z].ndim())];
            fed.extend(writes.iter().map(|w| (w.clone(), corrupted[w].ndim())));
            let mut cut = Plain::new(&model, &fed, &[]);
            let shape = corrupted[z].shape().to_vec();
            let d = corrupted[z].len() / (b * s);
            let view = |a: &ArrayD<f32>| a.clone().into_shape_with_order(ndarray::IxDyn(&[b, s, d])).unwrap();
            let (c, x) = (view(&clean[z]), view(&corrupted[z]));
            let sweep = &outs[&output(Kind::Sweep(l), Site::Output, Grid::Heads, j)];
            let plain_grid = &outs[&attrpatch::augment::names::heads(j)];
            let dh = d / heads;
            for h in 0..heads {
                let mut metric = |step: f32| {
                    let mut a = x.clone();
                    for i in 0..b {
                        for k in h * dh..(h + 1) * dh {
                            a[[i, s - 1, k]] += step * (c[[i, s - 1, k]] - x[[i, s - 1, k]]);
                        }
                    }
                    let mut feeds = vec![(z.clone(), a.into_shape_with_order(ndarray::IxDyn(&shape)).unwrap())];
                    feeds.extend(writes.iter().map(|w| (w.clone(), corrupted[w].clone())));
                    pairs.mean_ld(&cut.run(&pairs.corrupted, feeds)[&logits])
                };
                let eps = 1e-2f32;
                let fd = (metric(eps) - metric(-eps)) / (2.0 * eps as f64) / (ld_clean - ld_corr);
                let est: f64 = (0..b).map(|i| sweep[[i, h]] as f64).sum();
                let plain_est: f64 = (0..b).map(|i| plain_grid[[i, h]] as f64).sum();
                worst = worst.max((est - fd).abs());
                moved = moved.max((plain_est - fd).abs());
                scale = scale.max(fd.abs());
                eprintln!(
                    "{name}: sweep {l}, layer {j} head {h}: sweep {est:.6}, differences {fd:.6}, plain {plain_est:.6}"
                );
            }
        }
    }
    assert!(
        worst <= 1e-3 * scale.max(1e-2),
        "{name}: GradDrop sweeps off finite differences by {worst:.2e} (scale {scale:.2e})"
    );
    // The held writes matter: the plain gradient is far from these derivatives.
    assert!(moved > 20.0 * worst, "{name}: the sweeps look like the plain gradient ({moved:.2e} vs {worst:.2e})");
}

#[test]
fn grad_drop_sweeps_equal_finite_differences_with_the_layers_writes_held() {
    for name in ["gpt2-legacy-op14", "llama-sdpa-dynamo-op18", "gptneox-dynamo-op18"] {
        check_grad_drop(fixture(name), name);
    }
}

/// The saturated-head fixture (tools/fixtures/saturated_head.py): layer 1
/// head 0 attends nearly one-hot, and patching its last-position query moves
/// that attention to another token. Exact patching of each head's query (by
/// hand: the plain model fed the query with that head's last row clean) sees
/// it; AtP scores it near zero; AtP*'s QK-fix ranks it where exact patching does.
#[test]
fn atp_star_ranks_a_saturated_heads_query_where_exact_patching_does_and_atp_misses_it() {
    use attrpatch::atp_star::names::{output, Grid, Kind, Site};
    let dir = root().join("tests/fixtures/atp_star");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("saturated-gpt2.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let (clean_ids, corrupted_ids, answers) = (ids("input_ids"), ids("corrupted_ids"), ids("answer_ids"));
    let pairs = Pairs::new(&clean_ids, &corrupted_ids, &answers);
    let mut o = attrpatch::job::JobOptions::new(dir.join("saturated-gpt2.onnx"));
    o.with_token_ids(clean_ids, corrupted_ids, &answers);
    let tokens = o.tokens.take().unwrap().1;
    let model = OnnxModel::load(&o.model).unwrap();
    let heads = v["n_heads"].as_u64().unwrap() as usize;
    let target =
        (v["saturated"]["layer"].as_u64().unwrap() as usize, v["saturated"]["head"].as_u64().unwrap() as usize);
    let outs = atp_star_outputs(&model, &tokens, heads, false);
    let logits = model.graph().output[0].name.clone();
    let patterns = plan(&model, heads, false);
    let queries: Vec<String> = patterns.patterns().iter().map(|p| p.q.clone()).collect();
    let mut plain = Plain::new(&model, &[], &queries);
    let clean = plain.run(&pairs.clean, vec![]);
    let corrupted = plain.run(&pairs.corrupted, vec![]);
    let (ld_clean, ld_corr) = (pairs.mean_ld(&clean[&logits]), pairs.mean_ld(&corrupted[&logits]));
    let (b, s) = pairs.clean.dim();
    let (mut exact, mut atp, mut fixed) = (vec![], vec![], vec![]);
    for (layer, q) in queries.iter().enumerate() {
        assert_eq!(corrupted[q].shape()[1], heads, "queries of layer {layer} as [B, H, T, d]");
        let mut cut = Plain::new(&model, &[(q.clone(), 4)], &[]);
        let sum = |kind: Kind, h: usize| -> f64 {
            let g = &outs[&output(kind, Site::Query, Grid::Heads, layer)];
            (0..b).map(|i| g[[i, h]] as f64).sum()
        };
        for h in 0..heads {
            let mut fed = corrupted[q].clone();
            for i in 0..b {
                let row = clean[q].slice(ndarray::s![i, h, s - 1, ..]).to_owned();
                fed.slice_mut(ndarray::s![i, h, s - 1, ..]).assign(&row);
            }
            let ld = pairs.mean_ld(&cut.run(&pairs.corrupted, vec![(q.clone(), fed)])[&logits]);
            exact.push(((layer, h), (ld - ld_corr) / (ld_clean - ld_corr)));
            atp.push(((layer, h), sum(Kind::Atp, h)));
            fixed.push(((layer, h), sum(Kind::QkFix, h)));
        }
    }
    let value = |grid: &[((usize, usize), f64)]| grid.iter().find(|(n, _)| *n == target).unwrap().1;
    let rank = |grid: &[((usize, usize), f64)]| grid.iter().filter(|(_, v)| v.abs() > value(grid).abs()).count();
    let (e, a, f) = (value(&exact), value(&atp), value(&fixed));
    eprintln!(
        "saturated head {target:?}: exact {e:.4} (rank {}), AtP {a:.4} (rank {}), AtP* {f:.4} (rank {})",
        rank(&exact),
        rank(&atp),
        rank(&fixed)
    );
    assert!(e.abs() > 0.05, "the fixture's saturated head should matter: exact {e}");
    assert!(a.abs() < 0.1 * e.abs(), "AtP should miss the saturated head: {a} against exact {e}");
    assert!((f - e).abs() < 0.25 * e.abs(), "AtP* should see it: {f} against exact {e}");
    assert_eq!(rank(&fixed), rank(&exact), "AtP* ranks it where exact patching does");
    assert!(rank(&atp) > rank(&exact), "AtP ranks it lower than exact patching does");
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(args).current_dir(root()).output().unwrap()
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn grid(v: &serde_json::Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap()
}

/// `run --method atp-star` on the bundled model: its files, its head
/// outputs' AtP equal to `run`'s grids, GradDrop's top layer equal to |AtP|
/// (no sweep reaches it: (L - 1) |c| / (L - 1)), and without GradDrop the
/// AtP* grids are the QK-fix's.
#[test]
fn run_method_atp_star_writes_its_grids_beside_runs() {
    let (star, plain, fix) = (
        crate::common::fresh_dir("atp-star"),
        crate::common::fresh_dir("atp-plain"),
        crate::common::fresh_dir("atp-fix"),
    );
    let model = "models/ioi-gpt2/model.onnx";
    for (dir, extra) in [
        (&star, &["--method", "atp-star"][..]),
        (&plain, &[][..]),
        (&fix, &["--method", "atp-star", "--no-grad-drop"][..]),
    ] {
        let mut args = vec!["run", "--model", model, "--out", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = cli(&args);
        assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    for f in [
        "atp_star.json",
        "query_heads.csv",
        "query_positions.csv",
        "key_heads.csv",
        "key_positions.csv",
        "heads.png",
        "query_heads.png",
    ] {
        assert!(star.join(f).is_file(), "{f} not written");
    }
    let s = json(&star.join("atp_star.json"));
    let run_heads = grid(&json(&plain.join("results.json"))["heads"]["values"]);
    crate::common::by_hand::assert_abs_close(
        "output AtP vs run",
        &grid(&s["output"]["atp"]["heads"]),
        &run_heads,
        1e-6,
    );
    let (atp, gd) = (grid(&s["output"]["atp"]["heads"]), grid(&s["output"]["atp_star"]["heads"]));
    let top = atp.len() - 1;
    let abs: Vec<f64> = atp[top].iter().map(|v| v.abs()).collect();
    crate::common::by_hand::assert_abs_close("top layer", &gd[top..], &[abs], 1e-9);
    assert!(gd.iter().flatten().all(|v| *v >= 0.0), "GradDrop scores are magnitudes: {gd:?}");
    assert_eq!(s["grad_drop_sweeps"], atp.len() - 1);
    let f = json(&fix.join("atp_star.json"));
    assert_eq!(f["grad_drop_sweeps"], 0);
    for site in ["query", "key"] {
        assert_eq!(f[site]["atp_star"], f[site]["qk_fix"], "{site}: without GradDrop AtP* is the QK-fix");
        // GradDrop needs no second session: the QK-fix is the same either way.
        let (a, b) = (grid(&f[site]["qk_fix"]["positions"]), grid(&s[site]["qk_fix"]["positions"]));
        crate::common::by_hand::assert_abs_close(site, &a, &b, 1e-7);
    }
}

#[test]
fn atp_star_options_that_do_not_apply_are_refused_by_name() {
    let model = "models/ioi-gpt2/model.onnx";
    for (args, says) in [
        (vec!["run", "--model", model, "--no-grad-drop"], "--no-grad-drop is an option of --method atp-star"),
        (
            vec!["run", "--model", model, "--method", "atp-star", "--shard", "0/2"],
            "--shard is not an option of --method atp-star",
        ),
        (vec!["run", "--model", model, "--method", "atp-star", "--ig-steps", "4"], "--ig-steps is not an option"),
        (vec!["run", "--model", model, "--method", "atp-star", "--dedup", "on"], "drop --dedup on"),
    ] {
        let o = cli(&args);
        let t = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(!o.status.success() && t.contains(says), "{args:?}: {t}");
    }
}

/// GradDrop's combination on a hand-made 3-layer grid: layer 0 sees sweeps
/// 1 and 2, layer 1 sees sweep 2 and its plain value once, layer 2 its plain value twice.
#[test]
fn grad_drop_combines_the_sweeps_as_the_paper_defines() {
    use attrpatch::grids::Grids;
    let plain = Grids { heads: vec![vec![1.0], vec![-2.0], vec![3.0]], positions: vec![vec![0.0]; 3] };
    let sweep1 = Grids { heads: vec![vec![-4.0]], positions: vec![vec![0.0]] };
    let sweep2 = Grids { heads: vec![vec![5.0], vec![6.0]], positions: vec![vec![0.0]; 2] };
    let g = attrpatch::atp_star::grad_drop_grids(&plain, &[sweep1, sweep2]);
    // layer 0: (|-4| + |5|) / 2; layer 1: (|-2| + |6|) / 2; layer 2: (3 + 3) / 2.
    assert_eq!(g.heads, vec![vec![4.5], vec![4.0], vec![3.0]]);
}

/// GradDrop needs each block's residual writes; where the edge anatomy
/// cannot read them (ONNX Runtime's GPT-2 converter fuses the MLP's residual
/// add into SkipLayerNormalization), the error says so and offers the QK-fix alone.
#[test]
fn grad_drop_on_a_file_without_readable_blocks_names_no_grad_drop() {
    let dir = root().join("tests/fixtures/contrib");
    let (model, _, _, heads) = fixture_at(&dir.join("gpt2-ortconv.json"), &dir.join("gpt2-ortconv.onnx"));
    let anat = Anatomy::read(&model, &HookKind::AttnOut).unwrap();
    let e = Plan::read(&model, &anat, heads, true).err().expect("GradDrop should be refused here").to_string();
    assert!(e.contains("residual") && e.contains("--no-grad-drop"), "{e}");
    assert!(Plan::read(&model, &anat, heads, false).is_ok());
}

/// `compare --atp-star` on a family fixture (Llama: GQA, rotary, SDPA): AtP*'s
/// recall curves beside AtP's, and its full recall of exact's top k reached
/// no later than the last node.
#[test]
fn compare_with_atp_star_on_a_family_fixture_gives_recall_curves_for_both() {
    let dir = root().join("tests/fixtures/arch");
    let name = "llama-sdpa-dynamo-op18";
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let mut o = attrpatch::job::JobOptions::new(dir.join(format!("{name}.onnx")));
    o.with_token_ids(ids("input_ids"), ids("corrupted_ids"), &ids("answer_ids"));
    let c = attrpatch::compare::compare(
        &o,
        &attrpatch::CompareOptions { positions: true, ig_steps: None, rows_per_call: None, atp_star: true },
    )
    .unwrap();
    let keys: Vec<&str> = c.estimates.iter().map(|e| e.key).collect();
    assert_eq!(keys, ["attribution", "atp-star"]);
    for g in &c.recall {
        let methods: Vec<&str> = g.methods.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(methods, ["attribution", "atp-star"], "{}", g.grid);
        for m in &g.methods {
            for (curve, &k) in m.curves.iter().zip(&g.ks) {
                assert!(curve.full_recall_at >= k && curve.full_recall_at <= g.nodes, "{} {} top {k}", g.grid, m.key);
                assert_eq!(curve.recall.len(), g.nodes);
            }
            eprintln!(
                "{name} {} {}: full recall at {:?} for k {:?}",
                g.grid,
                m.key,
                m.curves.iter().map(|c| c.full_recall_at).collect::<Vec<_>>(),
                g.ks
            );
        }
    }
    assert_eq!(c.recall.len(), 2, "heads and positions");
}

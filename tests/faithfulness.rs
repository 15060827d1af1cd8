//! Exact edge patching, circuits and faithfulness, `compare --edges` (issue 14
//! items 3 and 4a): the patching graph's rows against a reader input edited
//! by hand in the edge graph, the ends of the faithfulness sweep (K = 0 is the
//! corrupted run, K = all the clean run) in both directions, EAP equal to exact
//! edge patching on a linear toy, EAP against exact patching on GPT-2, and the CLI.

use crate::common::*;
use attrpatch::edges::compare::{compare_edges, exact_edges};
use attrpatch::edges::faithfulness::{circuit, faithfulness, sweep};
use attrpatch::edges::patching::{patch_edges, Direction};
use attrpatch::edges::{run_edges, Qkv, Reader, Writer};
use attrpatch::job::{run_job, JobOptions};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};

fn one_thread() -> RuntimeOptions {
    RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 }
}

/// A fixture's job on its token ids, one thread.
fn fixture(name: &str) -> JobOptions {
    let dir = root().join("tests/fixtures/arch");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let mut o = JobOptions::new(dir.join(format!("{name}.onnx")));
    o.with_token_ids(ids("input_ids"), ids("corrupted_ids"), &ids("answer_ids"));
    o.runtime = one_thread();
    o
}

/// tools/make_linear_toy.py's model on one-token prompts.
fn linear_toy() -> JobOptions {
    let mut o = JobOptions::new(root().join("tests/fixtures/linear-toy.onnx"));
    o.with_token_ids(
        vec![vec![1], vec![5], vec![9]],
        vec![vec![2], vec![7], vec![3]],
        &[vec![4, 6], vec![10, 11], vec![0, 15]],
    );
    o.heads = Some(2);
    o.runtime = one_thread();
    o
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "{what}: {got} vs {want} (tolerance {tol:.1e})");
}

/// K = 0 patches every edge to the corrupted value: the corrupted run; K = all
/// patches none: the clean run. Both baselines agree with `run`'s.
fn sweep_ends(name: &str) {
    let o = fixture(name);
    let s = run_edges(&o, 1).unwrap();
    let n = s.edges.len();
    let ks = sweep(n, &[5]);
    let f = faithfulness(&o, &s, &ks, None).unwrap();
    assert_eq!(f.points.iter().map(|p| p.k).collect::<Vec<_>>(), ks);
    close(&format!("{name}: K = 0"), f.points[0].faithfulness, 0.0, 1e-4);
    close(&format!("{name}: K = all"), f.points.last().unwrap().faithfulness, 1.0, 1e-4);
    assert!(f.points.iter().all(|p| p.faithfulness.is_finite()));
    // The middle of the curve is not an end: the sweep measured something.
    assert!(f.points[1..ks.len() - 1]
        .iter()
        .any(|p| (p.faithfulness - 1.0).abs() > 1e-3 && p.faithfulness.abs() > 1e-3));
    let run = run_job(&o).unwrap().unwrap();
    let tol = 1e-4 * run.clean_metric.abs().max(run.corrupted_metric.abs());
    close(&format!("{name}: clean"), f.clean, run.clean_metric, tol);
    close(&format!("{name}: corrupted"), f.corrupted, run.corrupted_metric, tol);
    // Every K but all is a row of each pair, beside the baseline row (K = all
    // patches nothing: it is the clean baseline), in as few calls as the rows
    // per call allow.
    assert_eq!(f.rows, 4 * ks.len());
    assert_eq!(f.runtime_calls, f.rows.div_ceil(f.rows_per_call));
    // Asked alone, K = all is run as a patched row, and it is the clean run.
    let all = faithfulness(&o, &s, &[n], None).unwrap();
    assert_eq!(all.rows, 4 * 2);
    close(&format!("{name}: K = all, run"), all.points[0].faithfulness, 1.0, 1e-4);
}

/// The sweep carries MIB's sizes: its curve is the sweep's own points at
/// K = int(fraction x edges), f = 1 at 100% and 0 where K = 0 (the
/// normalisation), CPR and CMD its trapezoids.
#[test]
fn the_sweep_reports_mibs_curve_cpr_and_cmd() {
    use attrpatch::eap::{mib_areas, mib_ks, MIB_FRACTIONS};
    let o = fixture("gpt2-legacy-op14");
    let s = run_edges(&o, 1).unwrap();
    let n = s.edges.len();
    assert!(mib_ks(n).iter().any(|&k| k > 0 && k < n), "{n} edges: MIB's sizes are not only the ends");
    let f = faithfulness(&o, &s, &sweep(n, &[]), None).unwrap();
    let m = f.mib.as_ref().expect("the sweep includes MIB's sizes");
    assert_eq!(m.k_percent, [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
    assert_eq!(m.k, mib_ks(n));
    for (&k, &v) in m.k.iter().zip(&m.f) {
        let p = f.points.iter().find(|p| p.k == k).unwrap();
        assert_eq!(p.faithfulness, v, "K = {k}");
        if k == 0 {
            close("MIB f at K = 0", v, 0.0, 1e-4);
        }
    }
    close("MIB f at 100%", m.f[9], 1.0, 1e-4);
    let (cpr, cmd) = mib_areas(&MIB_FRACTIONS, &m.f);
    assert_eq!((m.cpr, m.cmd), (cpr, cmd));
    assert!(m.cpr.is_finite() && m.cmd >= 0.0, "{m:?}");
    // Without MIB's sizes in the K asked for there is no MIB curve.
    assert!(faithfulness(&o, &s, &[0, n], None).unwrap().mib.is_none());
}

#[test]
fn sweep_ends_gpt2() {
    sweep_ends("gpt2-legacy-op14");
}

#[test]
fn sweep_ends_gptneox_parallel() {
    sweep_ends("gptneox-legacy-op14");
}

#[test]
fn sweep_ends_llama_gqa() {
    sweep_ends("llama-legacy-op14");
}

#[test]
fn sweep_ends_falcon_grouped_parallel() {
    sweep_ends("falcon-legacy-op14");
}

/// GPT-J: attention and MLP read one layer-norm, so the MLP's reader is the last of the batched copies.
#[test]
fn sweep_ends_gptj_shared_norm() {
    sweep_ends("gptj-legacy-op14");
}

/// The other direction: every edge carrying its clean value into the
/// corrupted run is the clean run, none is the corrupted run; calls of two
/// rows give what one call gives.
#[test]
fn all_edges_patched_into_the_corrupted_run_is_the_clean_run() {
    let o = fixture("gpt2-legacy-op14");
    let run = |rows| {
        patch_edges(&o, Direction::CleanIntoCorrupted, rows, |t| {
            let all: Vec<usize> = (0..t.edges().len()).collect();
            Ok(vec![all, vec![], vec![3, 40]])
        })
        .unwrap()
    };
    let one = run(None);
    close("all edges", one.normalised[0], 1.0, 1e-4);
    close("no edge", one.normalised[1], 0.0, 1e-6);
    let small = run(Some(2));
    assert_eq!(small.runtime_calls, 8);
    for (a, b) in one.normalised.iter().zip(&small.normalised) {
        close("2 rows per call", *b, *a, 1e-5);
    }
}

/// The edge graph (built with a `perturb` layer) run on `tokens` with `PERTURB` = `p`:
/// the corrupted and the clean copy's metric summed over the pairs.
fn perturbed_sums(
    rt: &mut dyn attrpatch::runtime::Runtime,
    g: &attrpatch::edges::graph::EdgeGraph,
    tokens: &attrpatch::prompts::TokenizedPrompts,
    p: ndarray::ArrayD<f32>,
) -> (f64, f64) {
    use attrpatch::job::{pair_inputs, JobGraph};
    use attrpatch::runtime::{take_output, Value};
    let mut inputs = pair_inputs(&g.token_inputs(), tokens);
    inputs.push((attrpatch::edges::graph::PERTURB.into(), Value::F32(p)));
    let mut out = rt.run(inputs).unwrap();
    let v = take_output(&mut out, "attrpatch.corrupted_logit_diffs").unwrap();
    let c = take_output(&mut out, "attrpatch.clean_logit_diffs").unwrap();
    (v.iter().map(|&x| x as f64).sum::<f64>(), c.iter().map(|&x| x as f64).sum::<f64>())
}

/// A naive implementation of one edge: the edge graph (edges::graph) with
/// the corrupted run's layer-1 q/k/v reader copies perturbed by hand, the
/// k reader of key/value head 1 moved by the `input` writer's clean-minus-
/// corrupted output (token embeddings, read from the weights: positions
/// cancel), against the patching graph's row for input -> a1.h1.k.
#[test]
fn one_patched_edge_is_the_reader_input_edited_by_hand() {
    use attrpatch::edges::graph::{build, EdgeGraphOptions};
    use attrpatch::job::JobGraph;
    use attrpatch::onnx::consts::tensor_f64s;
    use attrpatch::runtime;
    use ndarray::{ArrayD, IxDyn};
    let o = fixture("gpt2-legacy-op14");
    let tokens = o.tokens.clone().unwrap().1;
    let model = attrpatch::onnx::OnnxModel::load(&o.model).unwrap();
    let wte = model.graph().initializer.iter().find(|t| t.name == "transformer.wte.weight").unwrap();
    let wte = tensor_f64s(wte).unwrap();
    let mut g = build(model, &EdgeGraphOptions { perturb: Some(1), ..Default::default() }).unwrap();
    let (r, d, reader) = (g.anatomy.head_readers(), g.anatomy.d_model, g.anatomy.heads + 1);
    let bytes = prost::Message::encode_to_vec(g.proto_mut());
    let mut rt = runtime::create(&bytes, &one_thread()).unwrap();
    let (b, s) = (tokens.clean_ids.len(), tokens.seq_len);
    let mut run = |edit: bool| {
        let mut p = ArrayD::<f32>::zeros(IxDyn(&[r, b, s, d]));
        if edit {
            for pair in 0..b {
                for pos in 0..s {
                    let (c, k) = (tokens.clean_ids[pair][pos] as usize, tokens.corrupted_ids[pair][pos] as usize);
                    for i in 0..d {
                        p[[reader, pair, pos, i]] = (wte[c * d + i] - wte[k * d + i]) as f32;
                    }
                }
            }
        }
        perturbed_sums(rt.as_mut(), &g, &tokens, p)
    };
    let (corr, clean) = run(false);
    let (edited, _) = run(true);
    let naive = (edited - corr) / (clean - corr);
    assert!(naive.abs() > 1e-3, "the edge's effect is too small to test: {naive}");
    let r = patch_edges(&o, Direction::CleanIntoCorrupted, None, |t| {
        let e = t.edges().iter().position(|&e| e == (Writer::Input, Reader::Head(1, 1, Qkv::K))).unwrap();
        Ok(vec![vec![e]])
    })
    .unwrap();
    // float32 metrics of a few units differ by ~1e-6 of themselves: 1e-5 of the clean-corrupted gap.
    close("input -> a1.h1.k", r.normalised[0], naive, 1e-5);
}

/// Exact edge patching under each ablation, one edge by hand: the edge graph's
/// corrupted copy fed the clean prompts, its layer-0 v reader copy of key/value
/// head 0 moved by (ablated - clean) of the `input` writer (token plus position
/// embeddings, read from the weights; the means worked out here over the
/// corrupted prompts), against the patching graph's row for input -> a0.h0.v
/// carrying the ablated value into the clean run. Then the faithfulness curve
/// under the ablation: 0 at the empty circuit, 1 at all edges, the rest
/// (row - empty) / (1 - empty) of the same rows.
#[test]
fn one_ablated_edge_is_the_reader_input_edited_by_hand() {
    use attrpatch::edges::convention::{Ablation, Convention, Method};
    use attrpatch::edges::faithfulness::faithfulness_with;
    use attrpatch::edges::graph::{build, EdgeGraphOptions};
    use attrpatch::edges::patching::{patch_edges_with, Intervention};
    use attrpatch::edges::{run_edges_method, EdgeMethod};
    use attrpatch::job::JobGraph;
    use attrpatch::onnx::consts::tensor_f64s;
    use attrpatch::runtime;
    use ndarray::{ArrayD, IxDyn};
    let o = fixture("gpt2-legacy-op14");
    let tokens = o.tokens.clone().unwrap().1;
    let model = attrpatch::onnx::OnnxModel::load(&o.model).unwrap();
    let weight = |name: &str| tensor_f64s(model.graph().initializer.iter().find(|t| t.name == name).unwrap()).unwrap();
    let (wte, wpe) = (weight("transformer.wte.weight"), weight("transformer.wpe.weight"));
    let mut g = build(model, &EdgeGraphOptions { perturb: Some(0), ..Default::default() }).unwrap();
    let (r, d) = (g.anatomy.head_readers(), g.anatomy.d_model);
    let reader = g.anatomy.heads + g.anatomy.kv_heads; // a0.h0.v
    let bytes = prost::Message::encode_to_vec(g.proto_mut());
    let mut rt = runtime::create(&bytes, &one_thread()).unwrap();
    let (b, s) = (tokens.clean_ids.len(), tokens.seq_len);
    let x0 = |tok: i64, pos: usize, i: usize| wte[tok as usize * d + i] + wpe[pos * d + i];
    // The corrupted `input` writer's means, by hand: overall and per position.
    let mean_at = |pos: Option<usize>, i: usize| {
        let cells: Vec<(usize, usize)> =
            (0..b).flat_map(|p| (0..s).map(move |q| (p, q))).filter(|&(_, q)| pos.is_none_or(|w| w == q)).collect();
        cells.iter().map(|&(p, q)| x0(tokens.corrupted_ids[p][q], q, i)).sum::<f64>() / cells.len() as f64
    };
    let mut run = |feed_clean: bool, edit: Option<Ablation>| {
        let mut p = ArrayD::<f32>::zeros(IxDyn(&[r, b, s, d]));
        for (pair, pos, i) in (0..b).flat_map(|p| (0..s).flat_map(move |q| (0..d).map(move |i| (p, q, i)))) {
            let clean = x0(tokens.clean_ids[pair][pos], pos, i);
            let ablated = match edit {
                None => continue,
                Some(Ablation::Zero) => 0.0,
                Some(Ablation::Mean) => mean_at(None, i),
                Some(Ablation::MeanPositional) => mean_at(Some(pos), i),
                Some(Ablation::Patching) => x0(tokens.corrupted_ids[pair][pos], pos, i),
            };
            p[[reader, pair, pos, i]] = (ablated - clean) as f32;
        }
        let mut t = tokens.clone();
        if feed_clean {
            t.corrupted_ids = t.clean_ids.clone();
        }
        perturbed_sums(rt.as_mut(), &g, &t, p)
    };
    let (corr, clean) = run(false, None);
    let ablations = [Ablation::Patching, Ablation::Zero, Ablation::Mean, Ablation::MeanPositional];
    let mut seen = vec![];
    for ablation in ablations {
        let what = format!("input -> a0.h0.v, --ablation {}", ablation.label());
        let (edited, _) = run(true, Some(ablation));
        let naive = (edited - corr) / (clean - corr);
        assert!((naive - 1.0).abs() > 1e-3, "{what}: the edge's effect is too small to test: {naive}");
        let m = EdgeMethod { method: Method::Eap, ig_steps: 1, convention: Convention::Noising, ablation };
        let scored = run_edges_method(&o, &m).unwrap();
        let carried = Intervention { ablation, means: scored.means.as_ref() };
        let e = |t: &attrpatch::edges::Topology| {
            t.edges().iter().position(|&e| e == (Writer::Input, Reader::Head(0, 0, Qkv::V))).unwrap()
        };
        let rows = patch_edges_with(&o, Direction::CorruptedIntoClean, None, carried, |t| Ok(vec![vec![e(t)], vec![]]))
            .unwrap();
        // float32 metrics of a few units differ by ~1e-6 of themselves: 1e-5 of the clean-corrupted gap.
        close(&what, rows.normalised[0], naive, 1e-5);
        close(&format!("{what}: nothing patched is the clean run"), rows.normalised[1], 1.0, 1e-5);
        seen.push(naive);
        // The curve: normalised by its empty circuit, from the same rows.
        let n = scored.scores.edges.len();
        let f = faithfulness_with(&o, &scored.scores, &[0, 3, n], None, carried).unwrap();
        assert_eq!(f.ablation, ablation.label(), "{what}");
        close(&format!("{what}: K = 0"), f.points[0].faithfulness, 0.0, 1e-5);
        close(&format!("{what}: K = all"), f.points[2].faithfulness, 1.0, 1e-5);
        let k3 = attrpatch::edges::faithfulness::circuit(&scored.scores, 3);
        let raw = patch_edges_with(&o, Direction::CorruptedIntoClean, None, carried, |t| {
            let all: Vec<usize> = (0..t.edges().len()).collect();
            Ok(vec![all.clone(), all.into_iter().filter(|e| !k3.contains(e)).collect()])
        })
        .unwrap();
        let want = (raw.normalised[1] - raw.normalised[0]) / (1.0 - raw.normalised[0]);
        close(&format!("{what}: K = 3"), f.points[1].faithfulness, want, 1e-5);
    }
    // The ablations carry different values: the test tells them apart.
    for i in 0..seen.len() {
        for j in 0..i {
            assert!((seen[i] - seen[j]).abs() > 1e-3, "ablations {i} and {j} give the same edge effect: {seen:?}");
        }
    }
    // A mean without the means is refused, naming the flag.
    let carried = Intervention { ablation: Ablation::Mean, means: None };
    let e = patch_edges_with(&o, Direction::CorruptedIntoClean, None, carried, |_| Ok(vec![vec![]])).unwrap_err();
    assert!(e.to_string().contains("--ablation mean"), "{e}");
}

/// With no nonlinearity between the writers and the metric (and one-token
/// prompts, so softmax is 1), the metric is affine in every reader's input:
/// EAP's first-order estimate is exact edge patching, edge by edge.
#[test]
fn eap_is_exact_edge_patching_on_a_linear_toy() {
    let o = linear_toy();
    let eap = run_edges(&o, 1).unwrap();
    let (exact, _, _, _) = exact_edges(&o, None).unwrap();
    assert_eq!(eap.edges.len(), exact.edges.len());
    let scale = exact.edges.iter().fold(0.0f64, |m, e| m.max(e.score.abs()));
    assert!(scale > 0.1, "the toy's edges have no effect: largest {scale}");
    let nonzero = exact.edges.iter().filter(|e| e.score.abs() > 1e-3 * scale).count();
    assert!(nonzero > exact.edges.len() / 2, "only {nonzero} of {} edges have an effect", exact.edges.len());
    for (a, x) in eap.edges.iter().zip(&exact.edges) {
        assert_eq!((&a.from, &a.to), (&x.from, &x.to));
        close(&format!("{} -> {}", a.from, a.to), a.score, x.score, 1e-5 * scale);
    }
}

/// On GPT-2 (2 layers, 4 heads), EAP and EAP-IG follow exact edge patching
/// closely; the largest misses are named edges.
#[test]
fn eap_correlates_with_exact_edge_patching_on_gpt2() {
    let o = fixture("gpt2-legacy-op14");
    let c = compare_edges(&o, Some(5), None).unwrap();
    assert_eq!(c.agreements.len(), 2);
    let edges = c.exact.edges.len();
    assert_eq!(c.exact_rows, 4 * (edges + 1));
    for a in &c.agreements {
        let r = a.pearson.unwrap();
        assert!(r > 0.9, "{}: Pearson {r}", a.method);
        assert!(a.largest_misses[0].edge.contains(" -> "), "{:?}", a.largest_misses[0]);
        assert!(a.max_abs_error > 0.0);
    }
    let text = attrpatch::edges::compare::report(&c);
    assert!(text.contains("EAP-IG-inputs (5)") && text.contains("largest misses, EAP:"), "{text}");
}

/// The top-K circuit of the exact effects restores more of the gap than a
/// circuit of the K smallest edges: the curve measures the circuit, not K.
#[test]
fn the_top_circuit_beats_the_bottom_one() {
    let o = fixture("gpt2-legacy-op14");
    let s = run_edges(&o, 1).unwrap();
    let k = 8;
    let mut flipped = s.clone();
    let top = circuit(&s, k);
    // The same K edges as the smallest ones: scores inverted in magnitude.
    for e in flipped.edges.iter_mut() {
        e.score = 1.0 / (e.score.abs() + 1e-12);
    }
    let bottom = circuit(&flipped, k);
    assert_ne!(top, bottom);
    let f_top = faithfulness(&o, &s, &[k], None).unwrap().points[0].faithfulness;
    let f_bottom = faithfulness(&o, &flipped, &[k], None).unwrap().points[0].faithfulness;
    assert!(f_top > f_bottom + 0.05, "top {k}: {f_top}, bottom {k}: {f_bottom}");
}

#[test]
fn bad_k_and_kl_are_refused_with_the_reason() {
    let o = fixture("gpt2-legacy-op14");
    let s = run_edges(&o, 1).unwrap();
    let e = faithfulness(&o, &s, &[s.edges.len() + 1], None).unwrap_err().to_string();
    assert!(e.contains("the model has") && e.contains("edges"), "{e}");
    let mut kl = fixture("gpt2-legacy-op14");
    kl.metric = attrpatch::augment::Metric::Kl;
    let e = faithfulness(&kl, &s, &[0], None).unwrap_err().to_string();
    assert!(e.contains("KL"), "{e}");
    let e = faithfulness(&o, &s, &[0], Some(0)).unwrap_err().to_string();
    assert!(e.contains("rows per call"), "{e}");
}

fn attrpatch(args: &[&str]) -> (bool, String) {
    let o =
        std::process::Command::new(env!("CARGO_BIN_EXE_attrpatch")).args(args).current_dir(root()).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

const TINY: &str = "models/gpt2-tiny-random.onnx";

/// `attrpatch edges --faithfulness`: the curve's files and figure, its ends 0 and 1, the circuit's K marked.
#[test]
fn cli_edges_faithfulness_writes_the_curve() {
    let out = fresh_dir("faithfulness-cli");
    let o = out.to_str().unwrap();
    let (ok, t) = attrpatch(&["edges", "--model", TINY, "--device", "cpu", "--faithfulness", "--top-k", "6", "-o", o]);
    assert!(ok, "{t}");
    assert!(t.contains("<- the circuit") && t.contains("K =      6:"), "{t}");
    for f in ["faithfulness.json", "faithfulness.csv", "faithfulness.png", "faithfulness.svg", "circuit.png"] {
        assert!(out.join(f).is_file(), "{f} missing:\n{t}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("faithfulness.json")).unwrap()).unwrap();
    let points = v["points"].as_array().unwrap();
    let (first, last) = (&points[0], &points[points.len() - 1]);
    assert_eq!((first["k"].as_u64(), last["k"].as_u64()), (Some(0), v["edges"].as_u64()));
    close("K = 0", first["faithfulness"].as_f64().unwrap(), 0.0, 1e-4);
    close("K = all", last["faithfulness"].as_f64().unwrap(), 1.0, 1e-4);
    let csv = std::fs::read_to_string(out.join("faithfulness.csv")).unwrap();
    assert_eq!(csv.lines().count(), points.len() + 1);
    // MIB's block: 10 sizes, f = 1 at 100%, CPR and CMD printed and in the legend.
    let mib = &v["mib"];
    assert_eq!(mib["f"].as_array().map(Vec::len), Some(10), "{v}");
    close("MIB f at 100%", mib["f"][9].as_f64().unwrap(), 1.0, 1e-4);
    let cpr = mib["cpr"].as_f64().unwrap();
    assert!(t.contains(&format!("CPR (area under f, higher is better) = {cpr:.4}")), "{t}");
    let svg = std::fs::read_to_string(out.join("faithfulness.svg")).unwrap();
    assert!(svg.contains(&format!("CPR {cpr:.3}")), "the legend lacks CPR");
}

#[test]
fn cli_edge_options_are_checked() {
    let (ok, t) = attrpatch(&["edges", "--model", TINY, "--device", "cpu", "--rows-per-call", "4"]);
    assert!(!ok && t.contains("--rows-per-call") && t.contains("--faithfulness"), "{t}");
    let (ok, t) = attrpatch(&["edges", "--model", TINY, "--device", "cpu", "--threshold=-1"]);
    assert!(!ok && t.contains("--threshold -1"), "{t}");
    let (ok, t) = attrpatch(&["compare", "--edges", "--positions", "--model", TINY, "--device", "cpu"]);
    assert!(!ok && t.contains("--positions") && t.contains("--edges"), "{t}");
}

/// `attrpatch compare --edges`: the table, the files, the scatter plot.
#[test]
fn cli_compare_edges_writes_the_agreement() {
    let out = fresh_dir("compare-edges-cli");
    let o = out.to_str().unwrap();
    let (ok, t) = attrpatch(&["compare", "--edges", "--ig-steps", "3", "--model", TINY, "--device", "cpu", "-o", o]);
    assert!(ok, "{t}");
    assert!(t.contains("exact edge patching: 110 edges") && t.contains("EAP-IG-inputs (3)"), "{t}");
    for f in ["edge-compare.json", "exact/edges.csv", "eap/edges.json", "eap-ig/edges.csv", "scatter-edges.png"] {
        assert!(out.join(f).is_file(), "{f} missing:\n{t}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("edge-compare.json")).unwrap()).unwrap();
    assert!(v["estimates"][0]["pearson"].as_f64().unwrap() > 0.9, "{v}");
}

/// `edges --mib OUT` writes EAP-IG's Graph.to_json layout; `--circuit-from` reads
/// it back as the ranking, so the same scores give the same circuits and curve.
#[test]
fn cli_mib_importance_files_round_trip_into_the_faithfulness_sweep() {
    let out = fresh_dir("faithfulness-mib-cli");
    let (a, b, file) = (out.join("eap"), out.join("from-file"), out.join("importances.json"));
    let (a, b, file) = (a.to_str().unwrap(), b.to_str().unwrap(), file.to_str().unwrap());
    let base = ["edges", "--model", TINY, "--device", "cpu", "--faithfulness", "--top-k", "6"];
    let (ok, t) = attrpatch(&[&base[..], &["--mib", file, "-o", a]].concat());
    assert!(ok && t.contains("MIB importance file"), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    assert_eq!(v["cfg"]["n_layers"].as_u64(), Some(2), "{}", v["cfg"]);
    assert!(v["cfg"]["d_model"].as_u64().is_some_and(|d| d > 0), "{}", v["cfg"]);
    assert!(v["edges"]["input->a0.h2<v>"]["score"].is_f64());
    let (ok, t) = attrpatch(&[&base[..], &["--circuit-from", file, "-o", b]].concat());
    assert!(ok && t.contains("110 of the model's 110 edges listed"), "{t}");
    let read = |dir: &str, f: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(std::path::Path::new(dir).join(f)).unwrap()).unwrap()
    };
    let (ea, eb) = (read(a, "edges.json"), read(b, "edges.json"));
    assert_eq!(ea["edges"], eb["edges"], "the file's scores are the run's");
    assert_eq!(eb["method"], "MIB file");
    assert_eq!(read(a, "faithfulness.json")["mib"], read(b, "faithfulness.json")["mib"]);
    // A file naming a node the model lacks is refused, naming file, node and what is expected.
    let bad = out.join("bad.json");
    let mut w = v.clone();
    w["edges"].as_object_mut().unwrap().insert("a0.h9->logits".into(), serde_json::json!({"score": 1.0}));
    std::fs::write(&bad, w.to_string()).unwrap();
    let (ok, t) = attrpatch(&[&base[..5], &["--circuit-from", bad.to_str().unwrap(), "-o", b]].concat());
    assert!(!ok && t.contains("bad.json") && t.contains("'a0.h9'") && t.contains("h < 4 heads"), "{t}");
    // The file's scores are the ranking: a convention or integration steps of attrpatch's own are refused.
    for extra in [&["--ig-steps", "2"][..], &["--convention", "noising"][..]] {
        let (ok, t) = attrpatch(&[&base[..5], &["--circuit-from", file, "-o", b], extra].concat());
        assert!(!ok && t.contains("--circuit-from takes the scores from its file"), "{extra:?}: {t}");
    }
}

//! Benchmark: attrpatch's attribution job against ONNX Runtime's plain
//! forward of the same model on the same sequences, same threads, one process.
//!
//!   cargo run --example bench -- --model M.onnx [--threads 2] [--repeats 5]
//!       [--pytorch pytorch.json]... [--scaling] [--json out.json]
//!
//! tools/bench/run.sh builds the GPT-2-small-sized model and the PyTorch figures first.

use attrpatch::augment::{augment_shared, augment_with, AugmentOptions, Augmented};
use attrpatch::job::{pair_inputs, shared_inputs, JobGraph, RowPlan};
use attrpatch::onnx::OnnxModel;
use attrpatch::prompts::TokenizedPrompts;
use attrpatch::runtime::{create, Device, RuntimeKind, RuntimeOptions, Value};
use ndarray::Array2;
use prost::Message;
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    model: PathBuf,
    threads: usize,
    repeats: usize,
    /// tools/bench/pytorch_bench.py results: plain PyTorch hooks, nnsight, ...
    pytorch: Vec<PathBuf>,
    scaling: bool,
    json: Option<PathBuf>,
    rewrite_only: bool,
    device: Device,
}

fn args() -> Args {
    let mut a = Args {
        model: PathBuf::new(),
        threads: 2,
        repeats: 5,
        pytorch: vec![],
        scaling: false,
        json: None,
        rewrite_only: false,
        device: Device::Cpu,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--model" => a.model = it.next().expect("--model PATH").into(),
            "--threads" => a.threads = it.next().and_then(|v| v.parse().ok()).expect("--threads N"),
            "--repeats" => a.repeats = it.next().and_then(|v| v.parse().ok()).expect("--repeats N"),
            "--pytorch" => a.pytorch.push(it.next().expect("--pytorch PATH").into()),
            "--json" => a.json = it.next().map(PathBuf::from),
            "--scaling" => a.scaling = true,
            "--rewrite-only" => a.rewrite_only = true,
            "--device" => a.device = it.next().expect("--device cpu|cuda").parse().expect("--device cpu|cuda|cuda:N"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.model.is_file(), "--model: {} is not a file", a.model.display());
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Random prompts: corrupted = clean with one token changed; random answers.
fn prompts(pairs: usize, seq: usize, vocab: usize, seed: u64) -> TokenizedPrompts {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (vocab as u64 - 1)) as i64
    };
    let clean: Vec<Vec<i64>> = (0..pairs).map(|_| (0..seq).map(|_| next()).collect()).collect();
    let corrupted = clean
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r[seq / 3] = (r[seq / 3] + 1) % vocab as i64;
            r
        })
        .collect();
    let correct: Vec<i64> = (0..pairs).map(|_| next()).collect();
    let incorrect = correct.iter().map(|c| (c + 7) % vocab as i64).collect();
    TokenizedPrompts {
        clean_ids: clean,
        corrupted_ids: corrupted,
        correct_ids: correct,
        incorrect_ids: incorrect,
        seq_len: seq,
        lengths: vec![seq; pairs],
        clean_tokens: vec![vec![]; pairs],
    }
}

/// Neighbour-swapped pairs, as in the tutorial: pair i's clean prompt is
/// sequence i, its corrupted prompt sequence i ^ 1 (another pair's clean prompt).
fn swapped(pairs: usize, seq: usize, vocab: usize, seed: u64) -> TokenizedPrompts {
    let mut t = prompts(pairs, seq, vocab, seed);
    t.corrupted_ids = (0..pairs).map(|i| t.clean_ids[i ^ 1].clone()).collect();
    t
}

/// The plain model's feeds: the clean prompts, then the corrupted ones (2B rows).
fn plain_feeds(t: &TokenizedPrompts, mask: bool) -> Vec<(String, Value)> {
    let (pairs, seq) = (t.clean_ids.len(), t.seq_len);
    let ids = Array2::from_shape_fn((2 * pairs, seq), |(r, c)| {
        if r < pairs {
            t.clean_ids[r][c]
        } else {
            t.corrupted_ids[r - pairs][c]
        }
    });
    let mut v = vec![("input_ids".to_string(), Value::I64(ids.into_dyn()))];
    if mask {
        v.push(("attention_mask".to_string(), Value::I64(ndarray::ArrayD::from_elem(vec![2 * pairs, seq], 1i64))));
    }
    v
}

/// Median seconds of (two-copy graph, shared-rows graph, plain forward of the
/// 2B sequences) on neighbour-swapped pairs, the three alternated.
#[allow(clippy::too_many_arguments)]
fn measure_swapped(
    two_copy_bytes: &[u8],
    shared_bytes: &[u8],
    plain_bytes: &[u8],
    two_copy: &Augmented,
    shared: &Augmented,
    (pairs, seq): (usize, usize),
    a: &Args,
    repeats: usize,
) -> (f64, f64, f64) {
    let t = swapped(pairs, seq, two_copy.vocab, 11);
    let plan = RowPlan::of(&t);
    assert_eq!(plan.len(), pairs, "neighbour swaps run one row a pair");
    let mut sessions = [two_copy_bytes, shared_bytes, plain_bytes].map(|bytes| create(bytes, &opts(a)).unwrap());
    let feeds = |k: usize| match k {
        0 => pair_inputs(&two_copy.token_inputs(), &t),
        1 => shared_inputs(&shared.token_inputs(), &t, &plan),
        _ => plain_feeds(&t, two_copy.attention_mask.is_some()),
    };
    let mut times = [vec![], vec![], vec![]];
    for round in 0..=repeats {
        for (k, s) in sessions.iter_mut().enumerate() {
            let c = Instant::now();
            s.run(feeds(k)).unwrap();
            if round > 0 {
                times[k].push(c.elapsed().as_secs_f64());
            }
        }
    }
    let [t2, ts, tp] = times.map(median);
    (t2, ts, tp)
}

fn opts(a: &Args) -> RuntimeOptions {
    RuntimeOptions { kind: RuntimeKind::Ort, device: a.device, ort_lib: None, threads: a.threads }
}

/// Median seconds of (attribution run, plain forward run) for one size.
fn measure(
    aug_bytes: &[u8],
    plain_bytes: &[u8],
    aug: &attrpatch::augment::Augmented,
    pairs: usize,
    seq: usize,
    a: &Args,
    repeats: usize,
) -> (f64, f64) {
    let t = prompts(pairs, seq, aug.vocab, 7);
    let mut attr = create(aug_bytes, &opts(a)).unwrap();
    let mut plain = create(plain_bytes, &opts(a)).unwrap();
    let plain_inputs = || plain_feeds(&t, aug.attention_mask.is_some());
    // Warm-up, then alternate the two so drift on a noisy machine hits both.
    attr.run(pair_inputs(&aug.token_inputs(), &t)).unwrap();
    plain.run(plain_inputs()).unwrap();
    let (mut ta, mut tb) = (vec![], vec![]);
    for _ in 0..repeats {
        let c = Instant::now();
        attr.run(pair_inputs(&aug.token_inputs(), &t)).unwrap();
        ta.push(c.elapsed().as_secs_f64());
        let c = Instant::now();
        plain.run(plain_inputs()).unwrap();
        tb.push(c.elapsed().as_secs_f64());
    }
    (median(ta), median(tb))
}

/// Runs the whole job on the PyTorch benchmark's own prompts and compares
/// the grids with the ones PyTorch autograd computed there.
fn compare_with_pytorch(a: &Args, v: &serde_json::Value) -> Option<f64> {
    let ids = |k: &str| -> Option<Vec<Vec<i64>>> { serde_json::from_value(v["inputs"][k].clone()).ok() };
    let (clean, corrupted) = (ids("clean")?, ids("corrupted")?);
    let answers: Vec<Vec<i64>> = serde_json::from_value(v["inputs"]["answers"].clone()).ok()?;
    let want_heads: Vec<Vec<f64>> = serde_json::from_value(v["grids"]["heads"].clone()).ok()?;
    let want_pos: Vec<Vec<f64>> = serde_json::from_value(v["grids"]["positions"].clone()).ok()?;
    let mut o = attrpatch::job::JobOptions::new(a.model.clone());
    o.with_token_ids(clean, corrupted, &answers);
    o.runtime = opts(a);
    let r = attrpatch::job::run_job(&o).ok()??;
    let mut worst = 0f64;
    // Relative to each grid's largest entry: PyTorch's reference here is float32.
    for (got, want) in [(&r.grids.heads, &want_heads), (&r.grids.positions, &want_pos)] {
        let scale = want.iter().flatten().fold(0f64, |m, x| m.max(x.abs()));
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            worst = worst.max((g - w).abs() / scale);
        }
    }
    Some(worst)
}

fn main() {
    let a = args();
    let file_mb = std::fs::metadata(&a.model).unwrap().len() as f64 / 1e6;
    // (d) rewrite: load + augment + encode, in this process before anything else.
    let c = Instant::now();
    let m = OnnxModel::load(&a.model).unwrap();
    let load_s = c.elapsed().as_secs_f64();
    let c = Instant::now();
    let raw = std::env::var_os("BENCH_RAW").is_some();
    let aug_opts = AugmentOptions { raw_outputs: raw, grid_outputs: !raw, ..Default::default() };
    let aug = augment_with(m, aug_opts.clone()).unwrap();
    let augment_s = c.elapsed().as_secs_f64();
    let rewrite_peak = peak_rss_mb();
    if a.rewrite_only {
        println!("rewrite: load {load_s:.2}s + augment {augment_s:.2}s; peak RSS {rewrite_peak:.0} MB = {:.2}x the {file_mb:.0} MB model file", rewrite_peak / file_mb);
        return;
    }
    let aug_bytes = aug.proto.encode_to_vec();
    let plain_bytes = std::fs::read(&a.model).unwrap();

    let (pairs, seq) = (8, 14);
    let (ta, tb) = measure(&aug_bytes, &plain_bytes, &aug, pairs, seq, &a, a.repeats);
    println!(
        "model {} ({file_mb:.0} MB), {:?}, {} threads, median of {}",
        a.model.display(),
        a.device,
        a.threads,
        a.repeats
    );
    println!("(a) attrpatch attribution run, {pairs} clean + {pairs} corrupted x {seq} tokens: {ta:.3} s");
    println!("(b) onnxruntime plain forward of the original model, same 16 sequences:     {tb:.3} s");
    println!("    a/b = {:.2}  (target <= 1.3)", ta / tb);
    let mut report = serde_json::json!({
        "model": a.model.display().to_string(), "model_mb": file_mb, "threads": a.threads, "repeats": a.repeats,
        "attribution_run_s": ta, "plain_forward_s": tb, "a_over_b": ta / tb,
        "rewrite_load_s": load_s, "rewrite_augment_s": augment_s, "rewrite_peak_rss_mb": rewrite_peak,
    });
    let mut peers = vec![];
    for p in &a.pytorch {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        let tc = v["attribution_s"]["median"].as_f64().expect("attribution_s.median in the PyTorch JSON");
        let (tool, mode) = (v["tool"].as_str().unwrap_or("?"), v["mode"].as_str().unwrap_or("?"));
        println!("(c) PyTorch eager forward+backward ({tool}, {mode}), from {}: {tc:.3} s", p.display());
        println!("    c/a = {:.1}  (target >= 5)", tc / ta);
        let mut peer = serde_json::json!({"file": p.display().to_string(), "tool": tool, "mode": mode, "attribution_s": tc, "c_over_a": tc / ta});
        if let Some(err) = compare_with_pytorch(&a, &v) {
            println!("    grids vs PyTorch's on the same prompts: max relative error {err:.2e} (PyTorch float32)");
            peer["max_rel_error_vs_pytorch"] = err.into();
        }
        peers.push(peer);
    }
    report["pytorch"] = peers.into();
    // (e) Distinct sequences run once: the tutorial's neighbour swaps, both graphs.
    let shared = augment_shared(OnnxModel::load(&a.model).unwrap(), aug_opts).unwrap();
    let shared_bytes = shared.proto.encode_to_vec();
    let (t2, ts, tp) =
        measure_swapped(&aug_bytes, &shared_bytes, &plain_bytes, &aug, &shared, (pairs, seq), &a, a.repeats);
    // Two-copy: 2B forwards + B backwards; shared: B forwards + B backwards (R = B here).
    let (fwd, bwd) = ((t2 - ts) / pairs as f64, (2.0 * ts - t2) / pairs as f64);
    println!("(e) neighbour-swapped pairs ({pairs} pairs, {pairs} distinct sequences of {seq} tokens):");
    println!("    two-copy graph (16 rows): {t2:.3} s; shared-rows graph (8 rows): {ts:.3} s; plain forward of the 16 sequences: {tp:.3} s");
    println!("    shared / plain = {:.2} (goal <= 0.75); shared / two-copy = {:.2}", ts / tp, ts / t2);
    println!("    backward / forward per row (the --dedup cost model's k) = {:.2}", bwd / fwd);
    report["dedup"] = serde_json::json!({
        "two_copy_s": t2, "shared_rows_s": ts, "plain_forward_2b_s": tp,
        "shared_over_plain": ts / tp, "shared_over_two_copy": ts / t2, "backward_per_forward": bwd / fwd,
    });
    println!(
        "(d) rewrite of the model: load {load_s:.2} s + augment {augment_s:.2} s = {:.2} s (target < 3 s)",
        load_s + augment_s
    );
    println!(
        "    peak RSS after rewrite {rewrite_peak:.0} MB = {:.2}x the model file (target < 2x)",
        rewrite_peak / file_mb
    );
    if a.scaling {
        let mut rows = vec![];
        println!("scaling (median of 3):   pairs  tokens   attrpatch s   plain fwd s   ratio");
        for (p, s) in [(8, 16), (8, 64), (8, 256), (64, 16)] {
            let (ta, tb) = measure(&aug_bytes, &plain_bytes, &aug, p, s, &a, 3);
            println!("                         {p:>5}  {s:>6}   {ta:>11.3}   {tb:>11.3}   {:>5.2}", ta / tb);
            rows.push(serde_json::json!({"pairs": p, "tokens": s, "attribution_s": ta, "plain_forward_s": tb, "ratio": ta / tb}));
        }
        report["scaling"] = rows.into();
    }
    if let Some(j) = &a.json {
        std::fs::write(j, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    }
}

//! `attrpatch edges`: edge scores, circuits and their faithfulness.

use super::common::*;
use attrpatch::jobs::{self as job, JobOptions};
use attrpatch::Error;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub(crate) struct EdgesArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Prompt pairs per runtime call [default: as run chooses].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// eap (the gradient at the base run), eap-ig-inputs (averaged over N runs with the input
    /// interpolated), eap-ig-activations (averaged over N runs per component, that component's
    /// output alone interpolated), clean-corrupted (averaged over the clean and the corrupted run)
    /// [default: eap, or eap-ig-inputs with --ig-steps N > 1].
    #[arg(long, value_enum)]
    pub(crate) method: Option<attrpatch::eap::Method>,
    /// The steps N of eap-ig-inputs and eap-ig-activations [default: 5 with such a --method];
    /// alone, N > 1 means --method eap-ig-inputs.
    #[arg(long, value_name = "N")]
    pub(crate) ig_steps: Option<usize>,
    /// denoising: gradient at the corrupted run, Δ = clean - corrupted, the normalised metric;
    /// noising (the EAP-IG codebase's): gradient at the clean run, Δ = ablated - clean, the raw metric.
    #[arg(long, value_enum, default_value_t = attrpatch::eap::Convention::Denoising)]
    pub(crate) convention: attrpatch::eap::Convention,
    /// Each writer's counterfactual with --convention noising: patching (its corrupted activation),
    /// zero, mean (over every pair and position of the corrupted prompts), mean-positional (per position).
    #[arg(long, value_enum, default_value_t = attrpatch::eap::Ablation::Patching)]
    pub(crate) ablation: attrpatch::eap::Ablation,
    /// The K edges of largest |score| printed (and drawn, with the circuit figure): the circuit.
    #[arg(long, value_name = "K", default_value_t = 20)]
    pub(crate) top_k: usize,
    /// The circuit is the edges with |score| >= T instead of the top K.
    #[arg(long, value_name = "T")]
    pub(crate) threshold: Option<f64>,
    /// Measure circuit faithfulness by exact edge patching for K = 0, 1, 2, 4, ..., all
    /// edges, MIB's sizes (0.1% .. 100% of the edges, with CPR and CMD) and the circuit's K
    /// (faithfulness.json, .csv, .png).
    #[arg(long)]
    pub(crate) faithfulness: bool,
    /// Patched rows per runtime call for --faithfulness [default: as many as --max-memory holds, at most 256].
    #[arg(long)]
    pub(crate) rows_per_call: Option<usize>,
    /// Also write the edge scores as a MIB / EAP-IG importance file (Graph.to_json's layout),
    /// the circuit's edges marked in_graph. Not for grouped-query attention.
    #[arg(long, value_name = "OUT")]
    pub(crate) mib: Option<PathBuf>,
    /// Rank edges by the scores of a MIB / EAP-IG importance file (e.g. another tool's circuit)
    /// instead of attrpatch's EAP scores; with --faithfulness they are scored by exact edge patching.
    #[arg(long, value_name = "FILE")]
    pub(crate) circuit_from: Option<PathBuf>,
    /// Also run `run`'s node job into the same folder and write report.html with the edge table
    /// and the circuit slider beside the grids (one more graph and session).
    #[arg(long)]
    pub(crate) report: bool,
}

pub(crate) fn edges_cmd(args: EdgesArgs) -> Result<(), Error> {
    at_least_one(&[
        ("--ig-steps", args.ig_steps),
        ("--top-k", Some(args.top_k)),
        ("--batch-size", args.batch_size),
        ("--rows-per-call", args.rows_per_call),
    ])?;
    if let Some(t) = args.threshold {
        attrpatch::eap::check_threshold(t)?;
    }
    if args.rows_per_call.is_some() && !args.faithfulness {
        return Err(Error::Input(
            "--rows-per-call sizes the --faithfulness sweep; add --faithfulness or drop it".into(),
        ));
    }
    if args.common.hook != attrpatch::HookKind::AttnOut {
        return Err(Error::Input(
            "--hook: edge scores are defined by the attention heads, MLPs and residual stream; drop --hook".into(),
        ));
    }
    if args.common.per_prompt {
        return Err(Error::Input("--per-prompt: edge scores are summed over the pairs; drop --per-prompt".into()));
    }
    let (kind, ig_steps) = attrpatch::eap::resolve_method(args.method, args.ig_steps)?;
    let method =
        attrpatch::eap::EdgeMethod { method: kind, ig_steps, convention: args.convention, ablation: args.ablation };
    attrpatch::eap::check_method(&method, args.common.metric)?;
    let mut opts = args.common.job_options()?;
    opts.batch_size = args.batch_size;
    let out = args.common.out_dir();
    if args.circuit_from.is_some()
        && (args.ig_steps.is_some()
            || args.method.is_some()
            || method.convention != attrpatch::eap::Convention::Denoising)
    {
        return Err(Error::Input(
            "--circuit-from takes the scores from its file; drop --method, --ig-steps and --convention".into(),
        ));
    }
    let mut r = attrpatch::eap::run_edges_method(&opts, &method)?;
    if let Some(file) = &args.circuit_from {
        // The run gave the model's edges; the file gives their scores.
        let imported = attrpatch::eap::read_importances(file, &r.scores)?;
        println!(
            "scores: {} ({} of the model's {} edges listed{})",
            file.display(),
            r.scores.edges.len() - imported.missing,
            r.scores.edges.len(),
            if imported.missing > 0 { "; the others score 0, as EAP-IG's Graph.from_json leaves them" } else { "" }
        );
        r.scores = imported.scores;
    }
    let s = &r.scores;
    let steps = if s.ig_steps > 1 { format!("{} steps, ", s.ig_steps) } else { String::new() };
    println!(
        "method: {} ({steps}{}, {} ablation; {} layers x {} heads, {} key/value heads{}), {} edges, {} runtime call{} ({:.3}s)",
        s.method,
        s.convention,
        s.ablation,
        s.layers,
        s.heads,
        s.kv_heads,
        if s.parallel { ", parallel blocks" } else { "" },
        s.edges.len(),
        r.runtime_calls,
        plural(r.runtime_calls),
        r.run_seconds
    );
    let k = match args.threshold {
        Some(t) => attrpatch::eap::k_for_threshold(s, t)?,
        None => args.top_k.min(s.edges.len()),
    };
    let mut top: Vec<&attrpatch::eap::EdgeScore> = s.edges.iter().collect();
    top.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
    println!("top {k} edges by |score|:");
    for e in top.iter().take(k) {
        println!("  {:>10} -> {:<10} {:+.4}", e.from, e.to, e.score);
    }
    let clock = std::time::Instant::now();
    attrpatch::eap::write_edges(&out, s)?;
    let secs = clock.elapsed().as_secs_f64();
    println!("wrote {} ({} edges, with edges.csv, in {secs:.3}s)", out.join("edges.json").display(), s.edges.len());
    println!("wrote {}", out.join("edges.csv").display());
    if let Some(path) = &args.mib {
        attrpatch::eap::write_importances(path, s, &attrpatch::eap::circuit(s, k), r.d_model)?;
        println!("wrote {} (MIB importance file, the top {k} edges in_graph)", path.display());
    }
    let curve = match args.faithfulness {
        true => {
            let carried = attrpatch::eap::Intervention { ablation: method.ablation, means: r.means.as_ref() };
            faithfulness_sweep(&opts, s, k, args.rows_per_call, carried, &out)?
        }
        false => vec![],
    };
    if args.report {
        edges_report(&opts, s, k, &curve, &out)?;
    }
    if k == 0 {
        println!("no edge has |score| >= the threshold: no circuit figure");
    } else {
        for w in attrpatch::eap::write_circuit(&out, s, k)? {
            println!("wrote {}", w.display());
        }
    }
    Ok(())
}

/// `edges --report`: the node job's files, then report.html with the Edges section.
pub(crate) fn edges_report(
    opts: &JobOptions,
    s: &attrpatch::eap::EdgeScores,
    k: usize,
    curve: &[(usize, f64)],
    out: &Path,
) -> Result<(), Error> {
    let Some(r) = job::run_job(opts)? else {
        return Err(Error::Input("--report: the node job ran a shard only; drop --shard".into()));
    };
    report_job(&r, out)?;
    let edges = attrpatch::eap::EdgeReport { scores: s, top_k: k.max(1), faithfulness: curve };
    let page = attrpatch::eap::write_report_html_with_edges(&r, out, Some(&edges))?;
    println!("wrote {} (with the edge table and the circuit slider)", page.display());
    Ok(())
}

/// The faithfulness curve of the top-K circuits, the circuit's own K included;
/// returns the points drawn (K > 0).
pub(crate) fn faithfulness_sweep(
    opts: &job::JobOptions,
    s: &attrpatch::eap::EdgeScores,
    k: usize,
    rows_per_call: Option<usize>,
    carried: attrpatch::eap::Intervention,
    out: &Path,
) -> Result<Vec<(usize, f64)>, Error> {
    use attrpatch::eap as faith;
    let ks = faith::sweep(s.edges.len(), &[k]);
    let f = faith::faithfulness_with(opts, s, &ks, rows_per_call, carried)?;
    println!(
        "faithfulness: {} circuits, edges outside carrying the {} value ({} rows, {} per call, {} runtime call{}, {:.3}s)",
        ks.len(),
        if f.ablation == "patching" { "corrupted" } else { &f.ablation },
        f.rows,
        f.rows_per_call,
        f.runtime_calls,
        plural(f.runtime_calls),
        f.run_seconds
    );
    for p in &f.points {
        let mark = if p.k == k { "  <- the circuit" } else { "" };
        println!("  K = {:>6}: {:+.4}{mark}", p.k, p.faithfulness);
    }
    if let Some(m) = &f.mib {
        let grid: Vec<String> = m.k_percent.iter().zip(&m.f).map(|(p, f)| format!("{p}%: {f:+.3}")).collect();
        println!("MIB (top K by |score|, K = int(fraction x edges)): {}", grid.join(", "));
        println!(
            "MIB CPR (area under f, higher is better) = {:.4}, CMD (area under |1 - f|, lower is better) = {:.4}",
            m.cpr, m.cmd
        );
    }
    faith::write_faithfulness(out, &f)?;
    println!("wrote {}", out.join("faithfulness.json").display());
    println!("wrote {}", out.join("faithfulness.csv").display());
    // The figure's K axis is logarithmic: K = 0 (the corrupted run, 0 by definition) is in the files only.
    let drawn: Vec<(usize, f64)> = f.curve().into_iter().filter(|&(k, _)| k > 0).collect();
    for w in attrpatch::eap::draw_faithfulness_mib(out, &drawn, f.mib.as_ref(), s)? {
        println!("wrote {}", w.display());
    }
    Ok(drawn)
}

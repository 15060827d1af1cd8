//! `attrpatch run`: attribution patching, integrated gradients or AtP*, and the diagnostic.

use super::common::*;
use attrpatch::jobs::{self as job, JobOptions};
use attrpatch::{Error, Estimator, JobResult};
use clap::Args;
use std::path::Path;

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Prompt pairs per runtime call; memory grows with it, not with the prompt set
    /// [default: as many as --max-memory holds, at most 64; 64 with --shard].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Run part K of N (0-based) of the batches; combine the parts with `attrpatch merge`.
    #[arg(long)]
    pub(crate) shard: Option<attrpatch::Shard>,
    /// Reuse the batch files an interrupted run left in --out instead of recomputing them.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Plain attribution: run each distinct token sequence once (one forward copy over the distinct
    /// sequences, gathered per pair): on, off (a clean and a corrupted copy), or auto
    /// (on when the cost model says it is cheaper, e.g. neighbour-swapped prompts).
    #[arg(long, value_enum, default_value_t = job::Dedup::Auto)]
    pub(crate) dedup: job::Dedup,
    /// Integrated gradients with N steps instead of plain attribution (N forward+backward
    /// passes of each layer's path from the corrupted to the clean activation).
    #[arg(long, value_name = "N")]
    pub(crate) ig_steps: Option<usize>,
    /// Patching rows per runtime call, with --ig-steps and --diagnostic; memory grows with it
    /// [default: as many as --max-memory holds, at most 64].
    #[arg(long)]
    pub(crate) rows_per_call: Option<usize>,
    /// atp: attribution patching; atp-star: AtP* (each head's query and key scored with the exact
    /// attention pattern they give, the QK-fix, and GradDrop's layers - 1 backward sweeps), in
    /// atp_star.json and query_*/key_* grids beside the head grids.
    #[arg(long, value_enum, default_value_t = RunMethod::Atp)]
    pub(crate) method: RunMethod,
    /// With --method atp-star: the QK-fix alone, without GradDrop's backward sweeps.
    #[arg(long)]
    pub(crate) no_grad_drop: bool,
    /// After the run, bound what its top heads missed (the AtP* paper's diagnostic): exact-patch
    /// N random subsets of the heads outside the top --diagnostic-top K by |estimate|, each subset
    /// jointly, and write diagnostic.json (and its section of report.html).
    #[arg(long, value_name = "N")]
    pub(crate) diagnostic: Option<usize>,
    /// With --diagnostic: the heads of largest |estimate| left out of the subsets (the ones you
    /// would verify by exact patching) [default: 10].
    #[arg(long, value_name = "K")]
    pub(crate) diagnostic_top: Option<usize>,
    /// With --diagnostic: heads per subset [default: half of those outside the top K, rounded up].
    #[arg(long, value_name = "M")]
    pub(crate) diagnostic_size: Option<usize>,
    /// With --diagnostic: the seed of the subsets' sampling, for reproducible subsets [default: 0].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

/// `run --method`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RunMethod {
    /// Attribution patching (the tutorial's).
    Atp,
    /// AtP* (Kramár et al. 2024): QK-fix and GradDrop.
    AtpStar,
}

pub(crate) fn run(args: RunArgs) -> Result<(), Error> {
    at_least_one(&[
        ("--batch-size", args.batch_size),
        ("--ig-steps", args.ig_steps),
        ("--rows-per-call", args.rows_per_call),
    ])?;
    if args.rows_per_call.is_some() && args.ig_steps.is_none() && args.diagnostic.is_none() {
        return Err(Error::Input(
            "--rows-per-call sets the patching rows of --ig-steps and --diagnostic; plain attribution runs \
             --batch-size pairs per call"
                .into(),
        ));
    }
    let diagnostic = diagnostic_options(&args)?;
    if diagnostic.is_some() && args.shard.is_some() {
        return Err(Error::Input(
            "--diagnostic ranks the heads of the whole run; a --shard has part of it: run the diagnostic without \
             --shard (or after `attrpatch merge`, on an unsharded run)"
                .into(),
        ));
    }
    let mut opts = args.common.job_options()?;
    let out = &args.common.out_dir();
    if args.no_grad_drop && args.method != RunMethod::AtpStar {
        return Err(Error::Input("--no-grad-drop is an option of --method atp-star".into()));
    }
    if args.method == RunMethod::AtpStar {
        return atp_star(args, opts, out, diagnostic);
    }
    if let Some(steps) = args.ig_steps {
        if args.shard.is_some() || args.resume {
            return Err(Error::Input(
                "--ig-steps runs in one process: --shard and --resume are for plain attribution".into(),
            ));
        }
        let e = Estimator::IntegratedGradients { steps };
        let r = job::run_patching(&opts, e, args.rows_per_call)?;
        report_job(&r, out)?;
        return run_diagnostic(&opts, &r, diagnostic, out);
    }
    opts.batch_size = args.batch_size;
    opts.shard = args.shard;
    opts.dedup = args.dedup;
    let batches_dir = out.join("batches");
    if !args.resume && batches_dir.exists() {
        std::fs::remove_dir_all(&batches_dir).map_err(|e| Error::io(&batches_dir, e))?;
    }
    opts.work_dir = Some(out.clone());
    let Some(r) = job::run_job(&opts)? else {
        let s = opts.shard.unwrap();
        println!("shard {}/{} done: batch files in {}", s.index, s.count, batches_dir.display());
        println!("combine the shards with: attrpatch merge SHARD_DIRS... --out DIR");
        return Ok(());
    };
    if r.batches_resumed > 0 {
        println!("resumed {} finished batch(es) from {}", r.batches_resumed, batches_dir.display());
    }
    report_job(&r, out)?;
    // What --resume and merge read, written as the batches finished.
    println!("wrote {}", out.join("job.json").display());
    println!("wrote {}/ ({} batch file{})", batches_dir.display(), r.manifest.n_batches, plural(r.manifest.n_batches));
    run_diagnostic(&opts, &r, diagnostic, out)
}

/// `--diagnostic` and its options, checked before the run; None without it.
pub(crate) fn diagnostic_options(args: &RunArgs) -> Result<Option<job::DiagnosticOptions>, Error> {
    at_least_one(&[("--diagnostic", args.diagnostic), ("--diagnostic-size", args.diagnostic_size)])?;
    let Some(n) = args.diagnostic else {
        let given = [
            ("--diagnostic-top", args.diagnostic_top.is_some()),
            ("--diagnostic-size", args.diagnostic_size.is_some()),
            ("--seed", args.seed.is_some()),
        ];
        return match given.iter().find(|(_, on)| *on) {
            Some((flag, _)) => Err(Error::Input(format!("{flag} sets the diagnostic; add --diagnostic N or drop it"))),
            None => Ok(None),
        };
    };
    let mut o = job::DiagnosticOptions::new(n);
    o.top = args.diagnostic_top.unwrap_or(job::DIAGNOSTIC_TOP);
    o.size = args.diagnostic_size;
    o.seed = args.seed.unwrap_or(job::DIAGNOSTIC_SEED);
    // --rows-per-call sizes IG's rows when both run; the diagnostic then takes the memory budget's.
    o.rows_per_call = if args.ig_steps.is_none() { args.rows_per_call } else { None };
    Ok(Some(o))
}

/// The diagnostic on a finished run's heads grid: diagnostic.json, its
/// summary line, and report.html again with its section.
pub(crate) fn run_diagnostic(
    opts: &JobOptions,
    r: &JobResult,
    o: Option<job::DiagnosticOptions>,
    out: &Path,
) -> Result<(), Error> {
    let Some(o) = o else { return Ok(()) };
    let d = job::run_diagnostic(opts, r, &o)?;
    println!("{}", d.summary());
    println!("{}", d.bound);
    println!("wrote {}", job::write_diagnostic(&d, out)?.display());
    println!("wrote {} (with the diagnostic)", job::write_report_html_with_diagnostic(r, out, &d)?.display());
    Ok(())
}

/// `run --method atp-star`: AtP* in one process.
pub(crate) fn atp_star(
    args: RunArgs,
    mut opts: JobOptions,
    out: &Path,
    diagnostic: Option<job::DiagnosticOptions>,
) -> Result<(), Error> {
    let given = [
        ("--ig-steps", args.ig_steps.is_some()),
        ("--rows-per-call", args.rows_per_call.is_some() && diagnostic.is_none()),
        ("--shard", args.shard.is_some()),
        ("--resume", args.resume),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, on)| *on) {
        return Err(Error::Input(format!("{flag} is not an option of --method atp-star (it runs in one process)")));
    }
    if args.dedup == job::Dedup::On {
        return Err(Error::Input("--method atp-star runs a clean and a corrupted copy: drop --dedup on".into()));
    }
    opts.batch_size = args.batch_size;
    opts.dedup = job::Dedup::Off;
    let r = attrpatch::atp::run_atp_star(&opts, !args.no_grad_drop)?;
    report_job(&r.result, out)?;
    for f in attrpatch::atp::write(&r, out)? {
        println!("wrote {}", f.display());
    }
    let sweeps = match r.sweeps {
        0 => "GradDrop off".to_string(),
        n => format!("GradDrop: {n} backward sweep{} in the same call", plural(n)),
    };
    println!("AtP*: queries and keys with the QK-fix; {sweeps}");
    run_diagnostic(&opts, &r.result, diagnostic, out)
}

//! The `attrpatch` command line: a thin layer over the library.

use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};
use attrpatch::{augment, compare, inspect, job, merge, onnx::OnnxModel, patch, report, Error};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "attrpatch", version, about = "Attribution patching on transformer models exported to ONNX")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the attribution job and write the grids (defaults: the bundled model and the tutorial's IOI prompts).
    Run(RunArgs),
    /// Exact activation patching: one patched run per head (and per position with --positions), many per call.
    Patch(PatchArgs),
    /// Attribution (and integrated gradients with --ig-steps) beside exact patching: grids, scatter plots, correlations.
    Compare(CompareArgs),
    /// List the layers, hook tensors, inputs, outputs and the ops between hooks and logits.
    Inspect {
        /// ONNX model file.
        model: PathBuf,
        /// Also list what this hook choice (attn, resid, mlp or a tensor-name regex) matches.
        #[arg(long)]
        hook: Option<attrpatch::hooks::HookKind>,
    },
    /// Combine the output folders of `run --shard K/N` into the results of one run.
    Merge {
        /// The shard output folders.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        /// Output folder.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Write the augmented model (metric + backward graph + hook outputs) as a standard .onnx file.
    Rewrite {
        /// ONNX model file.
        model: PathBuf,
        /// Where to write the augmented model.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// What every job takes: the model, the prompts, the runtime, what to patch and measure.
#[derive(Args)]
struct CommonArgs {
    /// ONNX model file [default: models/ioi-gpt2/model.onnx, the bundled IOI model].
    #[arg(long)]
    model: Option<PathBuf>,
    /// tokenizer.json [default: the one beside the model].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// JSONL file of {"clean", "corrupted", "correct", "incorrect"} objects [default: the tutorial's 8 IOI pairs].
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Prepend the tokenizer's BOS token to every prompt.
    #[arg(long)]
    bos: bool,
    /// Output folder.
    #[arg(short, long, default_value = "attrpatch-out")]
    out: PathBuf,
    /// Which runtime executes the augmented graph.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Ort)]
    runtime: RuntimeKind,
    /// cpu, cuda, cuda:N or auto (CUDA when the ONNX Runtime library has it, else CPU).
    #[arg(long, default_value = "auto")]
    device: String,
    /// The ONNX Runtime shared library (or its folder) [default: ORT_DYLIB_PATH, .ort/, Python onnxruntime].
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Intra-op threads (0: the runtime's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Number of attention heads, when it cannot be read from the graph.
    #[arg(long)]
    heads: Option<usize>,
    /// Also write each pair's grids to per_prompt.jsonl.
    #[arg(long)]
    per_prompt: bool,
    /// What to attribute: attn (input of each attention out-projection, per head), resid (each
    /// block's output), mlp (each MLP's output), or a regex over tensor names.
    #[arg(long, default_value = "attn")]
    hook: attrpatch::hooks::HookKind,
    /// The quantity to attribute: logit-diff (the tutorial's), logprob-diff, prob (of the correct answer), kl.
    #[arg(long, value_enum, default_value_t = attrpatch::augment::Metric::LogitDiff)]
    metric: attrpatch::augment::Metric,
}

impl CommonArgs {
    /// The job options, and the output folder created (an unwritable one fails before the slow part).
    fn job_options(&self) -> Result<job::JobOptions, Error> {
        let device: Device = self.device.parse()?;
        let mut opts = job::JobOptions::new(self.model.clone().unwrap_or_else(default_model));
        opts.tokenizer = self.tokenizer.clone();
        opts.prompts = self.prompts.clone();
        opts.bos = self.bos;
        opts.heads = self.heads;
        opts.runtime =
            RuntimeOptions { kind: self.runtime, device, ort_lib: self.ort_lib.clone(), threads: self.threads };
        opts.per_prompt = self.per_prompt;
        opts.metric = self.metric;
        opts.hooks = self.hook.clone();
        opts.progress = true;
        std::fs::create_dir_all(&self.out).map_err(|e| Error::io(&self.out, e))?;
        Ok(opts)
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Prompt pairs per runtime call; memory grows with it, not with the prompt set.
    #[arg(long, default_value_t = job::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Run part K of N (0-based) of the batches; combine the parts with `attrpatch merge`.
    #[arg(long)]
    shard: Option<job::Shard>,
    /// Reuse the batch files an interrupted run left in --out instead of recomputing them.
    #[arg(long)]
    resume: bool,
    /// Integrated gradients with N steps instead of plain attribution (N forward+backward
    /// passes of each layer's path from the corrupted to the clean activation).
    #[arg(long, value_name = "N")]
    ig_steps: Option<usize>,
    /// Patching rows per runtime call, with --ig-steps; memory grows with it [default: 64].
    #[arg(long)]
    rows_per_call: Option<usize>,
}

#[derive(Args)]
struct PatchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Also patch every position of every layer (the layer x position grid).
    #[arg(long)]
    positions: bool,
    /// Patched prompt runs per runtime call; memory grows with it [default: 256].
    #[arg(long)]
    rows_per_call: Option<usize>,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Also compare the layer x position grid (patches every position of every layer).
    #[arg(long)]
    positions: bool,
    /// Also compare integrated gradients with N steps.
    #[arg(long, value_name = "N")]
    ig_steps: Option<usize>,
    /// Patched prompt runs per runtime call; memory grows with it [default: 256 for exact
    /// patching, 64 for integrated gradients, whose rows also hold the backward pass].
    #[arg(long)]
    rows_per_call: Option<usize>,
}

/// The bundled model trained on IOI (models/ioi-gpt2/MODEL_CARD.md).
fn default_model() -> PathBuf {
    let local = Path::new("models/ioi-gpt2/model.onnx");
    if local.is_file() {
        return local.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ioi-gpt2/model.onnx")
}

fn run(args: RunArgs) -> Result<(), Error> {
    if args.batch_size == 0 {
        return Err(Error::Input("--batch-size must be at least 1".into()));
    }
    let mut opts = args.common.job_options()?;
    let out = &args.common.out;
    if let Some(steps) = args.ig_steps {
        if args.shard.is_some() || args.resume {
            return Err(Error::Input(
                "--ig-steps runs in one process: --shard and --resume are for plain attribution".into(),
            ));
        }
        let e = patch::Estimator::IntegratedGradients { steps };
        let r = patch::run(&opts, e, args.rows_per_call.unwrap_or(patch::default_rows_per_call(e)))?;
        return report_job(&opts, &r, out);
    }
    opts.batch_size = args.batch_size;
    opts.shard = args.shard;
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
    report_job(&opts, &r, out)
}

/// Prints a finished job's summary and timings, and writes its files.
fn report_job(opts: &job::JobOptions, r: &job::JobResult, out: &Path) -> Result<(), Error> {
    println!("model: {}", opts.model.display());
    println!("method: {}", r.manifest.method.label());
    println!(
        "runtime: {} ({} call{})",
        r.manifest.runtime,
        r.runtime_calls,
        if r.runtime_calls == 1 { "" } else { "s" }
    );
    print_summary(r);
    println!(
        "time: load {:.2}s, rewrite {:.2}s, session {:.2}s, run {:.3}s",
        r.seconds.load, r.seconds.rewrite, r.seconds.session, r.seconds.run
    );
    for w in report::write_results(r, out)? {
        println!("wrote {}", w.display());
    }
    Ok(())
}

fn patch_cmd(args: PatchArgs) -> Result<(), Error> {
    let opts = args.common.job_options()?;
    let e = patch::Estimator::Exact { positions: args.positions };
    let r = patch::run(&opts, e, args.rows_per_call.unwrap_or(patch::default_rows_per_call(e)))?;
    report_job(&opts, &r, &args.common.out)
}

fn compare_cmd(args: CompareArgs) -> Result<(), Error> {
    let opts = args.common.job_options()?;
    let c = compare::compare(
        &opts,
        &compare::CompareOptions {
            positions: args.positions,
            ig_steps: args.ig_steps,
            rows_per_call: args.rows_per_call,
        },
    )?;
    println!("model: {}", opts.model.display());
    print_summary(&c.exact);
    let secs = |r: &job::JobResult| r.seconds.load + r.seconds.rewrite + r.seconds.session + r.seconds.run;
    println!("exact activation patching: {} runtime calls, {:.2}s", c.exact.runtime_calls, secs(&c.exact));
    println!(
        "{:<10} {:<31} {:>8} {:>9} {:>11} {:>10} {:>8}",
        "grid", "estimate", "Pearson", "Spearman", "mean |err|", "max |err|", "time"
    );
    for e in &c.estimates {
        for (grid, a) in [("heads", &e.heads), ("positions", &e.positions)] {
            let Some(a) = a else { continue };
            println!(
                "{:<10} {:<31} {:>8} {:>9} {:>11.3e} {:>10.3e} {:>7.2}s",
                grid,
                e.result.manifest.method.label(),
                compare::fmt_corr(a.pearson),
                compare::fmt_corr(a.spearman),
                a.mean_abs_error,
                a.max_abs_error,
                secs(&e.result)
            );
        }
    }
    for e in &c.estimates {
        for (grid, a) in [("heads", &e.heads), ("positions", &e.positions)] {
            let Some(a) = a else { continue };
            let misses: Vec<String> = a
                .largest_misses
                .iter()
                .map(|m| {
                    format!(
                        "L{} {}{}: {:.3} vs {:.3}",
                        m.layer,
                        if grid == "heads" { "H" } else { "P" },
                        m.index,
                        m.estimate,
                        m.exact
                    )
                })
                .collect();
            println!("largest misses, {grid}, {}: {}", e.result.manifest.method.label(), misses.join("; "));
        }
    }
    for (grid, ratio, before, after) in compare::ig_gain(&c) {
        println!(
            "integrated gradients vs attribution, {grid}: mean |err| {}, Pearson {} -> {}",
            if ratio >= 1.0 { format!("{ratio:.2}x smaller") } else { format!("{:.2}x larger", 1.0 / ratio) },
            compare::fmt_corr(before),
            compare::fmt_corr(after)
        );
    }
    for w in compare::write(&c, &args.common.out)? {
        println!("wrote {}", w.display());
    }
    Ok(())
}

// The baselines are printed as the tutorial computes them, x / x and (y - y) / (x - y).
#[allow(clippy::eq_op)]
fn print_summary(r: &job::JobResult) {
    let (clean, corr) = (r.clean_logit_diff, r.corrupted_logit_diff);
    let m = &r.manifest;
    println!(
        "{} prompt pairs of {} tokens, {} layers x {} heads",
        m.prompts.len(),
        m.seq_len,
        m.hooks.len(),
        m.n_heads
    );
    let label = m.metric.label();
    println!("Clean {label}: {}", num(clean));
    println!("Corrupted {label}: {}", num(corr));
    println!("Clean Baseline is 1: {:.4}", (clean - corr) / (clean - corr));
    // (corr - corr) / (clean - corr) is exactly zero; + 0.0 drops the sign of -0.
    println!("Corrupted Baseline is 0: {:.4}", (corr - corr) / (clean - corr) + 0.0);
}

fn merge_cmd(shards: &[PathBuf], out: &Path) -> Result<(), Error> {
    let r = merge::merge(shards)?;
    print_summary(&r);
    for w in report::write_results(&r, out)? {
        println!("wrote {}", w.display());
    }
    Ok(())
}

fn rewrite(model: &Path, output: &Path) -> Result<(), Error> {
    let t0 = std::time::Instant::now();
    let m = OnnxModel::load(model)?;
    let had_external_data = m.had_external_data;
    let t1 = std::time::Instant::now();
    let mut a = augment::augment(m)?;
    let t2 = std::time::Instant::now();
    use attrpatch::onnx::io::{needs_external_data, save_model, PROTOBUF_LIMIT};
    let external = needs_external_data(&a.proto, had_external_data, PROTOBUF_LIMIT);
    let files = save_model(&mut a.proto, output, external)?;
    let t3 = std::time::Instant::now();
    println!(
        "wrote {} ({} hooks)",
        files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" + "),
        a.hooks.len()
    );
    println!(
        "time: read {:.2}s, rewrite {:.2}s, write {:.2}s",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64()
    );
    Ok(())
}

/// Four decimals like the tutorial, or scientific notation for tiny values.
fn num(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Patch(a) => patch_cmd(a),
        Cmd::Compare(a) => compare_cmd(a),
        Cmd::Inspect { model, hook } => {
            OnnxModel::load(&model).and_then(|m| inspect::inspect(&m, hook.as_ref())).map(|s| print!("{s}"))
        }
        Cmd::Rewrite { model, output } => rewrite(&model, &output),
        Cmd::Merge { shards, out } => merge_cmd(&shards, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

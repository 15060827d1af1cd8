//! The `attrpatch` command line: a thin layer over the library.

use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};
use attrpatch::{augment, inspect, job, merge, onnx::OnnxModel, report, Error};
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

#[derive(Args)]
struct RunArgs {
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
    /// Prompt pairs per runtime call; memory grows with it, not with the prompt set.
    #[arg(long, default_value_t = job::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Also write each pair's grids to per_prompt.jsonl.
    #[arg(long)]
    per_prompt: bool,
    /// Run part K of N (0-based) of the batches; combine the parts with `attrpatch merge`.
    #[arg(long)]
    shard: Option<job::Shard>,
    /// Reuse the batch files an interrupted run left in --out instead of recomputing them.
    #[arg(long)]
    resume: bool,
    /// What to attribute: attn (input of each attention out-projection, per head), resid (each
    /// block's output), mlp (each MLP's output), or a regex over tensor names.
    #[arg(long, default_value = "attn")]
    hook: attrpatch::hooks::HookKind,
    /// The quantity to attribute: logit-diff (the tutorial's), logprob-diff, prob (of the correct answer), kl.
    #[arg(long, value_enum, default_value_t = attrpatch::augment::Metric::LogitDiff)]
    metric: attrpatch::augment::Metric,
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
    let device: Device = args.device.parse()?;
    if args.batch_size == 0 {
        return Err(Error::Input("--batch-size must be at least 1".into()));
    }
    let mut opts = job::JobOptions::new(args.model.unwrap_or_else(default_model));
    opts.tokenizer = args.tokenizer;
    opts.prompts = args.prompts;
    opts.bos = args.bos;
    opts.heads = args.heads;
    opts.runtime = RuntimeOptions { kind: args.runtime, device, ort_lib: args.ort_lib, threads: args.threads };
    opts.batch_size = args.batch_size;
    opts.per_prompt = args.per_prompt;
    opts.shard = args.shard;
    opts.metric = args.metric;
    opts.hooks = args.hook;
    opts.progress = true;
    // Fail on an unwritable output folder before spending time on the model.
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let batches_dir = args.out.join("batches");
    if !args.resume && batches_dir.exists() {
        std::fs::remove_dir_all(&batches_dir).map_err(|e| Error::io(&batches_dir, e))?;
    }
    opts.work_dir = Some(args.out.clone());
    let Some(r) = job::run_job(&opts)? else {
        let s = opts.shard.unwrap();
        println!("shard {}/{} done: batch files in {}", s.index, s.count, batches_dir.display());
        println!("combine the shards with: attrpatch merge SHARD_DIRS... --out DIR");
        return Ok(());
    };
    println!("model: {}", opts.model.display());
    println!("runtime: {} ({} call{})", r.manifest.runtime, r.runtime_calls, if r.runtime_calls == 1 { "" } else { "s" });
    if r.batches_resumed > 0 {
        println!("resumed {} finished batch(es) from {}", r.batches_resumed, batches_dir.display());
    }
    print_summary(&r);
    println!(
        "time: load {:.2}s, rewrite {:.2}s, session {:.2}s, run {:.3}s",
        r.seconds.load, r.seconds.rewrite, r.seconds.session, r.seconds.run
    );
    for w in report::write_results(&r, &args.out)? {
        println!("wrote {}", w.display());
    }
    Ok(())
}

fn print_summary(r: &job::JobResult) {
    let (clean, corr) = (r.clean_logit_diff, r.corrupted_logit_diff);
    let m = &r.manifest;
    println!("{} prompt pairs of {} tokens, {} layers x {} heads", m.prompts.len(), m.seq_len, m.hooks.len(), m.n_heads);
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
    let t1 = std::time::Instant::now();
    let mut a = augment::augment(m)?;
    let t2 = std::time::Instant::now();
    attrpatch::fsutil::write_atomic_with(output, |w| attrpatch::onnx::io::write_model(&mut a.proto, w))?;
    let t3 = std::time::Instant::now();
    println!("wrote {} ({} hooks)", output.display(), a.hooks.len());
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
        Cmd::Inspect { model, hook } => OnnxModel::load(&model).and_then(|m| inspect::inspect(&m, hook.as_ref())).map(|s| print!("{s}")),
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

//! The `attrpatch` command line: a thin layer over the library.

use attrpatch::jobs::{self as job, JobOptions};
use attrpatch::{Device, Error, Estimator, JobResult, RuntimeKind, RuntimeOptions};
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
    /// Edge attribution patching: every edge's score (EAP; EAP-IG with --ig-steps) as edges.json and edges.csv.
    Edges(EdgesArgs),
    /// List the layers, hook tensors, inputs, outputs and the ops between hooks and logits.
    Inspect {
        /// ONNX model file.
        model: PathBuf,
        /// Also list what this hook choice (attn, resid, mlp or a tensor-name regex) matches.
        #[arg(long)]
        hook: Option<attrpatch::HookKind>,
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
        /// Where to write the augmented model (a .onnx file).
        #[arg(short, long, alias = "output")]
        out: PathBuf,
        /// What to attribute (as for run).
        #[arg(long, default_value = "attn")]
        hook: attrpatch::HookKind,
        /// The quantity to attribute (as for run).
        #[arg(long, value_enum, default_value_t = attrpatch::Metric::LogitDiff)]
        metric: attrpatch::Metric,
        /// Number of attention heads, when it cannot be read from the graph.
        #[arg(long)]
        heads: Option<usize>,
    },
}

/// What every job takes: the model, the prompts, the runtime, what to patch and measure.
#[derive(Args)]
struct CommonArgs {
    /// ONNX model file, as --model M.onnx or the first argument [default: the bundled IOI model,
    /// models/ioi-gpt2/model.onnx].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The ONNX model file (the same as --model).
    #[arg(value_name = "MODEL", conflicts_with = "model")]
    model_path: Option<PathBuf>,
    /// tokenizer.json [default: the one beside the model].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// JSONL file of {"clean", "corrupted", "correct", "incorrect"} objects [default: the tutorial's 8 IOI pairs].
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Prepend the tokenizer's BOS token to every prompt.
    #[arg(long)]
    bos: bool,
    /// Output folder [default: attrpatch-out for run, attrpatch-patch for patch,
    /// attrpatch-compare for compare, so one command never overwrites another's files].
    #[arg(short, long)]
    out: Option<PathBuf>,
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
    hook: attrpatch::HookKind,
    /// The quantity to attribute: logit-diff (the tutorial's), logprob-diff, prob (of the correct answer), kl.
    #[arg(long, value_enum, default_value_t = attrpatch::Metric::LogitDiff)]
    metric: attrpatch::Metric,
    /// Memory the run may plan for, e.g. 8G or 512M: sets the pairs or rows per call unless
    /// --batch-size / --rows-per-call is given [default: 70% of the memory available].
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<job::MaxMemory>,
    /// Keep the rewritten graph in DIR, so a later run on the same model with the same
    /// graph options starts without loading and rewriting it (ONNX Runtime only)
    /// [without DIR: $XDG_CACHE_HOME/attrpatch, else ~/.cache/attrpatch].
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    cache: Option<Option<PathBuf>>,
    /// The subcommand's default output folder (set after parsing).
    #[arg(skip = "attrpatch-out")]
    default_out: &'static str,
}

impl CommonArgs {
    /// The job options, and the output folder created (an unwritable one fails before the slow part).
    /// The output folder: --out, or the subcommand's own default.
    fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from(self.default_out))
    }

    fn job_options(&self) -> Result<JobOptions, Error> {
        let device: Device = self.device.parse()?;
        let model = match self.model.clone().or_else(|| self.model_path.clone()) {
            Some(m) => m,
            None => {
                let m = default_model();
                eprintln!(
                    "no --model given: running the bundled IOI model, {} (--model M.onnx for yours)",
                    m.display()
                );
                m
            }
        };
        // First, before the sizing and progress lines: what runs.
        println!("model: {}", model.display());
        let mut opts = JobOptions::new(model);
        opts.tokenizer = self.tokenizer.clone();
        opts.prompts = self.prompts.clone();
        opts.bos = self.bos;
        opts.heads = self.heads;
        opts.runtime =
            RuntimeOptions { kind: self.runtime, device, ort_lib: self.ort_lib.clone(), threads: self.threads };
        opts.per_prompt = self.per_prompt;
        opts.metric = self.metric;
        opts.hooks = self.hook.clone();
        opts.progress = Some(std::sync::Arc::new(Bars::default()));
        opts.max_memory = self.max_memory.map(|m| m.0);
        opts.cache = match &self.cache {
            None => None,
            Some(Some(dir)) => Some(dir.clone()),
            Some(None) => Some(attrpatch::jobs::default_cache_dir()?),
        };
        let out = self.out_dir();
        if out.is_file() {
            return Err(Error::Input(format!(
                "--out {}: this is a file; attrpatch writes several files, so give it a folder (it is created if missing)",
                out.display()
            )));
        }
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        Ok(opts)
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Prompt pairs per runtime call; memory grows with it, not with the prompt set
    /// [default: as many as --max-memory holds, at most 64; 64 with --shard].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Run part K of N (0-based) of the batches; combine the parts with `attrpatch merge`.
    #[arg(long)]
    shard: Option<attrpatch::Shard>,
    /// Reuse the batch files an interrupted run left in --out instead of recomputing them.
    #[arg(long)]
    resume: bool,
    /// Plain attribution: run each distinct token sequence once (one forward copy over the distinct
    /// sequences, gathered per pair): on, off (a clean and a corrupted copy), or auto
    /// (on when the cost model says it is cheaper, e.g. neighbour-swapped prompts).
    #[arg(long, value_enum, default_value_t = job::Dedup::Auto)]
    dedup: job::Dedup,
    /// Integrated gradients with N steps instead of plain attribution (N forward+backward
    /// passes of each layer's path from the corrupted to the clean activation).
    #[arg(long, value_name = "N")]
    ig_steps: Option<usize>,
    /// Patching rows per runtime call, with --ig-steps and --diagnostic; memory grows with it
    /// [default: as many as --max-memory holds, at most 64].
    #[arg(long)]
    rows_per_call: Option<usize>,
    /// atp: attribution patching; atp-star: AtP* (each head's query and key scored with the exact
    /// attention pattern they give, the QK-fix, and GradDrop's layers - 1 backward sweeps), in
    /// atp_star.json and query_*/key_* grids beside the head grids.
    #[arg(long, value_enum, default_value_t = RunMethod::Atp)]
    method: RunMethod,
    /// With --method atp-star: the QK-fix alone, without GradDrop's backward sweeps.
    #[arg(long)]
    no_grad_drop: bool,
    /// After the run, bound what its top heads missed (the AtP* paper's diagnostic): exact-patch
    /// N random subsets of the heads outside the top --diagnostic-top K by |estimate|, each subset
    /// jointly, and write diagnostic.json (and its section of report.html).
    #[arg(long, value_name = "N")]
    diagnostic: Option<usize>,
    /// With --diagnostic: the heads of largest |estimate| left out of the subsets (the ones you
    /// would verify by exact patching) [default: 10].
    #[arg(long, value_name = "K")]
    diagnostic_top: Option<usize>,
    /// With --diagnostic: heads per subset [default: half of those outside the top K, rounded up].
    #[arg(long, value_name = "M")]
    diagnostic_size: Option<usize>,
    /// With --diagnostic: the seed of the subsets' sampling, for reproducible subsets [default: 0].
    #[arg(long)]
    seed: Option<u64>,
}

/// `run --method`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RunMethod {
    /// Attribution patching (the tutorial's).
    Atp,
    /// AtP* (Kramár et al. 2024): QK-fix and GradDrop.
    AtpStar,
}

#[derive(Args)]
struct EdgesArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Prompt pairs per runtime call [default: as run chooses].
    #[arg(long)]
    batch_size: Option<usize>,
    /// eap (the gradient at the base run), eap-ig-inputs (averaged over N runs with the input
    /// interpolated), eap-ig-activations (averaged over N runs per component, that component's
    /// output alone interpolated), clean-corrupted (averaged over the clean and the corrupted run)
    /// [default: eap, or eap-ig-inputs with --ig-steps N > 1].
    #[arg(long, value_enum)]
    method: Option<attrpatch::eap::Method>,
    /// The steps N of eap-ig-inputs and eap-ig-activations [default: 5 with such a --method];
    /// alone, N > 1 means --method eap-ig-inputs.
    #[arg(long, value_name = "N")]
    ig_steps: Option<usize>,
    /// denoising: gradient at the corrupted run, Δ = clean - corrupted, the normalised metric;
    /// noising (the EAP-IG codebase's): gradient at the clean run, Δ = ablated - clean, the raw metric.
    #[arg(long, value_enum, default_value_t = attrpatch::eap::Convention::Denoising)]
    convention: attrpatch::eap::Convention,
    /// Each writer's counterfactual with --convention noising: patching (its corrupted activation),
    /// zero, mean (over every pair and position of the corrupted prompts), mean-positional (per position).
    #[arg(long, value_enum, default_value_t = attrpatch::eap::Ablation::Patching)]
    ablation: attrpatch::eap::Ablation,
    /// The K edges of largest |score| printed (and drawn, with the circuit figure): the circuit.
    #[arg(long, value_name = "K", default_value_t = 20)]
    top_k: usize,
    /// The circuit is the edges with |score| >= T instead of the top K.
    #[arg(long, value_name = "T")]
    threshold: Option<f64>,
    /// Measure circuit faithfulness by exact edge patching for K = 0, 1, 2, 4, ..., all
    /// edges, MIB's sizes (0.1% .. 100% of the edges, with CPR and CMD) and the circuit's K
    /// (faithfulness.json, .csv, .png).
    #[arg(long)]
    faithfulness: bool,
    /// Patched rows per runtime call for --faithfulness [default: as many as --max-memory holds, at most 256].
    #[arg(long)]
    rows_per_call: Option<usize>,
    /// Also write the edge scores as a MIB / EAP-IG importance file (Graph.to_json's layout),
    /// the circuit's edges marked in_graph. Not for grouped-query attention.
    #[arg(long, value_name = "OUT")]
    mib: Option<PathBuf>,
    /// Rank edges by the scores of a MIB / EAP-IG importance file (e.g. another tool's circuit)
    /// instead of attrpatch's EAP scores; with --faithfulness they are scored by exact edge patching.
    #[arg(long, value_name = "FILE")]
    circuit_from: Option<PathBuf>,
    /// Also run `run`'s node job into the same folder and write report.html with the edge table
    /// and the circuit slider beside the grids (one more graph and session).
    #[arg(long)]
    report: bool,
}

#[derive(Args)]
struct PatchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Also patch every position of every layer (the layer x position grid).
    #[arg(long)]
    positions: bool,
    /// Patched prompt runs per runtime call; memory grows with it
    /// [default: as many as --max-memory holds, at most 256].
    #[arg(long)]
    rows_per_call: Option<usize>,
    /// Exact patching in N layer groups: a row patched in a group computes only the layers from
    /// the group's first one up, fed the unpatched run's activations below it. "auto" chooses N
    /// from the measured session and layer costs; "off" runs every row through every layer.
    #[arg(long, value_name = "auto|off|N", default_value = "auto", value_parser = parse_layer_groups)]
    layer_groups: LayerGroupsArg,
}

/// `--layer-groups`: None runs every row through the one patching graph.
#[derive(Clone, Debug)]
struct LayerGroupsArg(Option<job::LayerGroups>);

fn parse_layer_groups(s: &str) -> Result<LayerGroupsArg, String> {
    match s {
        "auto" => Ok(LayerGroupsArg(Some(job::LayerGroups::Auto))),
        "off" => Ok(LayerGroupsArg(None)),
        _ => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(LayerGroupsArg(Some(job::LayerGroups::Count(n)))),
            _ => Err(format!("'{s}': expected auto, off or a number of groups of at least 1")),
        },
    }
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Also compare the layer x position grid (patches every position of every layer).
    #[arg(long)]
    positions: bool,
    /// Also compare integrated gradients with N steps (with --edges: EAP-IG with N steps).
    #[arg(long, value_name = "N")]
    ig_steps: Option<usize>,
    /// Also compare AtP* (the QK-fix and GradDrop; its scores are magnitudes, compared with exact
    /// patching's magnitudes) on the head outputs.
    #[arg(long)]
    atp_star: bool,
    /// Compare edge scores (EAP, and EAP-IG with --ig-steps) against exact edge patching,
    /// one patched edge per row: for small models (rows = pairs x edges).
    #[arg(long)]
    edges: bool,
    /// Patched prompt runs per runtime call; memory grows with it [default: as many as
    /// --max-memory holds, at most 256 for exact patching, 64 for integrated gradients].
    #[arg(long)]
    rows_per_call: Option<usize>,
}

/// The CLI's progress: a bar per phase on stderr, the call sizing on stdout.
#[derive(Default)]
struct Bars(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl attrpatch::Progress for Bars {
    fn start(&self, total: u64, unit: &str) {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit}, {{elapsed}} elapsed, eta {{eta}}"
        )) {
            bar.set_style(style);
        }
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }
    fn advance(&self) {
        if let Some(b) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            b.inc(1);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            b.finish_and_clear();
        }
    }
    fn note(&self, line: &str) {
        println!("{line}");
    }
    fn warn(&self, warning: &str) {
        eprintln!("warning: {warning}");
    }
    /// On a terminal only, as the bars: a log or a pipe gets the timing line at the end.
    fn stage(&self, what: &str) {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            eprintln!("{what} ...");
        }
    }
}

/// The bundled model trained on IOI (models/ioi-gpt2/MODEL_CARD.md).
fn default_model() -> PathBuf {
    let local = Path::new("models/ioi-gpt2/model.onnx");
    if local.is_file() {
        return local.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ioi-gpt2/model.onnx")
}

/// The counts a user gives that must be at least 1, checked here so that
/// the message names the flag.
fn at_least_one(flags: &[(&str, Option<usize>)]) -> Result<(), Error> {
    match flags.iter().find(|(_, v)| *v == Some(0)) {
        Some((flag, _)) => Err(Error::Input(format!("{flag} must be at least 1"))),
        None => Ok(()),
    }
}

fn run(args: RunArgs) -> Result<(), Error> {
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
fn diagnostic_options(args: &RunArgs) -> Result<Option<job::DiagnosticOptions>, Error> {
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
fn run_diagnostic(
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
fn atp_star(
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

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Prints a finished job's summary and timings, and writes its files.
fn report_job(r: &JobResult, out: &Path) -> Result<(), Error> {
    println!("method: {}", r.manifest.method.label());
    println!(
        "runtime: {} ({} call{})",
        r.manifest.runtime,
        r.runtime_calls,
        if r.runtime_calls == 1 { "" } else { "s" }
    );
    print_summary(r);
    // Only attribution jobs that ran calls count rows.
    let rows = if r.rows.pairs > 0 { format!(" ({})", r.rows.describe()) } else { String::new() };
    let cache = match r.seconds.cache.label() {
        "" => String::new(),
        label => format!(" ({label})"),
    };
    println!(
        "time: load {:.2}s, rewrite {:.2}s, session {:.2}s, run {:.3}s{rows}{cache}",
        r.seconds.load, r.seconds.rewrite, r.seconds.session, r.seconds.run
    );
    for w in job::write_results(r, out)? {
        println!("wrote {}", w.display());
    }
    Ok(())
}

fn edges_cmd(args: EdgesArgs) -> Result<(), Error> {
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
fn edges_report(
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
fn faithfulness_sweep(
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

fn patch_cmd(args: PatchArgs) -> Result<(), Error> {
    at_least_one(&[("--rows-per-call", args.rows_per_call)])?;
    let opts = args.common.job_options()?;
    let e = Estimator::Exact { positions: args.positions };
    let r = job::run_patching_grouped(&opts, e, args.rows_per_call, args.layer_groups.0.as_ref())?;
    report_job(&r, &args.common.out_dir())
}

fn compare_cmd(args: CompareArgs) -> Result<(), Error> {
    at_least_one(&[("--ig-steps", args.ig_steps), ("--rows-per-call", args.rows_per_call)])?;
    let opts = args.common.job_options()?;
    if args.edges {
        return compare_edges_cmd(&args, &opts);
    }
    let c = job::compare(
        &opts,
        &attrpatch::CompareOptions {
            positions: args.positions,
            ig_steps: args.ig_steps,
            rows_per_call: args.rows_per_call,
            atp_star: args.atp_star,
        },
    )?;
    print_summary(&c.exact);
    print!("{}", job::comparison_report(&c));
    for w in job::write_comparison(&c, &args.common.out_dir())? {
        println!("wrote {}", w.display());
    }
    Ok(())
}

/// `compare --edges`: EAP (and EAP-IG) against exact edge patching.
fn compare_edges_cmd(args: &CompareArgs, opts: &job::JobOptions) -> Result<(), Error> {
    if args.positions {
        return Err(Error::Input(
            "--positions compares node grids; with --edges every edge is compared, drop it".into(),
        ));
    }
    if args.common.hook != attrpatch::HookKind::AttnOut {
        return Err(Error::Input(
            "--hook: edges are defined by the attention heads, MLPs and residual stream; drop --hook".into(),
        ));
    }
    let c = attrpatch::eap::compare_edges(opts, args.ig_steps, args.rows_per_call)?;
    print!("{}", attrpatch::eap::comparison_report(&c));
    for w in attrpatch::eap::write_comparison(&c, &args.common.out_dir())? {
        println!("wrote {}", w.display());
    }
    Ok(())
}

// The baselines are printed as the tutorial computes them, x / x and (y - y) / (x - y).
#[allow(clippy::eq_op)]
fn print_summary(r: &JobResult) {
    let (clean, corr) = (r.clean_metric, r.corrupted_metric);
    let m = &r.manifest;
    let units = if m.n_heads > 0 { format!(" x {} heads", m.n_heads) } else { String::new() };
    let layers = format!("{} layer{}", m.hooks.len(), if m.hooks.len() == 1 { "" } else { "s" });
    let tokens = match m.min_len {
        0 => format!("up to {}", m.seq_len),
        n if n < m.seq_len => format!("{n}-{}", m.seq_len),
        _ => m.seq_len.to_string(),
    };
    println!("{} prompt pairs of {tokens} tokens, {layers}{units}", m.prompts.len());
    let label = m.metric.label();
    println!("Clean {label}: {}", num(clean));
    println!("Corrupted {label}: {}", num(corr));
    println!("Clean Baseline is 1: {:.4}", (clean - corr) / (clean - corr));
    // (corr - corr) / (clean - corr) is exactly zero; + 0.0 drops the sign of -0.
    println!("Corrupted Baseline is 0: {:.4}", (corr - corr) / (clean - corr) + 0.0);
    if let Some(acc) = r.baselines.clean_accuracy {
        println!("Clean prompts answered correctly: {:.0}%", 100.0 * acc);
    }
    for w in &r.baselines.warnings {
        eprintln!("warning: {w}");
    }
}

fn merge_cmd(shards: &[PathBuf], out: &Path) -> Result<(), Error> {
    let r = job::merge(shards)?;
    print_summary(&r);
    for w in job::write_results(&r, out)? {
        println!("wrote {}", w.display());
    }
    Ok(())
}

fn rewrite(
    model: &Path,
    output: &Path,
    hooks: attrpatch::HookKind,
    metric: attrpatch::Metric,
    heads: Option<usize>,
) -> Result<(), Error> {
    let t0 = std::time::Instant::now();
    let opts = attrpatch::RewriteOptions { metric, hooks, heads, ..Default::default() };
    let mut a = attrpatch::rewrite(model, &opts)?;
    let t1 = std::time::Instant::now();
    let files = a.save(output)?;
    let t2 = std::time::Instant::now();
    println!(
        "wrote {} ({} hooks)",
        files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" + "),
        a.hooks().len()
    );
    println!("time: read and rewrite {:.2}s, write {:.2}s", (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
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

/// How the library's messages name a setting the user chose, and the flag
/// that sets it here: the library speaks of what it checks, the binary of
/// the flag that sets it (`the hook pattern 'x' matches no tensor name` is
/// printed `--hook 'x' matches no tensor name`).
const FLAG_NAMES: &[(&str, &str)] = &[
    ("the hook pattern", "--hook"),
    ("a hook pattern", "--hook"),
    ("a head count", "--heads"),
    ("the ort runtime", "--runtime ort"),
    ("the tract runtime", "--runtime tract"),
    ("the device cuda", "--device cuda"),
    ("the ONNX Runtime library path", "--ort-lib"),
    ("the diagnostic's top count", "--diagnostic-top"),
    ("the diagnostic's subset size", "--diagnostic-size"),
    ("the diagnostic's subset count", "--diagnostic"),
];

/// `text` (an error or a report of the library) with each setting named by its flag.
fn name_flags(text: &str) -> String {
    FLAG_NAMES.iter().fold(text.to_string(), |t, (setting, flag)| t.replace(setting, flag))
}

/// tract's panics on malformed models come back as errors naming the model;
/// the default hook would print each panic too, so it is skipped for those.
fn quiet_guarded_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !attrpatch::in_guarded_call() {
            default(info);
        }
    }));
}

fn main() -> ExitCode {
    quiet_guarded_panics();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Patch(mut a) => {
            a.common.default_out = "attrpatch-patch";
            patch_cmd(a)
        }
        Cmd::Compare(mut a) => {
            a.common.default_out = "attrpatch-compare";
            compare_cmd(a)
        }
        Cmd::Edges(mut a) => {
            a.common.default_out = "attrpatch-edges";
            edges_cmd(a)
        }
        Cmd::Inspect { model, hook } => attrpatch::inspect(model.as_path(), hook.as_ref())
            .map(|i| print!("{}", name_flags(&attrpatch::format_inspection(&i)))),
        Cmd::Rewrite { model, out, hook, metric, heads } => rewrite(&model, &out, hook, metric, heads),
        Cmd::Merge { shards, out } => merge_cmd(&shards, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", name_flags(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

// The unit tests below reach into the library's internals.
#[cfg(all(test, not(feature = "internals")))]
compile_error!("the binary's tests need the library's internals: cargo test --features internals");

#[cfg(test)]
mod tests {
    use super::name_flags;
    use std::path::Path;

    /// The head-count error comes from deep in the library (no CLI test
    /// model lacks the head count); its phrase must still map to the flag.
    #[test]
    fn the_unknown_head_count_error_names_the_heads_flag() {
        let e = attrpatch::augment::heads_unknown(Path::new("m.onnx"), "t").to_string();
        assert!(!e.contains("--heads"), "{e}");
        assert!(name_flags(&e).ends_with("; pass --heads N"), "{}", name_flags(&e));
    }

    /// The explicit library path's label is the library's words, printed as the flag.
    #[test]
    fn a_missing_ort_library_names_the_ort_lib_flag() {
        let e = attrpatch::runtime::ort_lib::locate(Some(Path::new("/nonexistent/lib.so"))).unwrap_err().to_string();
        assert!(!e.contains("--ort-lib"), "{e}");
        assert!(name_flags(&e).starts_with("--ort-lib points to /nonexistent/lib.so"), "{}", name_flags(&e));
    }
}

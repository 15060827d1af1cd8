//! What every subcommand shares: the job options (`CommonArgs`), the progress bars, the
//! summary and files a finished job prints and writes, and the flag names in messages.

use attrpatch::jobs::{self as job, JobOptions};
use attrpatch::{Device, Error, JobResult, RuntimeKind, RuntimeOptions};
use clap::Args;
use std::path::{Path, PathBuf};

/// What every job takes: the model, the prompts, the runtime, what to patch and measure.
#[derive(Args)]
pub(crate) struct CommonArgs {
    /// ONNX model file, as --model M.onnx or the first argument [default: the bundled IOI model,
    /// models/ioi-gpt2/model.onnx].
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// The ONNX model file (the same as --model).
    #[arg(value_name = "MODEL", conflicts_with = "model")]
    pub(crate) model_path: Option<PathBuf>,
    /// tokenizer.json [default: the one beside the model].
    #[arg(long)]
    pub(crate) tokenizer: Option<PathBuf>,
    /// JSONL file of {"clean", "corrupted", "correct", "incorrect"} objects [default: the tutorial's 8 IOI pairs].
    #[arg(long)]
    pub(crate) prompts: Option<PathBuf>,
    /// Prepend the tokenizer's BOS token to every prompt.
    #[arg(long)]
    pub(crate) bos: bool,
    /// Output folder [default: attrpatch-out for run, attrpatch-patch for patch,
    /// attrpatch-compare for compare, so one command never overwrites another's files].
    #[arg(short, long)]
    pub(crate) out: Option<PathBuf>,
    /// Which runtime executes the augmented graph.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Ort)]
    pub(crate) runtime: RuntimeKind,
    /// cpu, cuda, cuda:N or auto (CUDA when the ONNX Runtime library has it, else CPU).
    #[arg(long, default_value = "auto")]
    pub(crate) device: String,
    /// The ONNX Runtime shared library (or its folder) [default: ORT_DYLIB_PATH, .ort/, Python onnxruntime].
    #[arg(long)]
    pub(crate) ort_lib: Option<PathBuf>,
    /// Intra-op threads (0: the runtime's default).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Number of attention heads, when it cannot be read from the graph.
    #[arg(long)]
    pub(crate) heads: Option<usize>,
    /// Also write each pair's grids to per_prompt.jsonl.
    #[arg(long)]
    pub(crate) per_prompt: bool,
    /// What to attribute: attn (input of each attention out-projection, per head), resid (each
    /// block's output), mlp (each MLP's output), or a regex over tensor names.
    #[arg(long, default_value = "attn")]
    pub(crate) hook: attrpatch::HookKind,
    /// The quantity to attribute: logit-diff (the tutorial's), logprob-diff, prob (of the correct answer), kl.
    #[arg(long, value_enum, default_value_t = attrpatch::Metric::LogitDiff)]
    pub(crate) metric: attrpatch::Metric,
    /// Memory the run may plan for, e.g. 8G or 512M: sets the pairs or rows per call unless
    /// --batch-size / --rows-per-call is given [default: 70% of the memory available].
    #[arg(long, value_name = "SIZE")]
    pub(crate) max_memory: Option<job::MaxMemory>,
    /// Keep the rewritten graph in DIR, so a later run on the same model with the same
    /// graph options starts without loading and rewriting it (ONNX Runtime only)
    /// [without DIR: $XDG_CACHE_HOME/attrpatch, else ~/.cache/attrpatch].
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub(crate) cache: Option<Option<PathBuf>>,
    /// The subcommand's default output folder (set after parsing).
    #[arg(skip = "attrpatch-out")]
    pub(crate) default_out: &'static str,
}

impl CommonArgs {
    /// The job options, and the output folder created (an unwritable one fails before the slow part).
    /// The output folder: --out, or the subcommand's own default.
    pub(crate) fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from(self.default_out))
    }

    pub(crate) fn job_options(&self) -> Result<JobOptions, Error> {
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

/// The CLI's progress: a bar per phase on stderr, the call sizing on stdout.
#[derive(Default)]
pub(crate) struct Bars(std::sync::Mutex<Option<indicatif::ProgressBar>>);

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
pub(crate) fn default_model() -> PathBuf {
    let local = Path::new("models/ioi-gpt2/model.onnx");
    if local.is_file() {
        return local.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ioi-gpt2/model.onnx")
}

/// The counts a user gives that must be at least 1, checked here so that
/// the message names the flag.
pub(crate) fn at_least_one(flags: &[(&str, Option<usize>)]) -> Result<(), Error> {
    match flags.iter().find(|(_, v)| *v == Some(0)) {
        Some((flag, _)) => Err(Error::Input(format!("{flag} must be at least 1"))),
        None => Ok(()),
    }
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Prints a finished job's summary and timings, and writes its files.
pub(crate) fn report_job(r: &JobResult, out: &Path) -> Result<(), Error> {
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

// The baselines are printed as the tutorial computes them, x / x and (y - y) / (x - y).
#[allow(clippy::eq_op)]
pub(crate) fn print_summary(r: &JobResult) {
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

/// Four decimals like the tutorial, or scientific notation for tiny values.
pub(crate) fn num(v: f64) -> String {
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
pub(crate) const FLAG_NAMES: &[(&str, &str)] = &[
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
pub(crate) fn name_flags(text: &str) -> String {
    FLAG_NAMES.iter().fold(text.to_string(), |t, (setting, flag)| t.replace(setting, flag))
}

/// tract's panics on malformed models come back as errors naming the model;
/// the default hook would print each panic too, so it is skipped for those.
pub(crate) fn quiet_guarded_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !attrpatch::in_guarded_call() {
            default(info);
        }
    }));
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

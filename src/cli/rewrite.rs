//! `attrpatch rewrite`: the augmented model as a standard ONNX file.

use attrpatch::Error;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct RewriteArgs {
    /// ONNX model file.
    pub(crate) model: PathBuf,
    /// Where to write the augmented model (a .onnx file).
    #[arg(short, long, alias = "output")]
    pub(crate) out: PathBuf,
    /// What to attribute (as for run).
    #[arg(long, default_value = "attn")]
    pub(crate) hook: attrpatch::HookKind,
    /// The quantity to attribute (as for run).
    #[arg(long, value_enum, default_value_t = attrpatch::Metric::LogitDiff)]
    pub(crate) metric: attrpatch::Metric,
    /// Number of attention heads, when it cannot be read from the graph.
    #[arg(long)]
    pub(crate) heads: Option<usize>,
}

pub(crate) fn rewrite_cmd(args: RewriteArgs) -> Result<(), Error> {
    let t0 = std::time::Instant::now();
    let opts =
        attrpatch::RewriteOptions { metric: args.metric, hooks: args.hook, heads: args.heads, ..Default::default() };
    let mut a = attrpatch::rewrite(args.model.as_path(), &opts)?;
    let t1 = std::time::Instant::now();
    let files = a.save(&args.out)?;
    let t2 = std::time::Instant::now();
    println!(
        "wrote {} ({} hooks)",
        files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" + "),
        a.hooks().len()
    );
    println!("time: read and rewrite {:.2}s, write {:.2}s", (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
    Ok(())
}

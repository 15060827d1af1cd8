//! `attrpatch compare`: the estimates against exact patching (and `--edges`).

use super::common::*;
use attrpatch::jobs as job;
use attrpatch::Error;
use clap::Args;

#[derive(Args)]
pub(crate) struct CompareArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Also compare the layer x position grid (patches every position of every layer).
    #[arg(long)]
    pub(crate) positions: bool,
    /// Also compare integrated gradients with N steps (with --edges: EAP-IG with N steps).
    #[arg(long, value_name = "N")]
    pub(crate) ig_steps: Option<usize>,
    /// Also compare AtP* (the QK-fix and GradDrop; its scores are magnitudes, compared with exact
    /// patching's magnitudes) on the head outputs.
    #[arg(long)]
    pub(crate) atp_star: bool,
    /// Compare edge scores (EAP, and EAP-IG with --ig-steps) against exact edge patching,
    /// one patched edge per row: for small models (rows = pairs x edges).
    #[arg(long)]
    pub(crate) edges: bool,
    /// Patched prompt runs per runtime call; memory grows with it [default: as many as
    /// --max-memory holds, at most 256 for exact patching, 64 for integrated gradients].
    #[arg(long)]
    pub(crate) rows_per_call: Option<usize>,
}

pub(crate) fn compare_cmd(args: CompareArgs) -> Result<(), Error> {
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
pub(crate) fn compare_edges_cmd(args: &CompareArgs, opts: &job::JobOptions) -> Result<(), Error> {
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

//! `attrpatch patch`: exact activation patching.

use super::common::*;
use attrpatch::jobs as job;
use attrpatch::{Error, Estimator};
use clap::Args;

#[derive(Args)]
pub(crate) struct PatchArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Also patch every position of every layer (the layer x position grid).
    #[arg(long)]
    pub(crate) positions: bool,
    /// Patched prompt runs per runtime call; memory grows with it
    /// [default: as many as --max-memory holds, at most 256].
    #[arg(long)]
    pub(crate) rows_per_call: Option<usize>,
    /// Exact patching in N layer groups: a row patched in a group computes only the layers from
    /// the group's first one up, fed the unpatched run's activations below it. "auto" chooses N
    /// from the measured session and layer costs; "off" runs every row through every layer.
    #[arg(long, value_name = "auto|off|N", default_value = "auto", value_parser = parse_layer_groups)]
    pub(crate) layer_groups: LayerGroupsArg,
}

/// `--layer-groups`: None runs every row through the one patching graph.
#[derive(Clone, Debug)]
pub(crate) struct LayerGroupsArg(Option<job::LayerGroups>);

pub(crate) fn parse_layer_groups(s: &str) -> Result<LayerGroupsArg, String> {
    match s {
        "auto" => Ok(LayerGroupsArg(Some(job::LayerGroups::Auto))),
        "off" => Ok(LayerGroupsArg(None)),
        _ => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(LayerGroupsArg(Some(job::LayerGroups::Count(n)))),
            _ => Err(format!("'{s}': expected auto, off or a number of groups of at least 1")),
        },
    }
}

pub(crate) fn patch_cmd(args: PatchArgs) -> Result<(), Error> {
    at_least_one(&[("--rows-per-call", args.rows_per_call)])?;
    let opts = args.common.job_options()?;
    let e = Estimator::Exact { positions: args.positions };
    let r = job::run_patching_grouped(&opts, e, args.rows_per_call, args.layer_groups.0.as_ref())?;
    report_job(&r, &args.common.out_dir())
}

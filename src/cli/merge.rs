//! `attrpatch merge`: the parts of a sharded run, combined.

use super::common::*;
use attrpatch::jobs as job;
use attrpatch::Error;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct MergeArgs {
    /// The shard output folders.
    #[arg(required = true)]
    pub(crate) shards: Vec<PathBuf>,
    /// Output folder.
    #[arg(short, long)]
    pub(crate) out: PathBuf,
}

pub(crate) fn merge_cmd(args: MergeArgs) -> Result<(), Error> {
    let r = job::merge(&args.shards)?;
    print_summary(&r);
    for w in job::write_results(&r, &args.out)? {
        println!("wrote {}", w.display());
    }
    Ok(())
}

//! The `attrpatch` command line: a thin layer over the library.

mod cli;

use clap::{Parser, Subcommand};
use cli::common::{name_flags, quiet_guarded_panics};
use cli::{compare::*, edges::*, inspect::*, merge::*, patch::*, rewrite::*, run::*};
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
    Inspect(InspectArgs),
    /// Combine the output folders of `run --shard K/N` into the results of one run.
    Merge(MergeArgs),
    /// Write the augmented model (metric + backward graph + hook outputs) as a standard .onnx file.
    Rewrite(RewriteArgs),
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
        Cmd::Inspect(a) => inspect_cmd(a),
        Cmd::Rewrite(a) => rewrite_cmd(a),
        Cmd::Merge(a) => merge_cmd(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", name_flags(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

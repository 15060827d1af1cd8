//! `attrpatch inspect`: what attrpatch sees in a model.

use super::common::name_flags;
use attrpatch::Error;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct InspectArgs {
    /// ONNX model file.
    pub(crate) model: PathBuf,
    /// Also list what this hook choice (attn, resid, mlp or a tensor-name regex) matches.
    #[arg(long)]
    pub(crate) hook: Option<attrpatch::HookKind>,
}

pub(crate) fn inspect_cmd(args: InspectArgs) -> Result<(), Error> {
    let i = attrpatch::inspect(args.model.as_path(), args.hook.as_ref())?;
    print!("{}", name_flags(&attrpatch::format_inspection(&i)));
    Ok(())
}

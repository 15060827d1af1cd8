//! Normalise, then differentiate: rewrites that turn a file as found into the
//! standard-op graph the differentiator knows. They run after loading, before
//! hooks are looked for, one concern per file; each rewrite computes the same
//! function as what it replaces (its tests check that against ONNX Runtime).

pub mod contrib;
mod flatten;
pub mod opset23;

use crate::error::Result;
use crate::onnx::pb::ModelProto;

/// Applies every normalisation to a loaded model, in order.
pub fn normalize(proto: &mut ModelProto, opset: i64) -> Result<()> {
    opset23::decompose(proto, opset)?;
    contrib::decompose(proto, opset)?;
    flatten::flatten_as_reshape_all(proto, opset)?;
    Ok(())
}

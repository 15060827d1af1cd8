//! `inspect`: what attrpatch sees in a model, as data.

use super::source::ModelSource;
use crate::inspect::{inspection, Inspection};
use attrpatch_core::hooks::HookKind;
use attrpatch_onnx::error::Result;

/// The model's inputs, outputs, attention hooks, head count, the op types
/// between hooks and logits and whatever cannot be differentiated; with
/// `hooks`, also what that hook choice matches. `Inspection` serialises (serde)
/// and formats as `attrpatch inspect` prints (`format_inspection`).
pub fn inspect(model: impl Into<ModelSource>, hooks: Option<&HookKind>) -> Result<Inspection> {
    inspection(&model.into().load()?, hooks)
}

//! Normalise, then differentiate: rewrites that turn a file as found into the
//! standard-op graph the differentiator knows. They run after loading, before
//! hooks are looked for, one concern per file; each rewrite computes the same
//! function as what it replaces (its tests check that against ONNX Runtime).

pub mod contrib;
mod flatten;
pub mod if_inline;
pub mod kv_cache;
pub mod opset23;
pub mod opset_upgrade;
pub mod precision;
pub mod quant;
pub mod token_types;

use crate::error::Result;
use crate::pb::ModelProto;
use std::path::Path;

/// Applies every normalisation to a loaded model, in order; returns the
/// default-domain opset of the result (old opsets are upgraded).
///
/// Order: the KV cache is fed empty and fixed `If`s inlined first (so the
/// other passes see one flat graph); weights are dequantised before the
/// precision pass (scales may be float16); the opset is upgraded before the
/// contrib decompositions, which emit opset-13+ forms.
pub fn normalize(proto: &mut ModelProto, opset: i64, path: &Path) -> Result<i64> {
    let cache = kv_cache::feed_empty_cache(proto, opset, path)?;
    token_types::widen_int32_token_inputs(proto, opset);
    let inlined = if_inline::inline_constant_ifs(proto, path)?;
    quant::refuse_activation_quantization(proto, path)?;
    quant::dequantize_weights(proto, opset, path)?;
    precision::compute_in_float32(proto);
    let opset = opset_upgrade::upgrade(proto, opset, path)?;
    opset23::decompose(proto, opset)?;
    contrib::decompose(proto, opset)?;
    flatten::flatten_as_reshape_all(proto, opset)?;
    if cache || inlined > 0 {
        // The dropped `present.*` outputs and the branch not taken leave dead nodes.
        crate::prune::prune_dead(proto.graph.as_mut().expect("checked by caller"));
    }
    Ok(opset)
}

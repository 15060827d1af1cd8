//! EmbedLayerNormalization: word + position (+ segment) embeddings looked up
//! with Gather, summed, LayerNorm'ed; mask_index is the mask's row sums
//! (zeros without a mask), as ONNX Runtime's CPU kernel writes it.

use super::norm::normalize_last;
use super::{attr_float, bind, input, required, Ctx};
use crate::builder::{attr_i, GraphBuilder};
use crate::consts::INT32;
use crate::error::Result;
use crate::pb::NodeProto;

pub(crate) fn embed_layer_norm(b: &mut GraphBuilder, n: &NodeProto, cx: &Ctx) -> Result<()> {
    let ids = required(n, 0, "input_ids")?;
    let word = required(n, 2, "word_embedding")?;
    let pos_emb = required(n, 3, "position_embedding")?;
    let gamma = required(n, 5, "gamma")?;
    let beta = required(n, 6, "beta")?;
    let g0 = vec![attr_i("axis", 0)];
    let w = b.node("Gather", &[word, ids], g0.clone());
    let positions = match input(n, 8) {
        Some(p) => p.to_string(),
        None => {
            let s = b.dim(ids, 1);
            super::heads::arange(b, &s)
        }
    };
    let p = b.node("Gather", &[pos_emb, &positions], g0.clone());
    let mut sum = b.add(&w, &p);
    if let (Some(seg), Some(seg_emb)) = (input(n, 1), input(n, 4)) {
        let s = b.node("Gather", &[seg_emb, seg], g0);
        sum = b.add(&sum, &s);
    }
    let r = normalize_last(b, &sum, gamma, Some(beta), attr_float(n, "epsilon", 1e-12), false);
    bind(b, &r.y, &n.output[0]);
    if cx.used(n, 1) {
        let idx = match input(n, 7) {
            Some(mask) => {
                let m = b.cast(mask, INT32);
                b.reduce_sum(&m, &[1], false)
            }
            None => {
                let bsz = b.dim(ids, 0);
                let shape = b.unsqueeze(&bsz, &[0]);
                let zero = crate::consts::i64_tensor("value", &[1], &[0]);
                let zero = crate::pb::TensorProto { data_type: INT32, raw_data: vec![0; 4], ..zero };
                b.node("ConstantOfShape", &[&shape], vec![crate::builder::attr_t("value", zero)])
            }
        };
        bind(b, &idx, &n.output[1]);
    }
    if cx.used(n, 2) {
        bind(b, &sum, &n.output[2]);
    }
    Ok(())
}

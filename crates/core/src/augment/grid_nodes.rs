//! The grids computed inside the graph, so only [pairs, heads] and
//! [pairs, positions] per layer leave the runtime (on a GPU, the hook
//! tensors themselves never cross to the host):
//!   p = grad * (clean_act - corrupted_act)        viewed as [B, S, D]
//!   positions = sum_D p                            [B, S]
//!   heads = sum_Dh (last_position_onehot @ p) as [B, H, Dh]   [B, H]

use super::names;
use attrpatch_onnx::builder::GraphBuilder;

/// Emits layer `layer`'s grid outputs; `shape_bs` is Shape(token input) = [B, S].
/// `position_onehot` [B,1,S] picks each row's last position.
/// `heads`: None for hooks that do not split into heads (positions only).
#[allow(clippy::too_many_arguments)]
pub fn emit(
    b: &mut GraphBuilder,
    layer: usize,
    clean: &str,
    corrupted: &str,
    grad: &str,
    shape_bs: &str,
    position_onehot: &str,
    heads: Option<usize>,
) {
    let (h, p) = (names::heads(layer), names::positions(layer));
    emit_named(b, clean, corrupted, grad, shape_bs, position_onehot, heads, &h, &p)
}

/// `emit` into outputs of the given names (AtP*'s GradDrop sweeps).
#[allow(clippy::too_many_arguments)]
pub fn emit_named(
    b: &mut GraphBuilder,
    clean: &str,
    corrupted: &str,
    grad: &str,
    shape_bs: &str,
    position_onehot: &str,
    heads: Option<usize>,
    heads_out: &str,
    positions_out: &str,
) {
    let diff = b.sub(clean, corrupted);
    let p = b.mul(grad, &diff);
    let minus_one = b.const_i64s(&[-1]);
    let bsd = b.concat(&[shape_bs, &minus_one], 0);
    let p3 = b.reshape(&p, &bsd);
    let positions = b.reduce_sum(&p3, &[2], false);
    b.node_named("Identity", &[&positions], positions_out, vec![]);
    let Some(heads) = heads else { return };
    let last = b.matmul(position_onehot, &p3);
    let bhd = b.const_i64s(&[0, heads as i64, -1]);
    let per_head = b.reshape(&last, &bhd);
    let h = b.reduce_sum(&per_head, &[2], false);
    b.node_named("Identity", &[&h], heads_out, vec![]);
}

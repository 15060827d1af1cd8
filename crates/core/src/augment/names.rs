//! Names of the tensors the augmented graph adds: its inputs and outputs.

/// Prefix of every tensor of the clean copy of the forward graph.
pub const CLEAN_PREFIX: &str = "clean/";
/// Input: the one-hot of each pair's last real position, [B, 1, S].
pub const POSITION_ONEHOT: &str = "attrpatch.last_position_onehot";
/// Input: each pair's answers over the vocabulary, weighted for the metric, [B, V, 1].
pub const ANSWER_ONEHOT: &str = "attrpatch.answer_onehot";
/// Input: each pair's weight in the mean metric (1 / B each), [B, 1].
pub const PAIR_WEIGHTS: &str = "attrpatch.pair_weights";
/// Output: the pairs' mean metric on their clean prompts, [1, 1].
pub const CLEAN_LD: &str = "attrpatch.clean_logit_diff";
/// Output: the pairs' mean metric on their corrupted prompts, [1, 1].
pub const CORRUPTED_LD: &str = "attrpatch.corrupted_logit_diff";
/// Output: the normalised metric, 0 by construction; the backward graph differentiates it, [1, 1].
pub const METRIC: &str = "attrpatch.metric";
/// Each pair's logit difference, [1, B].
pub const CLEAN_LDS: &str = "attrpatch.clean_logit_diffs";
/// Each pair's metric on its corrupted prompt, [1, B].
pub const CORRUPTED_LDS: &str = "attrpatch.corrupted_logit_diffs";
/// Shared-rows graph: each pair's row of its clean prompt, int64 [B].
pub const CLEAN_ROWS: &str = "attrpatch.clean_rows";
/// Shared-rows graph: each pair's own row of its corrupted prompt, int64 [B].
pub const CORRUPTED_ROWS: &str = "attrpatch.corrupted_rows";
/// Shared-rows graph: a model input fed one row per distinct sequence, [R, S].
pub fn row_input(model_input: &str) -> String {
    format!("rows.{model_input}")
}
/// The clean copy's name for a model input, fed the clean prompts.
pub fn clean_input(model_input: &str) -> String {
    format!("clean.{model_input}")
}
/// The corrupted copy's name for a model input, fed the corrupted prompts.
pub fn corrupted_input(model_input: &str) -> String {
    format!("corrupted.{model_input}")
}
/// Output (`raw_outputs`): a layer's hook activation on the clean prompts.
pub fn clean_act(layer: usize) -> String {
    format!("attrpatch.clean_act.{layer}")
}
/// Output (`raw_outputs`): a layer's hook activation on the corrupted prompts.
pub fn corrupted_act(layer: usize) -> String {
    format!("attrpatch.corrupted_act.{layer}")
}
/// Output (`raw_outputs`): the metric's gradient with respect to a layer's corrupted activation.
pub fn grad(layer: usize) -> String {
    format!("attrpatch.grad.{layer}")
}
/// Per pair, the heads grid row of a layer (gradient of the graph's metric), [B, H].
pub fn heads(layer: usize) -> String {
    format!("attrpatch.heads.{layer}")
}
/// Per pair, the positions grid row of a layer, [B, S].
pub fn positions(layer: usize) -> String {
    format!("attrpatch.positions.{layer}")
}

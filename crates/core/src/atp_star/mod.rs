//! AtP* (Kramár, Lieberum, Shah, Nanda 2024, arXiv 2403.00745) on the
//! exported graph: attribution patching with its two fixes.
//!
//! - **QK-fix** (`qk_fix`): a head's query or key only moves its attention
//!   pattern; when the softmax saturates, AtP's gradient through it vanishes
//!   and the node looks unimportant. The pattern a patched query or key gives
//!   is recomputed exactly (the model's own scale, masks and biases, `attention`)
//!   and scored through the gradient at the pattern: sum dL/dA (A' - A).
//! - **GradDrop** (`graph`): direct and indirect effects can cancel in the
//!   linear estimate. Sweep l takes the gradient with layer l's residual
//!   writes (attention and MLP outputs) held constant; a node's score is
//!   the mean of its |estimate| over the L - 1 sweeps that can reach it,
//!   (1 / (L - 1)) sum_l |c_l(n)| (the sweep of its own layer gives 0).
//!
//! Sign: as `run`'s grids, an estimate is the change of the normalised
//! metric when the node takes its clean value in the corrupted run
//! (denoising); GradDrop's scores are magnitudes (>= 0), meant for ranking.
//! Cost per batch: the forward pair, the plain backward, two more `Q K^T`
//! products per layer, and with GradDrop the L - 1 sweeps, each from its
//! layer down (about (L - 1) / 2 backward passes in all), in one runtime call.

pub mod attention;
pub mod graph;
pub mod names;
pub mod qk_fix;
mod run;

pub use run::{grad_drop_grids, run_atp_star, AtpStarRun, SiteGrids};

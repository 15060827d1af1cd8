//! The library's facade: everything an embedder (a Rust toolchain, the Python
//! package) needs, with the internals behind it. See the crate's top-level docs.

mod attributor;
pub(crate) mod describe;
mod inspect;
mod pairs;
mod rewrite;
mod source;
mod tokenizer;

pub use crate::inspect::{format_inspection, InspectedHook, Inspection};
pub use attributor::{Attributor, AttributorBuilder};
pub use attrpatch_core::job::LabeledGrid;
pub use attrpatch_core::sanity::check_baselines;
pub use describe::{DimSpec, TensorSpec};
pub use inspect::inspect;
pub use pairs::{pair, read_pairs, tutorial_pairs, Pairs, TokenPairs};
pub use rewrite::{rewrite, AugmentedModel, RewriteOptions};
pub use source::{ModelSource, TokenizerSource, IN_MEMORY_MODEL};
pub use tokenizer::Tokenizer;

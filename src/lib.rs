//! attrpatch: attribution patching on transformer models exported to ONNX.
//!
//! The model is rewritten into one ONNX graph that runs the clean and the
//! corrupted prompts, computes the metric and its symbolic gradient with
//! respect to every hook activation; one run of it gives the tutorial's grids
//! (layer x head, layer x position). Exact activation patching and integrated
//! gradients run on a second rewritten graph, for comparison.
//!
//! The facade:
//! - [`Attributor`]: a model (path, bytes or [`ModelProto`]) with its rewritten
//!   graphs and runtime sessions kept between calls: [`Attributor::attribute`],
//!   [`Attributor::integrated_gradients`], [`Attributor::patch`],
//!   [`Attributor::compare`], [`Attributor::edges`] (edge scores, EAP and
//!   EAP-IG: [`eap::EdgeRun`]), on [`Pairs`] (texts, token ids or the tutorial's).
//! - [`rewrite`]: the augmented model as an ordinary ONNX model
//!   ([`AugmentedModel`]: its metric, hooks, inputs and outputs, bytes, feeds).
//! - [`inspect`]: what attrpatch sees in a model, as data.
//! - [`autodiff::differentiate`]: the symbolic backward alone.
//!
//! ```
//! use attrpatch::{pair, Attributor, Device, Pairs, RuntimeOptions};
//!
//! // The bundled model (GPT-2-style, 3 layers of 4 heads, trained on IOI sentences).
//! let mut job = Attributor::builder("models/ioi-gpt2/model.onnx")
//!     .runtime(RuntimeOptions { device: Device::Cpu, ..Default::default() })
//!     .build()?;
//! let pairs = Pairs::Prompts(vec![
//!     pair("When John and Mary went to the shops, John gave the bag to",
//!          "When John and Mary went to the shops, Mary gave the bag to", " Mary", " John"),
//!     pair("When Tom and James went to the park, James gave the ball to",
//!          "When Tom and James went to the park, Tom gave the ball to", " Tom", " James"),
//! ]);
//! let result = job.attribute(&pairs)?;
//! assert!(result.clean_metric > 0.0 && result.corrupted_metric < 0.0);
//! let heads = result.heads(); // layer x head, normalised: 1 = the whole clean-corrupted gap
//! assert_eq!((heads.rows.len(), heads.cols.len()), (3, 4));
//! // A second call reuses the rewritten graph and the runtime session.
//! let again = job.attribute(&pairs)?;
//! assert_eq!((again.seconds.rewrite, again.seconds.session), (0.0, 0.0));
//! # Ok::<(), attrpatch::Error>(())
//! ```
//!
//! Features: `cli` (the binary: clap, indicatif) and `figures` (PNG/SVG
//! heatmaps and scatter plots: plotters) are on by default; with
//! `--no-default-features` the library runs every job and writes CSV, JSON and
//! report.html. `internals` makes every internal module public (hidden from
//! these docs, no stability promise) for the integration tests and tools.
#![deny(missing_docs)]
// Without `internals`, code only the integration tests and tools reach (and
// the re-exports they use) looks unused; with it everything is public, so
// neither build can tell dead code apart, as before the facade.
#![cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]

/// Declares a module that is `pub` (and hidden from the docs) with the
/// `internals` feature, and `pub(crate)` without it.
macro_rules! internal {
    ($(#[$attr:meta])* mod $name:ident;) => {
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        $(#[$attr])*
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        $(#[$attr])*
        pub(crate) mod $name;
    };
}

mod api;
internal! { mod inspect; }

/// The symbolic backward alone: the `attrpatch-autodiff` crate.
pub use attrpatch_autodiff as autodiff;

/// The modules of the layers below under the names this crate uses
/// (`crate::job`, ...): with `internals` public (hidden from the docs) for the
/// integration tests and tools, without it private.
macro_rules! layers {
    ($($krate:ident $(:: $seg:ident)* => $name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "internals")]
            #[doc(hidden)]
            pub use $krate $(:: $seg)* as $name;
            #[cfg(not(feature = "internals"))]
            use $krate $(:: $seg)* as $name;
        )*
    };
}

layers! {
    attrpatch_onnx::error => error,
    attrpatch_onnx::fsutil => fsutil,
    attrpatch_onnx::normalize => normalize,
    attrpatch_onnx => onnx,
    attrpatch_core::atp_star => atp_star,
    attrpatch_core::augment => augment,
    attrpatch_core::batches => batches,
    attrpatch_core::compare => compare,
    attrpatch_core::edges => edges,
    attrpatch_core::graph_cache => graph_cache,
    attrpatch_core::grids => grids,
    attrpatch_core::hooks => hooks,
    attrpatch_core::job => job,
    attrpatch_core::memory => memory,
    attrpatch_core::merge => merge,
    attrpatch_core::patch => patch,
    attrpatch_core::progress => progress,
    attrpatch_core::prompts => prompts,
    attrpatch_core::recall => recall,
    attrpatch_core::runtime => runtime,
    attrpatch_core::sanity => sanity,
    attrpatch_render => render,
    attrpatch_render::report => report,
}

pub use api::*;
pub use augment::Metric;
pub use batches::PairResult;
pub use compare::{Agreement, CompareOptions, Comparison, Estimate, Miss};
pub use error::{Error, Result, UnsupportedOp};
pub use grids::{Grids, PairGrid};
pub use hooks::{Hook, HookKind};
pub use job::{Dedup, JobResult, Manifest, Method, RowsRun, Shard, Timings};
pub use memory::Sizing;
pub use onnx::guard::in_guarded_call;
pub use onnx::pb::ModelProto;
pub use patch::Estimator;
pub use progress::Progress;
pub use prompts::PromptPair;
pub use runtime::{Device, RuntimeKind, RuntimeOptions, Value};
pub use sanity::BaselineCheck;

/// Edge attribution patching (EAP, EAP-IG), circuits and their faithfulness by
/// exact edge patching, and EAP against exact edge patching: the `edges` and
/// `compare --edges` commands as library calls. Names and definitions: the book, docs/src/edges.md.
pub mod eap {
    pub use crate::edges::compare::{
        compare_edges, report as comparison_report, EdgeAgreement, EdgeComparison, EdgeMiss,
    };
    pub use crate::edges::convention::{resolve as resolve_method, Ablation, Convention, Method, DEFAULT_IG_STEPS};
    pub use crate::edges::faithfulness::{
        check_threshold, circuit, faithfulness, faithfulness_with, k_for_threshold, sweep, write as write_faithfulness,
        Faithfulness, Point,
    };
    pub use crate::edges::mib::{
        areas as mib_areas, edge_name as mib_edge_name, importances as mib_importances, ks as mib_ks, read_importances,
        write_importances, Imported, MibCurve, FRACTIONS as MIB_FRACTIONS,
    };
    pub use crate::edges::patching::Intervention;
    pub use crate::edges::run::{check_method, run_edges_method, EdgeMethod};
    pub use crate::edges::scores::{node_scores, write as write_edges};
    pub use crate::edges::{run_edges, run_edges_detailed, EdgeRun, EdgeScore, EdgeScores, NodeScore};
    pub use crate::edges::{Qkv, Reader, Topology, Writer};
    pub use crate::render::files::edge_comparison::write as write_comparison;
    /// The circuit figure (PNG, SVG) and the faithfulness curve.
    #[cfg(feature = "figures")]
    pub use crate::render::{
        write_circuit, write_faithfulness as draw_faithfulness, write_faithfulness_mib as draw_faithfulness_mib,
    };
    pub use crate::render::{write_report_html_with_edges, EdgeReport};
}

/// AtP* (the QK-fix of queries and keys, GradDrop): the `run --method
/// atp-star` job as a library call. Definitions: the book, docs/src/ground-truth.md.
pub mod atp {
    pub use crate::atp_star::{grad_drop_grids, run_atp_star, AtpStarRun, SiteGrids};
    pub use crate::render::files::atp_star::write;
}

/// Jobs on files, as the CLI runs them: a model file, a JSONL prompt file,
/// shards and resumable batches in an output folder, and the files written
/// for a result (grids as CSV and JSON, report.html, and with the `figures`
/// feature PNG/SVG heatmaps and scatter plots).
pub mod jobs {
    pub use crate::compare::{compare, report as comparison_report};
    pub use crate::graph_cache::{default_dir as default_cache_dir, CacheUse};
    pub use crate::job::{run_job, Dedup, JobOptions, RowsRun, DEFAULT_BATCH_SIZE};
    pub use crate::memory::MaxMemory;
    pub use crate::merge::merge;
    pub use crate::patch::diagnostic::{
        run as run_diagnostic, write as write_diagnostic, Diagnostic, DiagnosticOptions,
        DEFAULT_SEED as DIAGNOSTIC_SEED, DEFAULT_TOP as DIAGNOSTIC_TOP,
    };
    pub use crate::patch::run_grouped as run_patching_grouped;
    pub use crate::patch::run_sized as run_patching;
    pub use crate::patch::staged::Groups as LayerGroups;
    pub use crate::render::files::comparison::write as write_comparison;
    pub use crate::render::write_report_html_with_diagnostic;
    pub use crate::report::write_results;
}

//! attrpatch-render: what a person reads. Writing attribution grids: heatmaps and scatter plots (drawn with plotters,
//! each as PNG and SVG), CSV, JSON, and the self-contained report.html; for
//! edge scores, the circuit figure and the faithfulness curve; for `compare`,
//! the recall curves; the result files of a job (`report`) and of AtP*,
//! `compare` and `compare --edges` (`files`).
//!
//! Layers: this crate draws what `attrpatch-core` computes (its types are the
//! input); the core never calls it, the `attrpatch` facade and binary do.
#![deny(missing_docs)]

// The figures (plotters) only with the `figures` feature; the data files and
// report.html (drawn in the browser, the circuit included) always.
pub mod files;
pub mod report;

#[cfg(feature = "figures")]
mod circuit;
mod circuit_layout;
mod colour;
mod data;
mod edges_data;
#[cfg(feature = "figures")]
mod faithfulness;
#[cfg(feature = "figures")]
mod figure;
#[cfg(feature = "figures")]
mod font;
#[cfg(feature = "figures")]
mod heatmap;
mod labels;
#[cfg(feature = "figures")]
mod pen;
#[cfg(feature = "figures")]
mod recall;
mod report_html;
#[cfg(feature = "figures")]
mod scatter;
#[cfg(feature = "figures")]
mod ticks;
// The tests' temp folders (one file for every crate's tests: see it).
#[cfg(test)]
#[path = "../../onnx/src/test_dir.rs"]
mod test_dir;

#[cfg(feature = "figures")]
pub use circuit::write_circuit;
pub use colour::Colour;
pub use data::{grid_json, write_csv, Grid};
pub use edges_data::{EdgeReport, K_MAX};
#[cfg(feature = "figures")]
pub use faithfulness::{write_faithfulness, write_faithfulness_mib};
#[cfg(feature = "figures")]
pub use heatmap::{write_heatmap, write_heatmaps};
pub use labels::subtitle;
#[cfg(feature = "figures")]
pub use recall::{recall_svg, write_recall};
pub use report_html::{
    write_compare_report_html, write_report_html, write_report_html_with_diagnostic, write_report_html_with_edges,
};
#[cfg(feature = "figures")]
pub use scatter::{write_scatter, Scatter, Series, COLOURS};

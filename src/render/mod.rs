//! Writing attribution grids: heatmaps and scatter plots (drawn with plotters,
//! each as PNG and SVG), CSV, JSON, and the self-contained report.html; for
//! edge scores, the circuit figure and the faithfulness curve.

mod circuit;
mod circuit_layout;
mod colour;
mod data;
mod edges_data;
mod faithfulness;
mod figure;
mod font;
mod heatmap;
mod labels;
mod pen;
mod report_html;
mod scatter;
mod ticks;

pub use circuit::write_circuit;
pub use colour::Colour;
pub use data::{grid_json, write_csv, Grid};
pub use edges_data::{EdgeReport, K_MAX};
pub use faithfulness::write_faithfulness;
pub use heatmap::{write_heatmap, write_heatmaps};
pub use labels::subtitle;
pub use report_html::{write_compare_report_html, write_report_html, write_report_html_with_edges};
pub use scatter::{write_scatter, Scatter, Series, COLOURS};

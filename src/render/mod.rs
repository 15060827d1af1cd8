//! Writing attribution grids: PNG heatmaps (plotly `px.imshow` look), CSV and JSON.

mod data;
mod heatmap;

pub use data::{grid_json, write_csv, Grid};
pub use heatmap::write_heatmap_png;

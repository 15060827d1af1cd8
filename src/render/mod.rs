//! Writing attribution grids: PNG heatmaps (plotly `px.imshow` look), CSV and JSON.

mod data;
mod draw;
mod heatmap;
mod scatter;

pub use data::{grid_json, write_csv, Grid};
pub use heatmap::{write_heatmap_png, write_heatmaps_png};
pub use scatter::{write_scatter_png, Scatter, Series, COLOURS};

//! `compare --edges`'s files: exact and each estimate's edge tables,
//! edge-compare.json and, with `figures`, the scatter plot against exact edge patching.

#[cfg(feature = "figures")]
use crate::{write_scatter, Scatter, Series, COLOURS};
#[cfg(feature = "figures")]
use attrpatch_core::compare::fmt_corr;
#[cfg(feature = "figures")]
use attrpatch_core::edges::compare::label;
use attrpatch_core::edges::compare::EdgeComparison;
use attrpatch_core::edges::scores;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::fsutil::write_atomic;
use std::path::{Path, PathBuf};

/// Writes exact/edges.{json,csv}, each estimate's edges.{json,csv} (eap/,
/// eap-ig/), edge-compare.json and the scatter plot scatter-edges.png.
pub fn write(c: &EdgeComparison, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = vec![];
    let mut tables = vec![("exact", &c.exact)];
    tables.extend(c.estimates.iter().map(|s| (if s.ig_steps > 1 { "eap-ig" } else { "eap" }, s)));
    for (dir, s) in tables {
        let d = out.join(dir);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        scores::write(&d, s)?;
        written.extend([d.join("edges.json"), d.join("edges.csv")]);
    }
    let summary = serde_json::json!({
        "metric": c.exact.metric,
        "edges": c.exact.edges.len(),
        "exact": { "rows": c.exact_rows, "runtime_calls": c.exact_calls, "seconds": c.exact_seconds },
        "estimates": c.agreements,
    });
    let path = out.join("edge-compare.json");
    let text = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Runtime(format!("edge-compare.json: {e}")))?;
    write_atomic(&path, &text)?;
    written.push(path);
    #[cfg(feature = "figures")]
    written.extend(draw_scatter(c, out)?);
    Ok(written)
}

/// scatter-edges.png/.svg: each estimate against exact edge patching.
#[cfg(feature = "figures")]
fn draw_scatter(c: &EdgeComparison, out: &Path) -> Result<Vec<PathBuf>> {
    let names: Vec<String> = c.exact.edges.iter().map(|e| format!("{}->{}", e.from, e.to)).collect();
    let series = c
        .estimates
        .iter()
        .zip(&c.agreements)
        .zip(COLOURS)
        .map(|((s, a), colour)| Series {
            name: format!("{} (r = {})", label(a), fmt_corr(a.pearson)),
            colour,
            points: s.edges.iter().zip(&c.exact.edges).map(|(e, x)| (e.score, x.score)).collect(),
            point_names: names.clone(),
        })
        .collect();
    let value = format!("Norm. {}", c.exact.metric);
    let plot = Scatter {
        title: "edges: estimate vs exact edge patching".into(),
        subtitle: format!("{} edges, {} layers x {} heads", c.exact.edges.len(), c.exact.layers, c.exact.heads),
        x_label: format!("Estimate ({value})"),
        y_label: format!("Exact ({value})"),
        series,
    };
    write_scatter(&plot, &out.join("scatter-edges.png"))
}

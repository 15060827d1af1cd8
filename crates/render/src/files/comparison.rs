//! `compare`'s files: each method's results in its own folder, compare.json,
//! report.html and, with `figures`, the heatmaps on one colour scale, the
//! scatter plots against exact patching and the recall curves.

use crate::report::write_results;
#[cfg(feature = "figures")]
use crate::report::{heads_grid, positions_grid};
#[cfg(feature = "figures")]
use crate::{write_heatmaps, write_recall, write_scatter, Grid, Scatter, Series, COLOURS};
#[cfg(feature = "figures")]
use attrpatch_core::compare::{fmt_corr, Agreement, Estimate};
use attrpatch_core::compare::{summary_json, Comparison};
#[cfg(feature = "figures")]
use attrpatch_core::job::JobResult;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::fsutil::write_atomic;
use std::path::{Path, PathBuf};

/// Writes every method's results in its own folder, then the comparison files.
pub fn write(c: &Comparison, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = write_results(&c.exact, &out.join("exact"))?;
    for e in &c.estimates {
        written.extend(write_results(&e.result, &out.join(e.key))?);
    }
    #[cfg(feature = "figures")]
    written.extend(write_figures(c, out)?);
    let path = out.join("compare.json");
    let text = serde_json::to_vec_pretty(&summary_json(c))
        .map_err(|e| Error::Runtime(format!("serialising compare.json: {e}")))?;
    write_atomic(&path, &text)?;
    written.push(path);
    written.push(crate::write_compare_report_html(c, out)?);
    Ok(written)
}

/// The comparison's figures: per grid, every method's heatmap on one colour
/// scale and the scatter plot of each estimate against exact patching.
#[cfg(feature = "figures")]
fn write_figures(c: &Comparison, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = vec![];
    let value = format!("Norm. {}", c.exact.manifest.metric.label());
    type GridOf = fn(&JobResult) -> Grid;
    type AgreementOf = fn(&Estimate) -> &Option<Agreement>;
    let kinds: [(&str, GridOf, AgreementOf); 2] =
        [("heads", heads_grid, |e| &e.heads), ("positions", positions_grid, |e| &e.positions)];
    for (name, grid_of, agreement_of) in kinds {
        let compared: Vec<&Estimate> = c.estimates.iter().filter(|e| agreement_of(e).is_some()).collect();
        if compared.is_empty() {
            continue;
        }
        // Panels titled by method only: the file name says which grid.
        let panel = |r: &JobResult| Grid { title: r.manifest.method.label(), ..grid_of(r) };
        let mut grids: Vec<Grid> = compared.iter().map(|e| panel(&e.result)).collect();
        grids.push(panel(&c.exact));
        let exact_grid = grid_of(&c.exact);
        let title = format!("{name}: estimates and exact activation patching on one colour scale");
        let path = out.join(format!("compare-{name}.png"));
        written.extend(write_heatmaps(&grids.iter().collect::<Vec<_>>(), &title, &exact_grid.subtitle, &path)?);
        // Each cell's name for labelling the largest misses: "L2 H3" or "L0 9 ' John'".
        let cell_names: Vec<String> = (0..exact_grid.values.len())
            .flat_map(|l| {
                let g = &exact_grid;
                (0..g.col_names.len()).map(move |i| match g.tokens.get(i) {
                    Some(t) => format!("L{l} {i} '{t}'"),
                    None => format!("L{l} H{i}"),
                })
            })
            .collect();
        let series = compared
            .iter()
            .zip(COLOURS)
            .map(|(e, colour)| {
                let a = agreement_of(e).as_ref().unwrap();
                let points = grid_of(&e.result)
                    .values
                    .iter()
                    .flatten()
                    .zip(exact_grid.values.iter().flatten())
                    .map(|(&x, &y)| (x, y))
                    .collect();
                Series {
                    name: format!("{} (r = {})", e.result.manifest.method.label(), fmt_corr(a.pearson)),
                    colour,
                    points,
                    point_names: cell_names.clone(),
                }
            })
            .collect();
        let plot = Scatter {
            title: format!("{name}: estimate vs exact activation patching"),
            subtitle: exact_grid.subtitle.clone(),
            x_label: format!("Estimate ({value})"),
            y_label: format!("Exact ({value})"),
            series,
        };
        written.extend(write_scatter(&plot, &out.join(format!("scatter-{name}.png")))?);
    }
    for g in &c.recall {
        let subtitle = grid_of_name(&g.grid, &c.exact).subtitle;
        written.extend(write_recall(g, &subtitle, &out.join(format!("recall-{}.png", g.grid)))?);
    }
    Ok(written)
}

/// The exact result's grid of this name ("heads" or "positions"), for its labels.
#[cfg(feature = "figures")]
fn grid_of_name(name: &str, r: &JobResult) -> Grid {
    if name == "heads" {
        heads_grid(r)
    } else {
        positions_grid(r)
    }
}

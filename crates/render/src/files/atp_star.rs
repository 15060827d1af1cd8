//! AtP*'s files beside `run`'s: atp_star.json (every node type under AtP,
//! the QK-fix and AtP*) and the AtP* grids of queries and keys as CSV (and
//! PNG/SVG with `figures`). `run`'s own files hold the head outputs' AtP*.

use crate::report::{heads_grid_of, positions_grid_of};
use attrpatch_core::atp_star::{AtpStarRun, SiteGrids};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::fsutil::write_atomic;
use std::path::{Path, PathBuf};

/// Writes atp_star.json and the query and key grids in `out_dir`; returns the files.
pub fn write(r: &AtpStarRun, out_dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut written = vec![];
    let job = &r.result;
    for (site, grids) in [("query", &r.query), ("key", &r.key)] {
        let what = match site {
            "query" => ("queries, last position", "queries"),
            _ => ("keys, summed over key positions", "keys"),
        };
        let heads = heads_grid_of(
            job,
            &grids.atp_star,
            &format!("{site}_heads"),
            format!("{} over attention heads' {}", job.manifest.method.label(), what.0),
        );
        let positions = positions_grid_of(
            job,
            &grids.atp_star,
            &format!("{site}_positions"),
            format!("{} over token positions ({}, summed over heads)", job.manifest.method.label(), what.1),
        );
        for g in [heads, positions] {
            #[cfg(feature = "figures")]
            written.extend(crate::write_heatmap(&g, &out_dir.join(format!("{}.png", g.name)))?);
            let csv = out_dir.join(format!("{}.csv", g.name));
            crate::write_csv(&g, &csv)?;
            written.push(csv);
        }
    }
    let site = |s: &SiteGrids| serde_json::json!({ "atp": s.atp, "qk_fix": s.qk_fix, "atp_star": s.atp_star });
    let json = serde_json::json!({
        "method": job.manifest.method,
        "grad_drop_sweeps": r.sweeps,
        "sign": "denoising: the change of the normalised metric when the node takes its clean value in the \
                 corrupted run; atp_star with GradDrop holds magnitudes (>= 0)",
        "heads": "output: each head at the last position; query: each head's query at the last position; \
                  key: each head's keys, summed over key positions",
        "positions": "every head's output, query or key at the position, summed over heads",
        "output": site(&r.output),
        "query": site(&r.query),
        "key": site(&r.key),
    });
    let path = out_dir.join("atp_star.json");
    let text =
        serde_json::to_vec_pretty(&json).map_err(|e| Error::Runtime(format!("serialising atp_star.json: {e}")))?;
    write_atomic(&path, &text)?;
    written.push(path);
    Ok(written)
}

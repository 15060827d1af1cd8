//! ONNX Runtime's optimised graph kept in a `--cache` entry: the first session
//! optimises the rewritten graph and saves the result (its weights in a data
//! file beside it); later sessions load that with graph optimisation off, which
//! is most of a session's set-up. A saved graph may hold kernels fused for this
//! CPU, so it is kept per ONNX Runtime version and for the CPU provider only.

use std::path::{Path, PathBuf};

/// The saved graph's file in its folder.
pub const GRAPH: &str = "model.onnx";
/// Its weights' file, beside it.
pub const DATA: &str = "model.onnx.data";
/// The sizes of both, written last: a folder without it (or with other sizes) is unusable.
const SIZES: &str = "sizes.json";

/// The folder in cache entry `entry` for the ONNX Runtime library `lib` (None
/// when its version cannot be read from the file name).
pub fn folder(entry: &Path, lib: &Path) -> Option<PathBuf> {
    let (a, b, c) = super::ort_lib::version_of(lib)?;
    Some(entry.join(format!("ort-{a}.{b}.{c}-cpu")))
}

/// The saved graph in `dir` when it is whole: both files there, with the sizes recorded.
pub fn complete(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read(dir.join(SIZES)).ok()?;
    let want: Vec<(String, u64)> = serde_json::from_slice(&text).ok()?;
    let whole = want.len() == 2
        && want.iter().all(|(f, n)| std::fs::metadata(dir.join(f)).is_ok_and(|m| m.is_file() && m.len() == *n));
    whole.then(|| dir.join(GRAPH))
}

/// The temporary folder a session saves into before `finish` makes it `dir`.
pub fn staging(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Records the saved files' sizes and moves the staging folder to `dir` (one rename).
pub fn finish(staging: &Path, dir: &Path) -> std::io::Result<()> {
    let mut sizes = vec![];
    for f in [GRAPH, DATA] {
        sizes.push((f.to_string(), std::fs::metadata(staging.join(f))?.len()));
    }
    std::fs::write(staging.join(SIZES), serde_json::to_vec(&sizes).unwrap_or_default())?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(staging, dir)
}

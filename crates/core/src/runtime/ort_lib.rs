//! Finding the ONNX Runtime shared library. ort is built with `load-dynamic`
//! (no binary downloads at build time), so the library is found at run time:
//! `--ort-lib`, `ORT_DYLIB_PATH`, the project's `.ort/` folder (filled by
//! tools/fetch-ort.sh), or an installed Python onnxruntime(-gpu) package.

use attrpatch_onnx::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A file, or a folder holding libonnxruntime.so*.
fn resolve(p: &Path) -> Option<PathBuf> {
    if p.is_file() {
        return Some(p.to_path_buf());
    }
    if !p.is_dir() {
        return None;
    }
    for name in ["libonnxruntime.so", "libonnxruntime.so.1", "libonnxruntime.dylib", "onnxruntime.dll"] {
        let f = p.join(name);
        if f.is_file() {
            return Some(f);
        }
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(p)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
        .collect();
    versioned.sort();
    versioned.pop()
}

fn python_package_dirs() -> Vec<PathBuf> {
    let script = "import importlib.util as u, os\nfor m in ('onnxruntime',):\n s=u.find_spec(m)\n if s and s.origin: print(os.path.join(os.path.dirname(s.origin),'capi'))";
    let mut out = vec![];
    for py in ["python3", "python"] {
        if let Ok(o) = std::process::Command::new(py).args(["-c", script]).output() {
            if o.status.success() {
                out.extend(String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from));
                break;
            }
        }
    }
    out
}

/// The label of an explicit library path (the binary names its flag).
const EXPLICIT: &str = "the ONNX Runtime library path";

/// Where to look, in order, with a label for the message when none works.
fn candidates(explicit: Option<&Path>) -> Vec<(String, PathBuf)> {
    let mut c = vec![];
    if let Some(p) = explicit {
        c.push((EXPLICIT.to_string(), p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        c.push(("ORT_DYLIB_PATH".to_string(), PathBuf::from(p)));
    }
    // The workspace root (this crate is crates/core), where tools/fetch-ort.sh puts it.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap_or(Path::new("."));
    c.push(("project folder".to_string(), workspace.join(".ort")));
    c.push(("current folder".to_string(), PathBuf::from(".ort")));
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            c.push(("beside the executable".to_string(), dir.join(".ort")));
        }
    }
    for d in python_package_dirs() {
        c.push(("Python onnxruntime package".to_string(), d));
    }
    c
}

/// The ONNX Runtime library to load: the explicit path or ORT_DYLIB_PATH, which must hold one, else the first candidate
/// found; the error lists the places tried.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    let cands = candidates(explicit);
    // An explicit choice that does not exist is an error, not a fallback.
    if let Some((label, p)) = cands.first().filter(|(l, _)| l == EXPLICIT || l == "ORT_DYLIB_PATH") {
        return resolve(p).ok_or_else(|| {
            Error::Runtime(format!(
                "{label} points to {}, which is not an ONNX Runtime library or a folder holding one",
                p.display()
            ))
        });
    }
    for (_, p) in &cands {
        if let Some(f) = resolve(p) {
            return Ok(f);
        }
    }
    let tried: Vec<String> = cands.iter().map(|(l, p)| format!("  {l}: {}", p.display())).collect();
    Err(Error::Runtime(format!(
        "ONNX Runtime library not found. Tried:\n{}\n  a Python package: python3 -c 'import onnxruntime' found none\n\
         Get it with `tools/fetch-ort.sh` (downloads the onnxruntime wheel from PyPI into .ort/), \
         or `pip install onnxruntime`, or point the ONNX Runtime library path / ORT_DYLIB_PATH at libonnxruntime.so; \
         or use the tract runtime",
        tried.join("\n")
    )))
}

/// The version in a library file's name after symbolic links are followed
/// (`libonnxruntime.so.1.32.0`, as the PyPI wheels and tools/fetch-ort.sh name
/// it), or None when the name does not carry one.
pub fn version_of(path: &Path) -> Option<(u32, u32, u32)> {
    let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let name = real.file_name()?.to_str()?;
    let rest = name.strip_prefix("libonnxruntime.so.").or_else(|| name.strip_prefix("libonnxruntime."))?;
    let rest = rest.strip_suffix(".dylib").unwrap_or(rest);
    let mut parts = rest.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Loads the library once per process; returns its path and the environment.
pub fn init(explicit: Option<&Path>) -> Result<(&'static Path, ort::environment::Environment)> {
    static LOADED: OnceLock<std::result::Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();
    let r = LOADED.get_or_init(|| {
        let path = locate(explicit).map_err(|e| e.to_string())?;
        let env = ort::init_from(&path)
            .map_err(|e| format!("could not load ONNX Runtime from {}: {e}", path.display()))?
            .with_name("attrpatch")
            .build()
            .map_err(|e| format!("could not start ONNX Runtime from {}: {e}", path.display()))?;
        Ok((path, env))
    });
    match r {
        Ok((p, env)) => {
            same_library(p, explicit)?;
            Ok((p.as_path(), env.clone()))
        }
        Err(e) => Err(Error::Runtime(e.clone())),
    }
}

/// A process loads one ONNX Runtime library: a later call naming another one
/// is an error, not a silent reuse of the first.
fn same_library(loaded: &Path, explicit: Option<&Path>) -> Result<()> {
    let Some(asked) = explicit else { return Ok(()) };
    let asked_file = resolve(asked).ok_or_else(|| {
        Error::Runtime(format!(
            "{EXPLICIT} points to {}, which is not an ONNX Runtime library or a folder holding one",
            asked.display()
        ))
    })?;
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if real(&asked_file) == real(loaded) {
        return Ok(());
    }
    Err(Error::Runtime(format!(
        "this process already loaded ONNX Runtime from {}; it cannot load a second library ({} was asked for). \
         Use the same library for every job of a process, or start a new process (in Python, a new interpreter) \
         for {}",
        loaded.display(),
        asked_file.display(),
        asked.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_the_file_a_link_points_to() {
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-ortver-{}", std::process::id()));
        let real = dir.join("libonnxruntime.so.1.31.1");
        std::fs::write(&real, b"").unwrap();
        let link = dir.join("libonnxruntime.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(version_of(&link), Some((1, 31, 1)));
        assert_eq!(version_of(Path::new("/x/libonnxruntime.1.32.0.dylib")), Some((1, 32, 0)));
        assert_eq!(version_of(Path::new("/x/libonnxruntime.so")), None);
        assert_eq!(version_of(Path::new("/x/onnxruntime.dll")), None);
    }

    #[test]
    fn asking_for_a_second_library_after_one_is_loaded_is_an_error() {
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-ortsecond-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("libonnxruntime.so.1.32.0"), b"").unwrap();
        }
        let loaded = a.join("libonnxruntime.so.1.32.0");
        assert!(same_library(&loaded, None).is_ok());
        assert!(same_library(&loaded, Some(&a)).is_ok(), "the folder of the loaded library is the same library");
        let err = same_library(&loaded, Some(&b)).unwrap_err().to_string();
        assert!(err.contains("already loaded") && err.contains(&b.display().to_string()), "{err}");
        let err = same_library(&loaded, Some(&dir.join("missing"))).unwrap_err().to_string();
        assert!(err.contains("not an ONNX Runtime library"), "{err}");
    }
}

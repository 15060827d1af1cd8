//! Shared by the integration tests: fixture paths, the PyTorch reference,
//! and the tolerance the grids are held to.
#![allow(dead_code)]

pub mod by_hand;
pub mod rng;
pub mod synth;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// The guard every crate's tests use for their temp folders (removed on success, kept on failure).
#[path = "../../crates/onnx/src/test_dir.rs"]
mod test_dir;
pub use test_dir::TestDir;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// An empty folder of the system temp dir, new on every call: keyed on the
/// process, a per-call counter and `name` (which only makes it readable), so
/// tests running in parallel under the same name never share or delete each
/// other's folders. The guard removes it when dropped, unless the test is
/// failing (panicking): then it is kept for a look, and its path printed.
/// Bind it to a variable that lives as long as the folder is used (by this
/// test or a child process), never to a temporary.
pub fn fresh_dir(name: &str) -> TestDir {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    TestDir::new(&format!("attrpatch-test-{}-{n}-{name}", std::process::id()))
}

/// The bug: the folder was keyed on process id + name, and "out" (three
/// tests) or "pout" (five) were removed by one test while another wrote in it.
#[test]
fn regression_fresh_dir_was_shared_by_tests_of_the_same_name() {
    let a = fresh_dir("out");
    std::fs::write(a.join("results.json"), "{}").unwrap();
    let b = fresh_dir("out");
    assert_ne!(a.path(), b.path());
    assert!(a.join("results.json").is_file(), "a second fresh_dir(\"out\") removed the first one's files");
    // Dropping one guard removes only its own folder.
    let b_path = b.to_path_buf();
    drop(b);
    assert!(!b_path.exists() && a.join("results.json").is_file(), "dropping b's guard touched a's folder");
}

/// The suite used to leave every fresh_dir behind (GBs of /tmp): the guard
/// removes its folder when it drops on success, and keeps it (a failed test's
/// files, to inspect) when it drops while the thread panics.
#[test]
fn fresh_dir_is_removed_on_success_and_kept_on_failure() {
    let ok = fresh_dir("drop-ok");
    let ok_path = ok.to_path_buf();
    std::fs::create_dir(ok.join("sub")).unwrap();
    std::fs::write(ok.join("sub/file"), "x").unwrap();
    assert!(ok_path.join("sub/file").is_file());
    drop(ok);
    assert!(!ok_path.exists(), "{} outlived its guard", ok_path.display());

    let kept_path = std::panic::catch_unwind(|| {
        let failing = fresh_dir("drop-panic");
        std::fs::write(failing.join("evidence"), "x").unwrap();
        // What the test harness gets back: the path, inside a failing test's panic payload.
        std::panic::panic_any(failing.to_path_buf());
    })
    .expect_err("the closure panics")
    .downcast::<PathBuf>()
    .expect("the panic payload is the folder's path");
    let kept = kept_path.join("evidence").is_file();
    std::fs::remove_dir_all(&*kept_path).ok();
    assert!(kept, "{} was removed although its test panicked", kept_path.display());
}

pub fn bundled_model() -> PathBuf {
    root().join("models/gpt2-tiny-random.onnx")
}
pub fn legacy_op14() -> PathBuf {
    bundled_model()
}
pub fn dynamo_op18() -> PathBuf {
    root().join("tests/fixtures/tiny-gpt2-rb-dynamo-op18.onnx")
}
pub fn tokenizer() -> PathBuf {
    root().join("models/tokenizer.json")
}

pub struct Reference {
    pub heads: Vec<Vec<f64>>,
    pub positions: Vec<Vec<f64>>,
    pub clean_metric: f64,
    pub corrupted_metric: f64,
}

pub fn reference(file: &str) -> Reference {
    let path = root().join("tests/fixtures").join(file);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let grid = |k: &str| -> Vec<Vec<f64>> { serde_json::from_value(v[k].clone()).unwrap() };
    Reference {
        heads: grid("heads"),
        positions: grid("positions"),
        clean_metric: v["clean_logit_diff"].as_f64().unwrap(),
        corrupted_metric: v["corrupted_logit_diff"].as_f64().unwrap(),
    }
}

/// The core issue's tolerance: 1e-3 relative, or 1e-6 absolute near zero.
pub const RTOL: f64 = 1e-3;
pub const ATOL: f64 = 1e-6;

pub fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= (RTOL * want.abs()).max(ATOL)
}

/// Asserts two grids agree within tolerance; returns the largest relative error.
pub fn assert_grid_close(what: &str, got: &[Vec<f64>], want: &[Vec<f64>]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: layer count");
    let mut worst = 0f64;
    for (l, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: width of layer {l}");
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(close(*a, *b), "{what}[{l}][{i}]: got {a}, want {b}");
            worst = worst.max((a - b).abs() / b.abs().max(ATOL / RTOL));
        }
    }
    worst
}

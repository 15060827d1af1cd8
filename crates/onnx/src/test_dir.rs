//! Test-only: a folder of the system temp dir that lives as long as its guard.
//!
//! One file for every crate's tests: attrpatch-onnx declares it under `cfg(test)`, the crates
//! above and the integration tests (tests/common) include it with `#[path]` under `cfg(test)`, so
//! no library build carries it and no feature splits the tests' build from the CLI's.
// Each includer uses a part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// A fresh, empty folder `std::env::temp_dir()/name`, removed when the guard drops, unless the
/// thread is panicking (a failed test): then it is kept, and where is printed, for a look.
///
/// Bind it to a variable held to the end of the test (`let dir = TestDir::new(..)`), not to a
/// temporary (`TestDir::new(..).join(..)` removes the folder at the end of that statement), and
/// keep it while a child process or a later line still reads the folder.
#[derive(Debug)]
pub struct TestDir(PathBuf);

impl TestDir {
    /// Creates `temp_dir()/name` empty (removing what an earlier run left there).
    pub fn new(name: &str) -> TestDir {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TestDir(path)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: kept its folder {}", self.0.display());
            return;
        }
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: could not remove the test folder {}: {e}", self.0.display()),
        }
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<OsStr> for TestDir {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

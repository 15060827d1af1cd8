//! attrpatch._attrpatch: the native half of the Python package (skeleton; the bindings follow the facade).

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _attrpatch(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

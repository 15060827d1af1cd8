//! attrpatch errors as Python exceptions: the classes are those of attrpatch._errors (defined in
//! Python, so checks done in Python raise the same ones), the message is the CLI's.

use attrpatch::Error;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The attrpatch._errors class for an error: input, model, backend or numeric.
fn class_name(e: &Error) -> &'static str {
    match e {
        Error::Input(_) | Error::Io { .. } => "InputError",
        Error::Model(_) | Error::Unsupported(_) | Error::UnsupportedOps(_) => "ModelError",
        Error::Runtime(_) => "BackendError",
        Error::Numeric(_) => "NumericError",
        #[allow(unreachable_patterns)] // the facade may add kinds: they are still attrpatch.Error
        _ => "Error",
    }
}

/// The Python exception for `e`, carrying its message as the CLI prints it.
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let class = py
        .import("attrpatch._errors")
        .and_then(|m| m.getattr(class_name(&e)))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(c) => PyErr::from_type(c, e.to_string()),
        // The package is broken (attrpatch._errors missing): still say what failed.
        Err(import) => pyo3::exceptions::PyRuntimeError::new_err(format!("{e} (and attrpatch._errors: {import})")),
    }
}

//! One error type for the library. Every message names the thing it is about
//! (file, node, op, tensor) and what was expected, so the CLI can print it as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The model file is not what we can work with (bad protobuf, missing pieces).
    #[error("{0}")]
    Model(String),
    /// An op, attribute or element type on the path we need that we do not handle.
    #[error("{0}")]
    Unsupported(String),
    /// Bad user input: prompts, answers, options, tokenizer.
    #[error("{0}")]
    Input(String),
    /// The runtime (ONNX Runtime or tract) failed or is missing.
    #[error("{0}")]
    Runtime(String),
    /// NaN/inf or a division by zero in the numbers we computed.
    #[error("{0}")]
    Numeric(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

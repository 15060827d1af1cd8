//! One error type for the library. Every message names the thing it is about
//! (file, node, op, tensor) and what was expected, so the CLI can print it as is.

use std::path::PathBuf;

/// Every error of the library; `Display` is the message the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The model file is not what we can work with (bad protobuf, missing pieces).
    #[error("{0}")]
    Model(String),
    /// An op, attribute or element type on the path we need that we do not handle.
    #[error("{0}")]
    Unsupported(String),
    /// Nodes on the path from the hooks to the metric that cannot be
    /// differentiated: every one of them, so a user sees the whole list at once.
    #[error("{}", describe_ops(.0))]
    UnsupportedOps(Vec<UnsupportedOp>),
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

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One node the differentiator cannot handle: its op (and domain), its name,
/// and why (`reason` None: no gradient rule exists for the op at all).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnsupportedOp {
    /// The op type.
    pub op: String,
    /// Empty for the default ONNX domain.
    pub domain: String,
    /// The node's name.
    pub node: String,
    /// Why its rule does not apply; None: the op has no rule.
    pub reason: Option<String>,
}

impl UnsupportedOp {
    /// `domain:op`, or `op` in the default domain.
    pub fn qualified_op(&self) -> String {
        if self.domain.is_empty() || self.domain == "ai.onnx" {
            self.op.clone()
        } else {
            format!("{}:{}", self.domain, self.op)
        }
    }
}

impl std::fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            None => write!(f, "no gradient rule for op '{}' (node '{}')", self.qualified_op(), self.node),
            Some(r) => write!(f, "gradient of '{}' (node '{}'): {r}", self.qualified_op(), self.node),
        }
    }
}

fn describe_ops(ops: &[UnsupportedOp]) -> String {
    const PATH: &str = "on the path from the hooks to the metric";
    match ops {
        [one] if one.reason.is_none() => format!("{one}, which is {PATH}"),
        [one] => one.to_string(),
        _ => {
            let mut s = format!("{} nodes {PATH} cannot be differentiated:", ops.len());
            for o in ops {
                s.push_str(&format!("\n  {o}"));
            }
            s
        }
    }
}
impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// `bail!(Kind, "fmt", args..)` returns early with `Error::Kind(format!(..))`.
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::$kind(format!($($arg)*)))
    };
}
pub(crate) use bail;

//! Describing a model's inputs and outputs: name, element type and shape,
//! with symbolic dims kept by name, in a form that serialises.

use attrpatch_onnx::facts::{Dim, TensorFact};
use attrpatch_onnx::pb::{type_proto, ValueInfoProto};
use serde::{Deserialize, Serialize};

/// One dimension of a tensor's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DimSpec {
    /// A fixed size.
    Known(i64),
    /// A symbolic size, by name or expression (e.g. `batch`, `sequence`).
    Symbolic(String),
    /// Neither declared nor inferred (serialised as `null`).
    Unknown,
}

impl From<&Dim> for DimSpec {
    fn from(d: &Dim) -> Self {
        match d {
            Dim::Known(v) => DimSpec::Known(*v),
            Dim::Sym(s) => DimSpec::Symbolic(s.clone()),
            Dim::Unknown => DimSpec::Unknown,
        }
    }
}

impl std::fmt::Display for DimSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DimSpec::Known(v) => write!(f, "{v}"),
            DimSpec::Symbolic(s) => f.write_str(s),
            DimSpec::Unknown => f.write_str("?"),
        }
    }
}

/// A named tensor of a graph: element type (`float32`, `int64`, ...) and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The tensor's name in the graph.
    pub name: String,
    /// ONNX element type name (`float32`, `int64`, ...), None when unknown.
    pub dtype: Option<String>,
    /// Dims, None when not even the rank is known.
    pub shape: Option<Vec<DimSpec>>,
}

impl TensorSpec {
    /// What a graph input or output declares about itself.
    pub(crate) fn declared(vi: &ValueInfoProto) -> Self {
        let tensor = match &vi.r#type {
            Some(t) => match &t.value {
                Some(type_proto::Value::TensorType(t)) => Some(t),
                _ => None,
            },
            None => None,
        };
        let dtype = tensor.map(|t| attrpatch_onnx::consts::type_name(t.elem_type).to_string());
        let shape = tensor
            .and_then(|t| t.shape.as_ref())
            .map(|_| attrpatch_onnx::graph::declared_dims(vi).iter().map(DimSpec::from).collect());
        TensorSpec { name: vi.name.clone(), dtype, shape }
    }

    /// What tract's analysis found for a tensor.
    pub(crate) fn from_fact(name: &str, fact: Option<&TensorFact>) -> Self {
        TensorSpec {
            name: name.to_string(),
            dtype: fact.and_then(|f| f.dtype).map(|t| attrpatch_onnx::consts::type_name(t).to_string()),
            shape: fact.and_then(|f| f.shape.as_ref()).map(|s| s.iter().map(DimSpec::from).collect()),
        }
    }

    /// `float32[batch, sequence, 768]`, `?[?]` when nothing is known.
    pub fn type_and_shape(&self) -> String {
        let ty = self.dtype.as_deref().unwrap_or("?");
        match &self.shape {
            Some(s) => format!("{ty}[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
            None => format!("{ty}[?]"),
        }
    }
}

//! Node module scopes. tract's protobuf bindings predate IR 10 and drop
//! `NodeProto.metadata_props`, where the dynamo exporter records
//! `pkg.torch.onnx.name_scopes`. A second, minimal decode reads just those.

use std::collections::HashMap;

#[derive(Clone, PartialEq, prost::Message)]
struct LiteModel {
    #[prost(message, optional, tag = "7")]
    graph: Option<LiteGraph>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct LiteGraph {
    #[prost(message, repeated, tag = "1")]
    node: Vec<LiteNode>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct LiteNode {
    #[prost(string, tag = "3")]
    name: String,
    #[prost(message, repeated, tag = "9")]
    metadata_props: Vec<Entry>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Debug, Default, Clone)]
/// `node name -> module scopes` from the nodes' `pkg.torch.onnx.name_scopes`
/// metadata, outermost first; empty scope names are dropped.
pub struct NodeScopes(HashMap<String, Vec<String>>);

impl NodeScopes {
    /// Never fails: a model without metadata simply has no scopes.
    pub fn decode(bytes: &[u8]) -> Self {
        use prost::Message;
        let Ok(m) = LiteModel::decode(bytes) else { return Self::default() };
        Self::from_nodes(m.graph.map(|g| g.node).unwrap_or_default())
    }

    /// From the encoded bytes of a GraphProto (without its initializers).
    pub fn decode_graph(bytes: &[u8]) -> Self {
        use prost::Message;
        let Ok(g) = LiteGraph::decode(bytes) else { return Self::default() };
        Self::from_nodes(g.node)
    }

    fn from_nodes(nodes: Vec<LiteNode>) -> Self {
        let mut map = HashMap::new();
        for n in nodes {
            for e in n.metadata_props {
                if e.key == "pkg.torch.onnx.name_scopes" {
                    map.insert(n.name.clone(), parse_list(&e.value));
                }
            }
        }
        NodeScopes(map)
    }

    /// The module scopes of a node; empty when none were recorded.
    pub fn get(&self, node_name: &str) -> &[String] {
        self.0.get(node_name).map(|v| v.as_slice()).unwrap_or(&[])
    }
}

/// Parses a Python list literal of strings: `['', 'transformer', 'transformer.h.0']`.
fn parse_list(s: &str) -> Vec<String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(|p| p.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_python_list() {
        assert_eq!(
            super::parse_list("['', 'transformer.h.0', \"transformer.h.0.attn.c_proj\"]"),
            vec!["transformer.h.0", "transformer.h.0.attn.c_proj"]
        );
    }
}

//! Edge attribution (EAP, EAP-IG): the names of writers and readers, the edge
//! score table and its text outputs. Definitions are in the book (docs/src/edges.md).
//!
//! Writers add to the residual stream: `input` (the residual entering layer 0),
//! `a{l}.h{h}` (head h's share of the out-projection, without its bias) and
//! `m{l}` (the MLP output, bias included). Readers take from it: `a{l}.h{h}.q`,
//! `.k`, `.v` (per key/value head under grouped-query attention), `m{l}` and
//! `logits`. An edge u -> v exists when u is summed into v's read point.

pub mod anatomy;
pub mod compare;
pub mod convention;
pub mod faithfulness;
pub mod graph;
pub mod interpolate;
pub mod means;
pub mod mib;
pub mod patch_graph;
pub mod patching;
pub mod rewrite;
pub mod run;
pub mod scores;
mod start;

pub use run::{run_edges, run_edges_detailed, run_edges_method, EdgeMethod, EdgeRun};
pub use scores::{EdgeScore, EdgeScores, NodeScore};

/// A writer: a node whose output is added to the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Writer {
    /// The residual entering layer 0.
    Input,
    /// One attention head's contribution (layer, head).
    Head(usize, usize),
    /// One MLP's output (layer).
    Mlp(usize),
}

/// Which of an attention head's inputs a reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qkv {
    /// The query input.
    Q,
    /// The key input.
    K,
    /// The value input.
    V,
}

/// A reader: a node that reads the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reader {
    /// Head (layer, head)'s query/key/value input; for K and V under grouped-query
    /// attention the head index is the key/value head's.
    Head(usize, usize, Qkv),
    /// The MLP's input (layer).
    Mlp(usize),
    /// The residual before the final layer-norm.
    Logits,
}

impl std::fmt::Display for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Writer::Input => write!(f, "input"),
            Writer::Head(l, h) => write!(f, "a{l}.h{h}"),
            Writer::Mlp(l) => write!(f, "m{l}"),
        }
    }
}

impl std::fmt::Display for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reader::Head(l, h, which) => {
                let c = match which {
                    Qkv::Q => 'q',
                    Qkv::K => 'k',
                    Qkv::V => 'v',
                };
                write!(f, "a{l}.h{h}.{c}")
            }
            Reader::Mlp(l) => write!(f, "m{l}"),
            Reader::Logits => write!(f, "logits"),
        }
    }
}

/// The shape of the residual stream's graph of writers and readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Number of layers.
    pub layers: usize,
    /// Query heads per layer.
    pub heads: usize,
    /// Key/value heads per layer (= `heads` without grouped-query attention).
    pub kv_heads: usize,
    /// Attention and MLP read the same residual (GPT-J, GPT-NeoX parallel, Falcon):
    /// layer l's heads then do not feed layer l's MLP.
    pub parallel: bool,
}

impl Topology {
    /// Every writer, in residual order: input, then per layer its heads and its MLP.
    pub fn writers(&self) -> Vec<Writer> {
        let mut out = vec![Writer::Input];
        for l in 0..self.layers {
            out.extend((0..self.heads).map(|h| Writer::Head(l, h)));
            out.push(Writer::Mlp(l));
        }
        out
    }

    /// Every reader, in residual order: per layer its q, k, v readers and its MLP,
    /// then `logits`.
    pub fn readers(&self) -> Vec<Reader> {
        let mut out = vec![];
        for l in 0..self.layers {
            out.extend((0..self.heads).map(|h| Reader::Head(l, h, Qkv::Q)));
            out.extend((0..self.kv_heads).map(|h| Reader::Head(l, h, Qkv::K)));
            out.extend((0..self.kv_heads).map(|h| Reader::Head(l, h, Qkv::V)));
            out.push(Reader::Mlp(l));
        }
        out.push(Reader::Logits);
        out
    }

    /// Whether `w` is summed into `r`'s read point.
    pub fn has_edge(&self, w: Writer, r: Reader) -> bool {
        // The layer a writer writes after (input: before layer 0), and whether it is an MLP.
        let reader_layer = match r {
            Reader::Head(l, _, _) | Reader::Mlp(l) => l,
            Reader::Logits => return true,
        };
        match (w, r) {
            (Writer::Input, _) => true,
            (Writer::Head(l, _), Reader::Mlp(m)) if l == m => !self.parallel,
            (Writer::Head(l, _), _) | (Writer::Mlp(l), _) => l < reader_layer,
        }
    }

    /// Every edge, writers in residual order, then readers in residual order.
    pub fn edges(&self) -> Vec<(Writer, Reader)> {
        let readers = self.readers();
        let mut out = vec![];
        for w in self.writers() {
            out.extend(readers.iter().filter(|&&r| self.has_edge(w, r)).map(|&r| (w, r)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Writer::Head(3, 7).to_string(), "a3.h7");
        assert_eq!(Writer::Mlp(0).to_string(), "m0");
        assert_eq!(Writer::Input.to_string(), "input");
        assert_eq!(Reader::Head(1, 2, Qkv::K).to_string(), "a1.h2.k");
        assert_eq!(Reader::Logits.to_string(), "logits");
    }

    /// GPT-2 small with per-head q/k/v readers: the "about 32,000 edges".
    #[test]
    fn gpt2_small_edge_count() {
        let t = Topology { layers: 12, heads: 12, kv_heads: 12, parallel: false };
        let n = t.edges().len();
        // Writers before layer l: 1 + l*(12+1); each layer has 36 head readers, and its
        // MLP also reads the layer's own 12 heads; logits read all 157 writers.
        let expected: usize = (0..12).map(|l| (1 + l * 13) * 37 + 12).sum::<usize>() + 157;
        assert_eq!(n, expected);
        assert_eq!(n, 32_491);
    }

    #[test]
    fn parallel_block_heads_skip_their_own_mlp() {
        let t = Topology { layers: 2, heads: 2, kv_heads: 1, parallel: true };
        assert!(!t.has_edge(Writer::Head(0, 1), Reader::Mlp(0)));
        assert!(t.has_edge(Writer::Head(0, 1), Reader::Mlp(1)));
        assert!(!t.has_edge(Writer::Mlp(0), Reader::Mlp(0)));
        let serial = Topology { parallel: false, ..t };
        assert!(serial.has_edge(Writer::Head(0, 1), Reader::Mlp(0)));
        assert_eq!(t.readers().iter().filter(|r| matches!(r, Reader::Head(_, _, Qkv::K))).count(), 2);
    }
}

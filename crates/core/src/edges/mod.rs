//! Edge attribution (EAP, EAP-IG): the names of writers and readers, the edge
//! score table and its text outputs. Definitions are in the book (docs/src/edges.md).
//!
//! Writers add to the residual stream: `input` (the residual entering layer 0),
//! `a{l}.h{h}` (head h's share of the out-projection, without its bias) and
//! `m{l}` (the MLP output, bias included). Readers take from it: `a{l}.h{h}.q`,
//! `.k`, `.v`, `m{l}` and `logits`. Under grouped-query attention a layer's
//! key and value inputs belong to its key/value heads, not to its query heads:
//! they are `a{l}.kv{g}.k` and `.v` (`Reader::Kv`). Earlier versions named
//! them `a{l}.h{g}.k`; `Topology::parse_reader` still reads that name.
//! An edge u -> v exists when u is summed into v's read point.

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
pub(crate) mod start;

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

impl Qkv {
    /// The letter that ends a head reader's name (the circuit figure's port label).
    pub fn port(self) -> &'static str {
        match self {
            Qkv::Q => "q",
            Qkv::K => "k",
            Qkv::V => "v",
        }
    }
}

/// A reader: a node that reads the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reader {
    /// Head (layer, head)'s query/key/value input; under grouped-query attention
    /// its query input only (`Qkv::Q`).
    Head(usize, usize, Qkv),
    /// Under grouped-query attention, key/value head (layer, group)'s key or
    /// value input (`Qkv::K` or `Qkv::V`), which the group's query heads share.
    Kv(usize, usize, Qkv),
    /// The MLP's input (layer).
    Mlp(usize),
    /// The residual before the final layer-norm.
    Logits,
}

impl Reader {
    /// Which of a head's inputs this reader is (None for `m{l}` and `logits`).
    pub fn qkv(&self) -> Option<Qkv> {
        match self {
            Reader::Head(_, _, which) | Reader::Kv(_, _, which) => Some(*which),
            Reader::Mlp(_) | Reader::Logits => None,
        }
    }

    /// The layer whose attention or MLP reads (None for `logits`).
    pub fn layer(&self) -> Option<usize> {
        match self {
            Reader::Head(l, _, _) | Reader::Kv(l, _, _) | Reader::Mlp(l) => Some(*l),
            Reader::Logits => None,
        }
    }
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
            Reader::Head(l, h, which) => write!(f, "a{l}.h{h}.{}", which.port()),
            Reader::Kv(l, g, which) => write!(f, "a{l}.kv{g}.{}", which.port()),
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
            for which in [Qkv::K, Qkv::V] {
                out.extend((0..self.kv_heads).map(|h| self.kv_reader(l, h, which)));
            }
            out.push(Reader::Mlp(l));
        }
        out.push(Reader::Logits);
        out
    }

    /// Whether key and value inputs belong to key/value heads fewer than the query heads.
    pub fn grouped(&self) -> bool {
        self.kv_heads < self.heads
    }

    /// Key/value head h's key or value reader of layer l (`Reader::Kv` under
    /// grouped-query attention, else the head's own).
    fn kv_reader(&self, l: usize, h: usize, which: Qkv) -> Reader {
        if self.grouped() {
            Reader::Kv(l, h, which)
        } else {
            Reader::Head(l, h, which)
        }
    }

    /// The reader a name names in this topology, or None. Besides today's
    /// names it reads the name earlier versions gave a key/value head's
    /// reader under grouped-query attention (`a{l}.h{g}.k` for `a{l}.kv{g}.k`),
    /// so that older edge files and habits still work.
    pub fn parse_reader(&self, name: &str) -> Option<Reader> {
        let index = |s: &str, prefix: &str| s.strip_prefix(prefix)?.parse::<usize>().ok();
        let r = match name.split('.').collect::<Vec<_>>()[..] {
            ["logits"] => Reader::Logits,
            [m] => Reader::Mlp(index(m, "m")?),
            [a, h, port] => {
                let l = index(a, "a")?;
                let which = match port {
                    "q" => Qkv::Q,
                    "k" => Qkv::K,
                    "v" => Qkv::V,
                    _ => return None,
                };
                match (index(h, "kv"), index(h, "h")) {
                    (Some(g), _) if self.grouped() && which != Qkv::Q => Reader::Kv(l, g, which),
                    (None, Some(h)) if which == Qkv::Q => Reader::Head(l, h, which),
                    (None, Some(h)) => self.kv_reader(l, h, which),
                    _ => return None,
                }
            }
            _ => return None,
        };
        // In range: a name of this topology's readers only.
        let ok = match r {
            Reader::Head(l, h, _) => l < self.layers && h < self.heads,
            Reader::Kv(l, g, _) => l < self.layers && g < self.kv_heads,
            Reader::Mlp(l) => l < self.layers,
            Reader::Logits => true,
        };
        ok.then_some(r)
    }

    /// Whether `w` is summed into `r`'s read point.
    pub fn has_edge(&self, w: Writer, r: Reader) -> bool {
        // The layer a writer writes after (input: before layer 0), and whether it is an MLP.
        let reader_layer = match r {
            Reader::Head(l, _, _) | Reader::Kv(l, _, _) | Reader::Mlp(l) => l,
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
        assert_eq!(Reader::Kv(1, 0, Qkv::V).to_string(), "a1.kv0.v");
        assert_eq!(Reader::Logits.to_string(), "logits");
    }

    /// The bug: under grouped-query attention the key/value readers were named
    /// `a1.h0.k`, `a1.h1.k` for key/value heads 0 and 1, which reads as query heads.
    #[test]
    fn regression_gqa_key_value_readers_were_named_as_query_heads() {
        let t = Topology { layers: 2, heads: 4, kv_heads: 2, parallel: false };
        let names: Vec<String> = t.readers().iter().filter(|r| r.layer() == Some(1)).map(|r| r.to_string()).collect();
        assert_eq!(
            names,
            ["a1.h0.q", "a1.h1.q", "a1.h2.q", "a1.h3.q", "a1.kv0.k", "a1.kv1.k", "a1.kv0.v", "a1.kv1.v", "m1"]
        );
        // Without grouping the heads keep their own k and v.
        let mha = Topology { kv_heads: 4, ..t };
        assert!(mha.readers().iter().all(|r| !matches!(r, Reader::Kv(..))));
        assert!(mha.readers().contains(&Reader::Head(1, 3, Qkv::V)));
    }

    #[test]
    fn parse_reader_reads_every_name_and_the_old_gqa_names() {
        for t in [
            Topology { layers: 2, heads: 4, kv_heads: 2, parallel: false },
            Topology { layers: 2, heads: 4, kv_heads: 4, parallel: true },
            Topology { layers: 1, heads: 3, kv_heads: 1, parallel: false },
        ] {
            for r in t.readers() {
                assert_eq!(t.parse_reader(&r.to_string()), Some(r), "{r} in {t:?}");
            }
        }
        let gqa = Topology { layers: 2, heads: 4, kv_heads: 2, parallel: false };
        assert_eq!(gqa.parse_reader("a1.h1.k"), Some(Reader::Kv(1, 1, Qkv::K)), "the old name");
        assert_eq!(gqa.parse_reader("a1.h3.q"), Some(Reader::Head(1, 3, Qkv::Q)));
        for bad in ["a1.h2.k", "a1.kv2.v", "a1.kv0.q", "a2.h0.q", "m2", "a1.h0", "a1.h0.x", "x", "a1.hx.q"] {
            assert_eq!(gqa.parse_reader(bad), None, "{bad}");
        }
        let mha = Topology { layers: 2, heads: 4, kv_heads: 4, parallel: false };
        assert_eq!(mha.parse_reader("a0.kv0.k"), None, "no key/value heads of their own without grouping");
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
        assert_eq!(t.readers().iter().filter(|r| r.qkv() == Some(Qkv::K)).count(), 2);
    }
}

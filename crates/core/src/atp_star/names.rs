//! The names of the AtP* graph's outputs.

/// Which estimate an output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// AtP's linear estimate of a query or key.
    Atp,
    /// The QK-fix (exact pattern, linear after it), plain gradient.
    QkFix,
    /// GradDrop's sweep that drops layer `l`'s residual writes.
    Sweep(usize),
}

/// Which node an output's grid attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The head's output (the hook, as `run` attributes it).
    Output,
    /// The head's query.
    Query,
    /// The head's key.
    Key,
}

/// Which grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// [B, heads].
    Heads,
    /// [B, positions].
    Positions,
}

impl Site {
    /// The name in outputs and files.
    pub fn label(&self) -> &'static str {
        match self {
            Site::Output => "output",
            Site::Query => "query",
            Site::Key => "key",
        }
    }
}

/// The output holding one layer's grid of one estimate and site.
pub fn output(kind: Kind, site: Site, grid: Grid, layer: usize) -> String {
    let kind = match kind {
        Kind::Atp => "atp".to_string(),
        Kind::QkFix => "qk_fix".to_string(),
        Kind::Sweep(l) => format!("sweep{l}"),
    };
    let grid = match grid {
        Grid::Heads => "heads",
        Grid::Positions => "positions",
    };
    format!("attrpatch.atp_star.{kind}.{}.{grid}.{layer}", site.label())
}

/// A raw output of layer `layer` (with `raw_outputs`): "probs_grad" (dL/dA),
/// "query" ([.., T], each query's QK-fix), "key" ([.., S], each key's).
pub fn raw(what: &str, layer: usize) -> String {
    format!("attrpatch.atp_star.raw.{what}.{layer}")
}

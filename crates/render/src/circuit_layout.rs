//! Where the circuit's boxes and edges go: one layout, drawn by the circuit
//! figure (plotters) and embedded in report.html, whose script only filters it
//! and redraws.
//!
//! The residual stream reads upwards: `input` at the bottom, `logits` at the
//! top, and between them per layer a row of attention heads and, above it, a row
//! for the MLP (the same row in a parallel block, where the MLP does not read the
//! layer's heads). A head is one box with three ports on its lower edge, `q`,
//! `k` and `v`, where its query, key and value readers take their input, and it
//! writes from the middle of its upper edge: one box per head keeps the head
//! (the unit researchers name: "9.9 is a name mover") in one place, while the
//! ports still say which of its inputs an edge feeds. Under grouped-query
//! attention the key/value readers belong to a key/value head, drawn as its own
//! box `a{l}.kv{g}` with ports `k` and `v`. A head keeps its column in every
//! layer (head 9 is always in the same column), columns no drawn head uses are
//! left out, and the MLPs share the rightmost column.

use super::colour::{Colour, RDBU};
use attrpatch_core::edges::{EdgeScore, EdgeScores, Reader};
use attrpatch_onnx::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// A head or MLP box's width: its three ports sit 28 px apart (at 66, 22 px
/// apart, the edges into neighbouring ports ran together).
pub const BOX_W: i32 = 84;
/// Every box's height.
pub const BOX_H: i32 = 34;
/// The `input` and `logits` boxes.
pub const END_W: i32 = 110;
const COL_GAP: i32 = 14;
/// Room between rows for the edges to cross over before their lead-ins (at
/// 38 the curves between adjacent layers ran nearly flat).
const ROW_GAP: i32 = 56;
/// A port's mark on its box's lower edge: width and height in pixels.
pub const PORT_MARK: (i32, i32) = (8, 3);
/// The last pixels of every edge rise straight up into its port, so edges end
/// in their own port's column rather than arriving sideways under the
/// neighbouring ports (and edges into one port join before it).
pub const LEAD_IN: i32 = 12;
/// Left of the columns: the layer labels.
pub const GUTTER: i32 = 64;
const MARGIN: i32 = 10;

/// Positive edges (patching them from corrupted to clean raises the metric):
/// RdBu's blue end, as positive cells in the heatmaps.
pub const POSITIVE: Colour = RDBU[9];
/// Negative edges: RdBu's red end.
pub const NEGATIVE: Colour = RDBU[1];
/// The widest edge (the largest |score|), in pixels.
pub const MAX_EDGE_W: u32 = 8;
/// The narrowest edge, in pixels: a kept edge is in the circuit, so it must be
/// seen (plotters draws 1-pixel strokes without anti-aliasing, as broken steps).
pub const MIN_EDGE_W: u32 = 2;
/// The faintest edge's opacity: RdBu's blue end at 0.75 keeps 3.3:1 contrast
/// on the shaded bands (WCAG's 3:1 for graphics); 0.35 gave 1.7:1.
pub const MIN_OPACITY: f64 = 0.75;
/// The strongest edge's opacity (below 1, so crossings stay readable).
pub const MAX_OPACITY: f64 = 0.95;

/// What a box stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BoxKey {
    /// The residual entering layer 0.
    Input,
    /// Attention head (layer, head): writer, and its query (and, without
    /// grouped-query attention, key and value) readers.
    Head(usize, usize),
    /// Key/value head (layer, kv head) under grouped-query attention: its key and value readers.
    Kv(usize, usize),
    /// The MLP of a layer: reader and writer.
    Mlp(usize),
    /// The residual before the final layer-norm.
    Logits,
}

/// A place on a box's lower edge where a reader takes its input.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    /// "q", "k" or "v" on head boxes; "" on boxes with one input.
    pub label: &'static str,
    /// The reader's name, e.g. "a3.h7.q".
    pub reader: String,
    /// Where edges into the reader end, on the box's lower edge.
    pub at: (i32, i32),
}

/// One node's box, in layout pixels (origin top left).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBox {
    /// The node it stands for.
    pub key: BoxKey,
    /// What the box says: "a3.h7", "a3.kv1", "m3", "input", "logits".
    pub label: String,
    /// Left edge.
    pub x: i32,
    /// Upper edge.
    pub y: i32,
    /// Width.
    pub w: i32,
    /// Height.
    pub h: i32,
    /// The writer's name and where its edges leave (middle of the upper edge).
    pub writer: Option<(String, (i32, i32))>,
    /// Its readers' inputs, left to right (none on `input`).
    pub ports: Vec<Port>,
}

/// A kept edge, placed: from its writer's anchor to its reader's port.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedEdge {
    /// Writer name.
    pub from: String,
    /// Reader name.
    pub to: String,
    /// The edge's score.
    pub score: f64,
    /// Index into `CircuitLayout::boxes` of the writer's box.
    pub from_box: usize,
    /// Index of the reader's box.
    pub to_box: usize,
    /// The writer's anchor (middle of its box's upper edge).
    pub start: (i32, i32),
    /// The reader's port.
    pub end: (i32, i32),
    /// By sign: `POSITIVE` or `NEGATIVE`.
    pub colour: Colour,
    /// Whole pixels (plotters strokes take integers), `MIN_EDGE_W` to `MAX_EDGE_W`.
    pub width: u32,
    /// Stroke opacity, higher for larger |score|.
    pub opacity: f64,
}

/// A layer's rows, shaded alternately behind the boxes and labelled in the gutter.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    /// The layer.
    pub layer: usize,
    /// Upper edge (half a row gap above its highest box).
    pub top: i32,
    /// Lower edge.
    pub bottom: i32,
}

/// The top-K circuit, placed.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitLayout {
    /// Width in pixels, the layer labels' gutter included.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// Only the boxes a kept edge touches, plus `input` and `logits`.
    pub boxes: Vec<NodeBox>,
    /// The kept edges, largest |score| first.
    pub edges: Vec<PlacedEdge>,
    pub bands: Vec<Band>,
    /// The largest |score| of all edges (the widest stroke).
    pub max_abs: f64,
}

/// The `k` edges of largest |score| (ties: table order), largest first. A
/// non-finite score is an error: it cannot be ranked.
pub fn top_edges(scores: &EdgeScores, k: usize) -> Result<Vec<&EdgeScore>> {
    if let Some(e) = scores.edges.iter().find(|e| !e.score.is_finite()) {
        return Err(Error::Numeric(format!(
            "edge {} -> {} has score {}; edges can only be ranked by finite scores",
            e.from, e.to, e.score
        )));
    }
    let mut ranked: Vec<&EdgeScore> = scores.edges.iter().collect();
    ranked.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
    ranked.truncate(k);
    Ok(ranked)
}

/// Stroke colour, width and opacity of an edge: colour by sign, width and
/// opacity growing with |score| / `max_abs`, from `MIN_EDGE_W` and
/// `MIN_OPACITY` up, so weak edges are thinner but never vanish.
pub fn edge_style(score: f64, max_abs: f64) -> (Colour, u32, f64) {
    let t = if max_abs > 0.0 { (score.abs() / max_abs).clamp(0.0, 1.0) } else { 0.0 };
    let colour = if score < 0.0 { NEGATIVE } else { POSITIVE };
    let width = MIN_EDGE_W + (t * (MAX_EDGE_W - MIN_EDGE_W) as f64).round() as u32;
    (colour, width, MIN_OPACITY + (MAX_OPACITY - MIN_OPACITY) * t)
}

/// Where an edge's curve ends and its straight lead-in to the port at `end` begins.
pub fn lead_in(end: (i32, i32)) -> (i32, i32) {
    (end.0, end.1 + LEAD_IN)
}

#[cfg(feature = "figures")]
/// Points along an edge, `n` + 2 of them from start to end: a cubic Bézier
/// leaving its writer upwards and ending below its reader's port, then the
/// lead-in (report.js draws the same path in SVG).
pub fn edge_curve(start: (i32, i32), end: (i32, i32), n: usize) -> Vec<(i32, i32)> {
    let lead = lead_in(end);
    let [(x0, y0), (x3, y3)] = [start, lead].map(|(x, y)| (x as f64, y as f64));
    let (c1, c2) = control_points(start, lead);
    let mut points: Vec<(i32, i32)> = (0..=n)
        .map(|i| {
            let t = i as f64 / n as f64;
            let u = 1.0 - t;
            let (a, b, c, d) = (u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t);
            let x = a * x0 + b * c1.0 + c * c2.0 + d * x3;
            let y = a * y0 + b * c1.1 + c * c2.1 + d * y3;
            (x.round() as i32, y.round() as i32)
        })
        .collect();
    points.push(end);
    points
}

/// The control points of a curve from `start` up to `end`: straight up from
/// the start and straight below the end, half the height apart.
pub fn control_points(start: (i32, i32), end: (i32, i32)) -> ((f64, f64), (f64, f64)) {
    let bend = ((start.1 - end.1) as f64 / 2.0).max(12.0);
    ((start.0 as f64, start.1 as f64 - bend), (end.0 as f64, end.1 as f64 + bend))
}

/// Where an edge name lands: its box and, for a reader, which port.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Writer(BoxKey),
    Reader(BoxKey, &'static str),
}

fn parse_index(s: &str, prefix: char) -> Option<usize> {
    s.strip_prefix(prefix)?.parse().ok()
}

/// Reads a writer or reader name ("input", "a3.h7", "a3.h7.q", "a3.kv1.k", "m3", "logits";
/// readers as `Topology::parse_reader` reads them, earlier versions' names included).
fn parse_end(name: &str, reader: bool, s: &EdgeScores) -> Option<End> {
    if reader {
        return Some(match s.topology().parse_reader(name)? {
            Reader::Head(l, h, which) => End::Reader(BoxKey::Head(l, h), which.port()),
            Reader::Kv(l, g, which) => End::Reader(BoxKey::Kv(l, g), which.port()),
            Reader::Mlp(l) => End::Reader(BoxKey::Mlp(l), ""),
            Reader::Logits => End::Reader(BoxKey::Logits, ""),
        });
    }
    let parts: Vec<&str> = name.split('.').collect();
    let end = match parts.as_slice() {
        ["input"] => End::Writer(BoxKey::Input),
        [m] => End::Writer(BoxKey::Mlp(parse_index(m, 'm').filter(|&l| l < s.layers)?)),
        [a, h] => {
            let (l, h) = (parse_index(a, 'a')?, parse_index(h, 'h')?);
            (l < s.layers && h < s.heads).then_some(End::Writer(BoxKey::Head(l, h)))?
        }
        _ => return None,
    };
    Some(end)
}

/// The row a box sits in, in reading order (input first).
fn row_of(key: BoxKey, s: &EdgeScores) -> (usize, usize) {
    match key {
        BoxKey::Input => (0, 0),
        BoxKey::Head(l, _) | BoxKey::Kv(l, _) => (1 + l, 0),
        BoxKey::Mlp(l) => (1 + l, if s.parallel { 0 } else { 1 }),
        BoxKey::Logits => (1 + s.layers, 0),
    }
}

fn layer_of(key: BoxKey) -> Option<usize> {
    match key {
        BoxKey::Head(l, _) | BoxKey::Kv(l, _) | BoxKey::Mlp(l) => Some(l),
        BoxKey::Input | BoxKey::Logits => None,
    }
}

fn label_of(key: BoxKey) -> String {
    match key {
        BoxKey::Input => "input".into(),
        BoxKey::Head(l, h) => format!("a{l}.h{h}"),
        BoxKey::Kv(l, g) => format!("a{l}.kv{g}"),
        BoxKey::Mlp(l) => format!("m{l}"),
        BoxKey::Logits => "logits".into(),
    }
}

/// The reader ports of a box, left to right, with their readers' names.
fn ports_of(key: BoxKey, gqa: bool) -> Vec<(&'static str, String)> {
    match key {
        BoxKey::Input => vec![],
        BoxKey::Head(l, h) if gqa => vec![("q", format!("a{l}.h{h}.q"))],
        BoxKey::Head(l, h) => ["q", "k", "v"].into_iter().map(|p| (p, format!("a{l}.h{h}.{p}"))).collect(),
        BoxKey::Kv(l, g) => ["k", "v"].into_iter().map(|p| (p, format!("a{l}.kv{g}.{p}"))).collect(),
        BoxKey::Mlp(l) => vec![("", format!("m{l}"))],
        BoxKey::Logits => vec![("", "logits".into())],
    }
}

/// Places the top `k` edges of `scores` and the boxes they touch.
pub fn layout(scores: &EdgeScores, k: usize) -> Result<CircuitLayout> {
    if k == 0 {
        return Err(Error::Input("circuit: K must be at least 1 edge".into()));
    }
    if scores.edges.is_empty() {
        return Err(Error::Input(format!("circuit: the {} edge scores are empty", scores.method)));
    }
    let kept = top_edges(scores, k)?;
    let max_abs = kept.first().map_or(0.0, |e| e.score.abs());
    let bad = |e: &EdgeScore, name: &str| {
        Error::Input(format!(
            "circuit: edge {} -> {} names '{name}', which is not a {} of a model with {} layers, {} heads and {} \
             key/value heads",
            e.from,
            e.to,
            if name == e.from { "writer" } else { "reader" },
            scores.layers,
            scores.heads,
            scores.kv_heads
        ))
    };
    let mut ends = vec![];
    for e in &kept {
        let Some(End::Writer(w)) = parse_end(&e.from, false, scores) else { return Err(bad(e, &e.from)) };
        let Some(End::Reader(r, port)) = parse_end(&e.to, true, scores) else { return Err(bad(e, &e.to)) };
        ends.push((w, r, port));
    }
    let mut keys: BTreeSet<BoxKey> = [BoxKey::Input, BoxKey::Logits].into();
    keys.extend(ends.iter().flat_map(|&(w, r, _)| [w, r]));

    // Rows bottom to top, only those with a box; columns only those a box uses.
    let rows: BTreeSet<(usize, usize)> = keys.iter().map(|&key| row_of(key, scores)).collect();
    let row_index: BTreeMap<(usize, usize), usize> = rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let head_cols: BTreeSet<usize> =
        keys.iter().filter_map(|k| if let BoxKey::Head(_, h) = k { Some(*h) } else { None }).collect();
    let kv_cols: BTreeSet<usize> =
        keys.iter().filter_map(|k| if let BoxKey::Kv(_, g) = k { Some(*g) } else { None }).collect();
    let has_mlp = keys.iter().any(|k| matches!(k, BoxKey::Mlp(_)));
    let n_cols = head_cols.len() + kv_cols.len() + usize::from(has_mlp);
    let pitch_x = BOX_W + COL_GAP;
    let span = (n_cols as i32 * pitch_x - COL_GAP).max(END_W);
    let left = MARGIN + GUTTER;
    // Columns centred in the span when input/logits are the wider.
    let cols_left = left + (span - (n_cols as i32 * pitch_x - COL_GAP).max(0)) / 2;
    let col_x = |c: usize| cols_left + c as i32 * pitch_x;
    let pitch_y = BOX_H + ROW_GAP;
    let height = MARGIN * 2 + rows.len() as i32 * pitch_y - ROW_GAP;
    let row_y = |key: BoxKey| MARGIN + (rows.len() - 1 - row_index[&row_of(key, scores)]) as i32 * pitch_y;

    let gqa = scores.topology().grouped();
    let boxes: Vec<NodeBox> = keys
        .iter()
        .map(|&key| {
            let (x, w) = match key {
                BoxKey::Input | BoxKey::Logits => (left + (span - END_W) / 2, END_W),
                BoxKey::Head(_, h) => (col_x(head_cols.range(..h).count()), BOX_W),
                BoxKey::Kv(_, g) => (col_x(head_cols.len() + kv_cols.range(..g).count()), BOX_W),
                BoxKey::Mlp(_) => (col_x(n_cols - 1), BOX_W),
            };
            let (y, h) = (row_y(key), BOX_H);
            let label = label_of(key);
            let writer = match key {
                BoxKey::Kv(..) | BoxKey::Logits => None,
                _ => Some((label.clone(), (x + w / 2, y))),
            };
            let ports = ports_of(key, gqa);
            let n = ports.len() as i32;
            let ports = ports
                .into_iter()
                .enumerate()
                .map(|(i, (label, reader))| Port { label, reader, at: (x + w * (2 * i as i32 + 1) / (2 * n), y + h) })
                .collect();
            NodeBox { key, label, x, y, w, h, writer, ports }
        })
        .collect();
    let index: BTreeMap<BoxKey, usize> = boxes.iter().enumerate().map(|(i, b)| (b.key, i)).collect();

    let edges = kept
        .iter()
        .zip(&ends)
        .map(|(e, &(w, r, port))| {
            let (from_box, to_box) = (index[&w], index[&r]);
            let start = boxes[from_box].writer.as_ref().map(|(_, at)| *at).unwrap_or_default();
            let end = boxes[to_box].ports.iter().find(|p| p.label == port).map(|p| p.at).unwrap_or_default();
            let (colour, width, opacity) = edge_style(e.score, max_abs);
            PlacedEdge {
                from: e.from.clone(),
                to: e.to.clone(),
                score: e.score,
                from_box,
                to_box,
                start,
                end,
                colour,
                width,
                opacity,
            }
        })
        .collect();

    let mut bands: Vec<Band> = vec![];
    for b in &boxes {
        let Some(layer) = layer_of(b.key) else { continue };
        let (top, bottom) = (b.y - ROW_GAP / 2, b.y + b.h + ROW_GAP / 2);
        match bands.iter_mut().find(|band| band.layer == layer) {
            Some(band) => {
                band.top = band.top.min(top);
                band.bottom = band.bottom.max(bottom);
            }
            None => bands.push(Band { layer, top, bottom }),
        }
    }
    bands.sort_by_key(|b| b.layer);
    Ok(CircuitLayout { width: left + span + MARGIN, height, boxes, edges, bands, max_abs })
}

/// The method, e.g. "EAP" or "EAP-IG-inputs (N steps)".
pub fn method_label(scores: &EdgeScores) -> String {
    if scores.ig_steps > 1 {
        format!("{} ({} steps)", scores.method, scores.ig_steps)
    } else {
        scores.method.clone()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use attrpatch_core::edges::{scores::node_scores, Topology};

    /// Synthetic scores on `t`'s edges: heavy-tailed (log-normal |score|: a few
    /// large, many tiny), both signs, from a seeded splitmix64.
    pub(crate) fn synthetic(t: Topology, seed: u64) -> EdgeScores {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let edges: Vec<EdgeScore> = t
            .edges()
            .into_iter()
            .map(|(w, r)| {
                // Log-normal |score| (Box-Muller), negative one time in three.
                let (u, v, sign) = (1.0 - next(), next(), next());
                let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                let score = if sign < 1.0 / 3.0 { -1.0 } else { 1.0 } * (1.5 * z).exp() * 1e-3;
                EdgeScore { from: w.to_string(), to: r.to_string(), score }
            })
            .collect();
        EdgeScores {
            method: "EAP-IG".into(),
            ig_steps: 5,
            convention: "denoising".into(),
            ablation: "patching".into(),
            metric: "logit diff".into(),
            layers: t.layers,
            heads: t.heads,
            kv_heads: t.kv_heads,
            parallel: t.parallel,
            nodes: node_scores(&edges),
            edges,
        }
    }

    pub(crate) const GPT2_SMALL: Topology = Topology { layers: 12, heads: 12, kv_heads: 12, parallel: false };

    fn overlap(a: &NodeBox, b: &NodeBox) -> bool {
        a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
    }

    #[cfg(feature = "figures")]
    /// In the 12 px below its port an edge rises straight up into it (within a
    /// pixel of the port's x), so it does not arrive sideways under a neighbour.
    fn arrives_from_below(curve: &[(i32, i32)], what: &str, e: &PlacedEdge) {
        for (x, y) in dense(curve) {
            let below = y - e.end.1;
            assert!(
                !(0..=12).contains(&below) || (x - e.end.0).abs() <= 1,
                "{what}: {} -> {} is {} px to the side {below} px below its port",
                e.from,
                e.to,
                x - e.end.0
            );
        }
    }

    /// Every pixel along a polyline, in steps of at most one pixel.
    #[cfg(feature = "figures")]
    pub(crate) fn dense(points: &[(i32, i32)]) -> Vec<(i32, i32)> {
        let mut out = vec![points[0]];
        for pair in points.windows(2) {
            let [(x0, y0), (x1, y1)] = [pair[0], pair[1]];
            let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
            out.extend((1..=n).map(|i| (x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n)));
        }
        out
    }

    /// Every check a layout must pass, for several topologies and K.
    fn check(s: &EdgeScores, k: usize) {
        let l = layout(s, k).unwrap();
        let what = format!("{}x{} kv {} parallel {} K {k}", s.layers, s.heads, s.kv_heads, s.parallel);
        assert_eq!(l.edges.len(), k.min(s.edges.len()), "{what}");
        for (i, a) in l.boxes.iter().enumerate() {
            assert!(a.x >= 0 && a.y >= 0 && a.x + a.w <= l.width && a.y + a.h <= l.height, "{what}: {a:?} outside");
            for b in &l.boxes[i + 1..] {
                assert!(!overlap(a, b), "{what}: {} overlaps {}", a.label, b.label);
            }
        }
        // Each edge from its writer's upper edge up to its reader's port on the lower edge.
        for e in &l.edges {
            let (w, r) = (&l.boxes[e.from_box], &l.boxes[e.to_box]);
            let (name, at) = w.writer.as_ref().unwrap();
            assert_eq!((name, *at), (&e.from, e.start), "{what}");
            assert_eq!(e.start, (w.x + w.w / 2, w.y), "{what}: {} leaves from its top", e.from);
            let port = r.ports.iter().find(|p| p.reader == e.to).unwrap_or_else(|| panic!("{what}: no port {}", e.to));
            assert_eq!(port.at, e.end, "{what}: {}", e.to);
            assert!(e.end.1 == r.y + r.h && (r.x..=r.x + r.w).contains(&e.end.0), "{what}: {} port off its box", e.to);
            assert!(e.end.1 < e.start.1, "{what}: {} -> {} does not go upwards", e.from, e.to);
            // The curve's points are drawn only with the figures (report.js draws its own).
            #[cfg(feature = "figures")]
            {
                let curve = edge_curve(e.start, e.end, 64);
                assert_eq!((curve[0], *curve.last().unwrap()), (e.start, e.end), "{what}");
                arrives_from_below(&curve, &what, e);
            }
        }
        // Neighbouring ports far enough apart for their edges to stay apart.
        for b in &l.boxes {
            for pair in b.ports.windows(2) {
                let gap = pair[1].at.0 - pair[0].at.0;
                assert!(
                    gap >= 28,
                    "{what}: {}'s ports {} and {} are {gap} px apart",
                    b.label,
                    pair[0].label,
                    pair[1].label
                );
            }
        }
        // Only touched boxes, plus input and logits.
        for (i, b) in l.boxes.iter().enumerate() {
            let touched = l.edges.iter().any(|e| e.from_box == i || e.to_box == i);
            assert!(touched || matches!(b.key, BoxKey::Input | BoxKey::Logits), "{what}: {} untouched", b.label);
        }
        // Largest first, and the kept ones are the largest.
        let kept_min = l.edges.last().unwrap().score.abs();
        assert!(l.edges.windows(2).all(|p| p[0].score.abs() >= p[1].score.abs()), "{what}");
        let larger = s.edges.iter().filter(|e| e.score.abs() > kept_min).count();
        assert!(larger < l.edges.len(), "{what}: {larger} edges beat the smallest kept one");
    }

    #[test]
    fn boxes_do_not_overlap_and_edges_join_their_nodes() {
        let gpt2 = synthetic(GPT2_SMALL, 1);
        for k in [1, 20, 200, 2000, gpt2.edges.len()] {
            check(&gpt2, k);
        }
        let gqa = synthetic(Topology { layers: 3, heads: 4, kv_heads: 2, parallel: false }, 2);
        let mqa_parallel = synthetic(Topology { layers: 2, heads: 4, kv_heads: 1, parallel: true }, 3);
        let neox = synthetic(Topology { layers: 3, heads: 2, kv_heads: 2, parallel: true }, 4);
        for s in [&gqa, &mqa_parallel, &neox] {
            for k in [1, 5, 30, s.edges.len()] {
                check(s, k);
            }
        }
    }

    #[test]
    fn heads_keep_their_column_and_layers_go_up() {
        let l = layout(&synthetic(GPT2_SMALL, 5), 300).unwrap();
        let find = |key: BoxKey| l.boxes.iter().find(|b| b.key == key);
        let heads: Vec<&NodeBox> = l.boxes.iter().filter(|b| matches!(b.key, BoxKey::Head(..))).collect();
        for a in &heads {
            for b in &heads {
                let (BoxKey::Head(la, ha), BoxKey::Head(lb, hb)) = (a.key, b.key) else { unreachable!() };
                assert_eq!(ha == hb, a.x == b.x, "{} and {}", a.label, b.label);
                assert_eq!(la == lb, a.y == b.y, "{} and {}", a.label, b.label);
                if la < lb {
                    assert!(a.y > b.y, "{} is drawn above {}", a.label, b.label);
                }
            }
        }
        let (input, logits) = (find(BoxKey::Input).unwrap(), find(BoxKey::Logits).unwrap());
        assert!(l.boxes.iter().all(|b| b.y <= input.y && b.y >= logits.y));
        // Serial blocks: an MLP sits above its layer's heads, in the rightmost column.
        let mlps: Vec<&NodeBox> = l.boxes.iter().filter(|b| matches!(b.key, BoxKey::Mlp(_))).collect();
        assert!(!mlps.is_empty());
        for m in mlps {
            let BoxKey::Mlp(layer) = m.key else { unreachable!() };
            assert!(heads.iter().all(|h| h.x < m.x));
            for h in heads.iter().filter(|h| matches!(h.key, BoxKey::Head(hl, _) if hl == layer)) {
                assert!(m.y < h.y, "m{layer} above a{layer}'s heads");
            }
        }
    }

    #[test]
    fn grouped_query_readers_sit_on_key_value_boxes() {
        let s = synthetic(Topology { layers: 2, heads: 4, kv_heads: 2, parallel: false }, 9);
        let l = layout(&s, s.edges.len()).unwrap();
        let kv = l.boxes.iter().find(|b| b.key == BoxKey::Kv(1, 1)).unwrap();
        assert_eq!(kv.label, "a1.kv1");
        assert_eq!(kv.ports.iter().map(|p| p.reader.as_str()).collect::<Vec<_>>(), ["a1.kv1.k", "a1.kv1.v"]);
        assert!(kv.writer.is_none());
        let head = l.boxes.iter().find(|b| b.key == BoxKey::Head(1, 3)).unwrap();
        assert_eq!(head.ports.iter().map(|p| p.reader.as_str()).collect::<Vec<_>>(), ["a1.h3.q"]);
    }

    #[test]
    fn sign_gives_colour_and_size_gives_width() {
        let (pos, w_max, o_max) = edge_style(2.0, 2.0);
        let (neg, w_neg, o_neg) = edge_style(-2.0, 2.0);
        let (small, w_small, o_small) = edge_style(0.01, 2.0);
        assert_eq!((pos, neg, small), (POSITIVE, NEGATIVE, POSITIVE));
        assert!(pos[2] > pos[0] && neg[0] > neg[2], "blue positive, red negative: {pos:?} {neg:?}");
        assert_eq!((w_max, w_neg, w_small), (MAX_EDGE_W, MAX_EDGE_W, MIN_EDGE_W));
        assert!(o_max == o_neg && o_small < o_max);
        let l = layout(&synthetic(GPT2_SMALL, 7), 50).unwrap();
        for e in &l.edges {
            assert_eq!(e.colour, if e.score < 0.0 { NEGATIVE } else { POSITIVE }, "{} -> {}", e.from, e.to);
        }
        assert!(l.edges.windows(2).all(|p| p[0].width >= p[1].width));
        assert_eq!(l.edges[0].width, MAX_EDGE_W);
    }

    #[test]
    fn bad_names_and_scores_are_errors_that_name_the_edge() {
        let mut s = synthetic(Topology { layers: 2, heads: 2, kv_heads: 2, parallel: false }, 11);
        let top = top_edges(&s, 1).unwrap()[0].clone();
        let i = s.edges.iter().position(|e| *e == top).unwrap();
        s.edges[i].to = "a7.h0.q".into();
        let e = layout(&s, 3).unwrap_err().to_string();
        assert!(e.contains("a7.h0.q") && e.contains("2 layers"), "{e}");
        s.edges[i].score = f64::NAN;
        let e = layout(&s, 3).unwrap_err().to_string();
        assert!(e.contains(&top.from) && e.contains("NaN"), "{e}");
        assert!(layout(&s, 0).unwrap_err().to_string().contains("at least 1"));
    }
}

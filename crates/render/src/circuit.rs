//! The circuit figure, circuit.svg and circuit.png: the top-K edges by |score|
//! as a layered graph (placed by `circuit_layout`), edge width and opacity by |score|,
//! colour by sign (RdBu's ends, as in the heatmaps), with a title, the metric,
//! the method and K, and a legend saying what width and colour mean.

use super::circuit_layout::{
    edge_curve, edge_style, layout, method_label, BoxKey, CircuitLayout, NodeBox, GUTTER, NEGATIVE, PORT_MARK, POSITIVE,
};
use super::colour::{rgb, Colour, FRAME, TEXT};
use super::figure::{draw_header, header_height, write_figure, DrawResult, Figure, SUBTITLE, TITLE};
use super::font::{text_h, text_w, wrap};
use super::pen::{Pen, Place};
use super::ticks::fmt_tick;
use attrpatch_core::edges::EdgeScores;
use attrpatch_onnx::error::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use std::path::{Path, PathBuf};

const MARGIN: i32 = 14;
const GAP: i32 = 6;
const LEGEND: f64 = 14.0;
const NODE: f64 = 14.0;
const PORT: f64 = 12.4;
const BAND_LABEL: f64 = 13.0;
/// The header wraps at this width (or the graph's, when wider).
const MIN_HEADER_W: i32 = 560;
/// Legend sample strokes are this long.
const SAMPLE: i32 = 36;
/// Points per edge curve.
const CURVE_STEPS: usize = 24;
const BAND: RGBColor = RGBColor(243, 246, 250);
const END_FILL: RGBColor = RGBColor(234, 238, 244);

/// Draws the top `top_k` edges of `scores` as `dir/circuit.png` and
/// `dir/circuit.svg`; returns both paths.
pub fn write_circuit(dir: &Path, scores: &EdgeScores, top_k: usize) -> Result<Vec<PathBuf>> {
    let fig = CircuitFigure::new(scores, top_k)?;
    write_figure(&fig, &dir.join("circuit.png"))
}

/// What the title says: "Circuit: the top 20 of 32491 edges by |score|".
fn circuit_title(k: usize, n: usize) -> String {
    format!("Circuit: the top {} of {n} edges by |score|", k.min(n))
}

/// What the boxes are: heads with their ports (key/value heads apart under
/// grouped-query attention), MLPs, and whether blocks are parallel.
fn boxes_legend(s: &EdgeScores) -> String {
    let heads = if s.topology().grouped() {
        "heads a{layer}.h{head} read at port q, key/value heads a{layer}.kv{group} at ports k, v"
    } else {
        "heads a{layer}.h{head} read at ports q, k, v"
    };
    let parallel = if s.parallel { " (parallel blocks: beside their layer's heads)" } else { "" };
    format!("boxes: {heads}; writers write from the top; MLPs m{{layer}}{parallel}")
}

/// A legend sample stroke: colour, width in pixels, opacity.
type Stroke = (Colour, u32, f64);

/// The width entry's samples, styled as the edges of the smallest drawn
/// |score|, the midpoint and the largest are, and its text.
fn width_legend(smallest: f64, max_abs: f64) -> (Vec<Stroke>, String) {
    let strokes: Vec<Stroke> = [smallest, (smallest + max_abs) / 2.0, max_abs]
        .into_iter()
        .map(|v| {
            let (_, w, o) = edge_style(v, max_abs);
            (POSITIVE, w, o)
        })
        .collect();
    let text = format!(
        "width and opacity grow with |score|: from {} px at {} (the smallest drawn) to {} px at {} (the largest)",
        strokes[0].1,
        fmt_tick(smallest),
        strokes[2].1,
        fmt_tick(max_abs)
    );
    (strokes, text)
}

/// One legend entry: sample strokes (maybe none), then text wrapped to the header.
struct LegendLine {
    strokes: Vec<Stroke>,
    text: String,
    /// `text` wrapped, filled in once the header's width is known.
    lines: Vec<String>,
}

impl LegendLine {
    fn new(strokes: Vec<Stroke>, text: String) -> Self {
        LegendLine { strokes, text, lines: vec![] }
    }

    fn indent(&self) -> i32 {
        self.strokes.len() as i32 * (SAMPLE + GAP)
    }
}

struct CircuitFigure {
    graph: CircuitLayout,
    title: Vec<String>,
    subtitle: Vec<String>,
    legend: Vec<LegendLine>,
    /// Where the graph's origin lands on the canvas.
    graph_x: i32,
    graph_y: i32,
    width: i32,
    height: i32,
}

impl CircuitFigure {
    fn new(scores: &EdgeScores, top_k: usize) -> Result<Self> {
        let graph = layout(scores, top_k)?;
        let k = graph.edges.len();
        let header_w = (graph.width - 2 * MARGIN).max(MIN_HEADER_W);
        let title = wrap(&circuit_title(k, scores.edges.len()), TITLE, header_w as u32);
        let subtitle = format!("metric: normalised {} · method: {} · K = {k}", scores.metric, method_label(scores));
        let subtitle = wrap(&subtitle, SUBTITLE, header_w as u32);
        let smallest = graph.edges.last().map_or(0.0, |e| e.score.abs());
        let (widths, widths_text) = width_legend(smallest, graph.max_abs);
        let mut legend = vec![
            LegendLine::new(
                vec![(POSITIVE, 3, 1.0)],
                "positive score: patching the edge to its clean value raises the metric".into(),
            ),
            LegendLine::new(vec![(NEGATIVE, 3, 1.0)], "negative score: it lowers the metric".into()),
            LegendLine::new(widths, widths_text),
            LegendLine::new(vec![], boxes_legend(scores)),
        ];
        for l in &mut legend {
            l.lines = wrap(&l.text, LEGEND, (header_w - l.indent()) as u32);
        }
        let legend_h = legend.iter().map(|l| l.lines.len() as i32 * (text_h(LEGEND) + GAP)).sum::<i32>();
        let header_h = MARGIN + header_height(&title, &subtitle) + GAP * 2 + legend_h + GAP;
        let legend_w =
            legend.iter().flat_map(|l| l.lines.iter().map(|line| l.indent() + text_w(line, LEGEND))).max().unwrap_or(0);
        let widest_header = title
            .iter()
            .map(|l| text_w(l, TITLE))
            .chain(subtitle.iter().map(|l| text_w(l, SUBTITLE)))
            .chain([legend_w])
            .max()
            .unwrap_or(0);
        let width = graph.width.max(2 * MARGIN + widest_header);
        let graph_x = (width - graph.width) / 2;
        let height = header_h + graph.height + MARGIN;
        Ok(CircuitFigure { graph, title, subtitle, legend, graph_x, graph_y: header_h, width, height })
    }

    fn at(&self, (x, y): (i32, i32)) -> (i32, i32) {
        (self.graph_x + x, self.graph_y + y)
    }

    fn draw_box<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, pen: Pen, b: &NodeBox) -> DrawResult<DB> {
        let (x0, y0) = self.at((b.x, b.y));
        let (x1, y1) = (x0 + b.w, y0 + b.h);
        let end = matches!(b.key, BoxKey::Input | BoxKey::Logits);
        let fill = if end { END_FILL } else { WHITE };
        area.draw(&Rectangle::new([(x0, y0), (x1, y1)], fill.filled()))?;
        area.draw(&Rectangle::new([(x0, y0), (x1, y1)], TEXT.mix(0.7).stroke_width(1)))?;
        let with_ports = b.ports.iter().any(|p| !p.label.is_empty());
        let label_y = if with_ports { y0 + 3 } else { (y0 + y1) / 2 };
        let v = if with_ports { VPos::Top } else { VPos::Center };
        pen.text(area, &b.label, Place::new(((x0 + x1) / 2, label_y), NODE, HPos::Center, v))?;
        for p in b.ports.iter().filter(|p| !p.label.is_empty()) {
            let (px, py) = self.at(p.at);
            let (w, h) = PORT_MARK;
            area.draw(&Rectangle::new([(px - w / 2, py - h), (px + w / 2, py)], TEXT.filled()))?;
            pen.text(area, p.label, Place::new((px, py - h - 2), PORT, HPos::Center, VPos::Bottom))?;
        }
        Ok(())
    }
}

impl Figure for CircuitFigure {
    fn size(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, pen: Pen) -> DrawResult<DB> {
        let mut y = draw_header(area, pen, self.width / 2, MARGIN, &self.title, &self.subtitle)?;
        y += GAP * 2;
        for line in &self.legend {
            let mid = y + text_h(LEGEND) / 2;
            let mut x = MARGIN;
            for &(colour, width, opacity) in &line.strokes {
                let style = rgb(colour).mix(opacity).stroke_width(width);
                area.draw(&PathElement::new(vec![(x, mid), (x + SAMPLE, mid)], style))?;
                x += SAMPLE + GAP;
            }
            for text in &line.lines {
                let mid = y + text_h(LEGEND) / 2;
                pen.text(area, text, Place::new((x, mid), LEGEND, HPos::Left, VPos::Center))?;
                y += text_h(LEGEND) + GAP;
            }
        }
        let g = &self.graph;
        // Layer bands, every other one shaded, labelled in the gutter.
        for band in &g.bands {
            let (x0, y0) = self.at((0, band.top));
            let (x1, y1) = self.at((g.width, band.bottom));
            if band.layer % 2 == 0 {
                area.draw(&Rectangle::new([(x0, y0), (x1, y1)], BAND.filled()))?;
            }
            let at = (x0 + GUTTER, (y0 + y1) / 2);
            pen.text(area, &format!("layer {}", band.layer), Place::new(at, BAND_LABEL, HPos::Right, VPos::Center))?;
        }
        // Weakest edges first, so the strongest are on top; boxes over the edges.
        for e in g.edges.iter().rev() {
            let points: Vec<(i32, i32)> =
                edge_curve(e.start, e.end, CURVE_STEPS).into_iter().map(|p| self.at(p)).collect();
            area.draw(&PathElement::new(points, rgb(e.colour).mix(e.opacity).stroke_width(e.width)))?;
        }
        for b in &g.boxes {
            self.draw_box(area, pen, b)?;
        }
        let (x0, y0) = self.at((0, 0));
        area.draw(&Rectangle::new([(x0, y0), (x0 + g.width, y0 + g.height)], FRAME.stroke_width(1)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::circuit_layout::tests::{dense, synthetic, GPT2_SMALL};
    use super::*;

    #[test]
    fn writes_png_and_svg_of_the_same_size_with_every_edge() {
        let s = synthetic(GPT2_SMALL, 21);
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-circuit-{}", std::process::id()));
        let written = write_circuit(&dir, &s, 20).unwrap();
        assert_eq!(written, [dir.join("circuit.png"), dir.join("circuit.svg")]);
        let svg = std::fs::read_to_string(dir.join("circuit.svg")).unwrap();
        let img = image::open(dir.join("circuit.png")).unwrap().to_rgb8();
        let fig = CircuitFigure::new(&s, 20).unwrap();
        assert_eq!((img.width() as i32, img.height() as i32), (fig.width, fig.height));
        assert!(svg.contains(&format!(r#"width="{}" height="{}""#, fig.width, fig.height)), "svg size");
        // One polyline per edge plus the legend's five sample strokes.
        assert_eq!(svg.matches("<polyline").count(), 20 + 5);
        for want in
            ["Circuit: the top 20 of 32491 edges", "EAP-IG (5 steps)", "K = 20", "logit diff", "logits", "input"]
        {
            assert!(svg.contains(want), "circuit.svg lacks '{want}'");
        }
        // The strongest edge's colour is in the PNG (drawn on top of the others).
        let top = &fig.graph.edges[0];
        let c = top.colour;
        let clear = |&(x, y): &(i32, i32)| {
            fig.graph.boxes.iter().all(|b| x < b.x - 3 || x > b.x + b.w + 3 || y < b.y - 3 || y > b.y + b.h + 3)
        };
        let curve = edge_curve(top.start, top.end, CURVE_STEPS);
        let mid = *curve.iter().find(|p| clear(p)).expect("the top edge is hidden under boxes all along");
        let (x, y) = fig.at(mid);
        let p = img.get_pixel(x as u32, y as u32).0;
        let near = |a: u8, b: u8| (a as i32 - b as i32).abs() < 70;
        assert!(near(p[0], c[0]) && near(p[1], c[1]) && near(p[2], c[2]), "pixel {p:?} at the top edge, colour {c:?}");
    }

    /// WCAG 2's relative luminance of an sRGB colour.
    fn luminance(c: [f64; 3]) -> f64 {
        let lin = |v: f64| {
            let v = v / 255.0;
            if v <= 0.03928 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])
    }

    /// WCAG 2's contrast ratio, 1 (none) to 21; 3 is its minimum for graphics.
    fn contrast(a: [f64; 3], b: [f64; 3]) -> f64 {
        let (la, lb) = (luminance(a), luminance(b));
        (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
    }

    /// `c` at `opacity` over `bg`, as plotters blends a stroke.
    fn over(c: Colour, opacity: f64, bg: RGBColor) -> [f64; 3] {
        let bg = [bg.0, bg.1, bg.2];
        std::array::from_fn(|i| c[i] as f64 * opacity + bg[i] as f64 * (1.0 - opacity))
    }

    fn as_f64(p: [u8; 3]) -> [f64; 3] {
        p.map(f64::from)
    }

    /// The figure of the top `k` edges of `s`, and its PNG.
    fn drawn(s: &EdgeScores, k: usize, name: &str) -> (CircuitFigure, image::RgbImage) {
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-circuit-{name}-{}", std::process::id()));
        write_circuit(&dir, s, k).unwrap();
        let img = image::open(dir.join("circuit.png")).unwrap().to_rgb8();
        std::fs::remove_dir_all(dir).ok();
        (CircuitFigure::new(s, k).unwrap(), img)
    }

    #[test]
    fn edge_styles_stand_out_and_grow_with_score() {
        // Any kept |score|, either sign, on white or on a shaded band: at least
        // 3:1, 2 px, and never thinner or fainter for a larger |score|.
        let mut last = (0, 0.0);
        for i in 1..=100 {
            let v = i as f64 / 100.0;
            let (pos, w, o) = edge_style(v, 1.0);
            let (neg, w_neg, o_neg) = edge_style(-v, 1.0);
            assert_eq!((w, o), (w_neg, o_neg), "|score| {v}: the sign changes only the colour");
            assert!(w >= 2 && w >= last.0 && o >= last.1, "|score| {v}: width {w}, opacity {o} after {last:?}");
            last = (w, o);
            for bg in [WHITE, BAND] {
                for c in [pos, neg] {
                    let ratio = contrast(over(c, o, bg), as_f64([bg.0, bg.1, bg.2]));
                    assert!(ratio >= 3.0, "|score| {v}: {c:?} at opacity {o:.2} on {bg:?} has contrast {ratio:.2}");
                }
            }
        }
    }

    #[test]
    fn the_faintest_drawn_edge_stands_out_in_the_png() {
        // Where no box or other edge is near, against the background there.
        let s = synthetic(GPT2_SMALL, 21);
        let (fig, img) = drawn(&s, 20, "faint");
        let g = &fig.graph;
        let faint = g.edges.last().unwrap();
        let others: Vec<(i32, i32)> =
            g.edges[..g.edges.len() - 1].iter().flat_map(|e| dense(&edge_curve(e.start, e.end, CURVE_STEPS))).collect();
        let clear = |&(x, y): &(i32, i32)| {
            g.boxes.iter().all(|b| x < b.x - 4 || x > b.x + b.w + 4 || y < b.y - 4 || y > b.y + b.h + 4)
                && others.iter().all(|&(ox, oy)| (ox - x).abs().max((oy - y).abs()) > 10)
        };
        let curve = dense(&edge_curve(faint.start, faint.end, CURVE_STEPS));
        let at = *curve.iter().find(|p| clear(p)).expect("the faintest edge is covered all along");
        let shaded = g.bands.iter().any(|b| b.layer % 2 == 0 && (b.top..b.bottom).contains(&at.1));
        let bg = if shaded { BAND } else { WHITE };
        let (x, y) = fig.at(at);
        let p = img.get_pixel(x as u32, y as u32).0;
        let ratio = contrast(as_f64(p), as_f64([bg.0, bg.1, bg.2]));
        assert!(
            ratio >= 3.0,
            "faintest edge {} -> {}: pixel {p:?} on {bg:?}, contrast {ratio:.2}",
            faint.from,
            faint.to
        );
    }

    #[test]
    fn port_marks_are_wide_and_apart() {
        let s = synthetic(GPT2_SMALL, 21);
        let (fig, img) = drawn(&s, 20, "ports");
        let head = fig.graph.boxes.iter().find(|b| matches!(b.key, BoxKey::Head(..))).unwrap();
        // Each mark's run of text-coloured pixels just inside the lower edge.
        let ink = |x: i32, y: i32| img.get_pixel(x as u32, y as u32).0 == [TEXT.0, TEXT.1, TEXT.2];
        let mut marks = vec![];
        for p in &head.ports {
            let (px, py) = fig.at(p.at);
            let y = py - 1;
            let left = (0..).take_while(|d| ink(px - d, y)).count() as i32;
            let right = (0..).take_while(|d| ink(px + d, y)).count() as i32;
            marks.push((px - left + 1, px + right - 1));
        }
        for (i, &(a, b)) in marks.iter().enumerate() {
            assert!(b - a + 1 >= 8, "{}'s port {}: mark {} px wide", head.label, head.ports[i].label, b - a + 1);
        }
        for pair in marks.windows(2) {
            assert!(pair[1].0 - pair[0].1 >= 18, "{}: marks {pair:?} less than 18 px apart", head.label);
        }
    }
}

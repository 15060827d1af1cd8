//! The recall figure, recall-heads.png/.svg and recall-positions.png/.svg, as
//! in the AtP* paper: one panel per k, x = nodes verified in the estimate's
//! order (log scale, 1 to every node), y = the fraction of exact patching's
//! top k found, one line per estimate, a dot where it reaches full recall, and
//! a dashed grey line for the ideal order (recall min(x, k) / k).

use super::colour::{rgb, FRAME};
use super::figure::{
    draw_header, header_height, header_width, svg_text, write_figure, DrawResult, Figure, SUBTITLE, TITLE,
};
use super::font::{text_h, text_w, wrap};
use super::pen::{Pen, Place};
use super::scatter::COLOURS;
use super::ticks::fmt_tick;
use attrpatch_core::recall::GridRecall;
use attrpatch_onnx::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use std::path::{Path, PathBuf};

const PANEL_W: i32 = 250;
const PANEL_H: i32 = 210;
const MARGIN: i32 = 14;
const GAP: i32 = 6;
/// Between panels (room for the next panel's y ticks).
const PANEL_GAP: i32 = 40;
const LABEL: f64 = 16.0;
const TICK: f64 = 14.0;
const NOTE: f64 = 13.0;
const RADIUS: i32 = 4;
const LEGEND_KEY: i32 = 24;
const GUIDE: RGBColor = RGBColor(150, 150, 150);
const GRID: RGBColor = RGBColor(238, 238, 238);
const Y_TICKS: [f64; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];

/// Draws `g` as `path` (PNG) and the SVG beside it; `subtitle` names the hook,
/// metric and model. Returns both paths.
pub fn write_recall(g: &GridRecall, subtitle: &str, path: &Path) -> Result<Vec<PathBuf>> {
    write_figure(&Layout::new(g, subtitle)?, path)
}

/// The SVG text of the same figure, for the report page.
pub fn recall_svg(g: &GridRecall, subtitle: &str) -> Result<String> {
    svg_text(&Layout::new(g, subtitle)?)
}

struct Layout<'a> {
    g: &'a GridRecall,
    title: Vec<String>,
    subtitle: Vec<String>,
    /// The x ticks (node counts).
    x_ticks: Vec<usize>,
    plot_x: i32,
    plot_y: i32,
    legend_y: i32,
    width: i32,
    height: i32,
}

impl<'a> Layout<'a> {
    fn new(g: &'a GridRecall, subtitle: &str) -> Result<Self> {
        if g.ks.is_empty() || g.methods.is_empty() || g.nodes == 0 {
            return Err(Error::Input(format!("recall figure of the {} grid: no curve to draw", g.grid)));
        }
        let panels = g.ks.len() as i32;
        let plot_w = panels * PANEL_W + (panels - 1) * PANEL_GAP;
        let title =
            format!("{}: recall of exact patching's top k against nodes verified in each estimate's order", g.grid);
        let title = wrap(&title, TITLE, (plot_w + 80) as u32);
        let subtitle = wrap(subtitle, SUBTITLE, (plot_w + 80) as u32);
        let header_h = MARGIN + header_height(&title, &subtitle) + GAP * 3;
        let tick_w = text_w("0.8", TICK);
        let plot_x = MARGIN + text_h(LABEL) + GAP * 2 + tick_w + GAP;
        // Panel titles above the plots.
        let plot_y = header_h + text_h(LABEL) + GAP;
        let legend_y = plot_y + PANEL_H + GAP + text_h(TICK) + GAP * 2 + text_h(LABEL) + GAP * 2;
        let legend_w = g.methods.iter().map(|m| text_w(&legend_text(g, m), NOTE)).max().unwrap_or(0) + LEGEND_KEY + GAP;
        let widest = header_width(&title, &subtitle);
        let width = (plot_x + plot_w).max(plot_x + legend_w).max(MARGIN + widest) + MARGIN * 2;
        let height = legend_y + (g.methods.len() as i32 + 1) * (text_h(NOTE) + GAP) + MARGIN;
        Ok(Layout { g, title, subtitle, x_ticks: x_ticks(g.nodes), plot_x, plot_y, legend_y, width, height })
    }

    /// Left edge of panel `p`.
    fn panel_x(&self, p: usize) -> i32 {
        self.plot_x + p as i32 * (PANEL_W + PANEL_GAP)
    }

    /// Canvas x of `nodes` verified in panel `p`.
    fn px(&self, p: usize, nodes: f64) -> i32 {
        let span = (self.g.nodes.max(2) as f64).ln();
        self.panel_x(p) + (nodes.max(1.0).ln() / span * PANEL_W as f64).round() as i32
    }

    fn py(&self, recall: f64) -> i32 {
        self.plot_y + PANEL_H - (recall * PANEL_H as f64).round() as i32
    }

    /// The polyline of a recall curve as steps: flat until each node found.
    fn steps(&self, p: usize, recall: &[f64]) -> Vec<(i32, i32)> {
        let mut line = vec![];
        for (i, &r) in recall.iter().enumerate() {
            let (x, y) = (self.px(p, (i + 1) as f64), self.py(r));
            if let Some(&(_, prev)) = line.last() {
                if prev != y {
                    line.push((x, prev));
                }
            }
            line.push((x, y));
        }
        line
    }
}

/// "Attribution patching: full recall after 1, 3, 9, 12 nodes (k = 1, 2, 5, 10)".
fn legend_text(g: &GridRecall, m: &attrpatch_core::recall::MethodRecall) -> String {
    let at: Vec<String> = m.curves.iter().map(|c| c.full_recall_at.to_string()).collect();
    let ks: Vec<String> = g.ks.iter().map(|k| k.to_string()).collect();
    format!("{}: full recall after {} of {} nodes (k = {})", m.label, at.join(", "), g.nodes, ks.join(", "))
}

/// 1, 2, 5, 10, 20, 50, ... up to `nodes`, and `nodes` itself unless a tick is close to it.
fn x_ticks(nodes: usize) -> Vec<usize> {
    let mut t: Vec<usize> =
        (0..12).flat_map(|p| [1, 2, 5].map(|m| m * 10usize.pow(p))).take_while(|&v| v <= nodes).collect();
    if t.last().is_some_and(|&last| (nodes as f64 / last as f64) > 1.3) {
        t.push(nodes);
    }
    t
}

impl Figure for Layout<'_> {
    fn size(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, pen: Pen) -> DrawResult<DB> {
        draw_header(area, pen, self.width / 2, MARGIN, &self.title, &self.subtitle)?;
        let (y0, y1) = (self.plot_y, self.plot_y + PANEL_H);
        for (p, &k) in self.g.ks.iter().enumerate() {
            let (x0, x1) = (self.panel_x(p), self.panel_x(p) + PANEL_W);
            let head = format!("top {k}");
            pen.text(area, &head, Place::new(((x0 + x1) / 2, y0 - GAP), LABEL, HPos::Center, VPos::Bottom))?;
            for &t in &self.x_ticks {
                let x = self.px(p, t as f64);
                area.draw(&PathElement::new(vec![(x, y0), (x, y1)], GRID))?;
                pen.text(area, &t.to_string(), Place::new((x, y1 + GAP), TICK, HPos::Center, VPos::Top))?;
            }
            for v in Y_TICKS {
                area.draw(&PathElement::new(vec![(x0, self.py(v)), (x1, self.py(v))], GRID))?;
                pen.text(area, &fmt_tick(v), Place::new((x0 - GAP, self.py(v)), TICK, HPos::Right, VPos::Center))?;
            }
            area.draw(&Rectangle::new([(x0, y0), (x1, y1)], FRAME.stroke_width(1)))?;
            // The ideal order: every node verified is one of the top k until all are found.
            let ideal: Vec<f64> = (1..=self.g.nodes).map(|x| x.min(k) as f64 / k as f64).collect();
            area.draw(&PathElement::new(self.steps(p, &ideal), GUIDE.stroke_width(1)))?;
            for (i, m) in self.g.methods.iter().enumerate() {
                let colour = rgb(COLOURS[i % COLOURS.len()]);
                let c = &m.curves[p];
                area.draw(&PathElement::new(self.steps(p, &c.recall), colour.stroke_width(2)))?;
                area.draw(&Circle::new((self.px(p, c.full_recall_at as f64), self.py(1.0)), RADIUS, colour.filled()))?;
            }
        }
        let last = self.panel_x(self.g.ks.len() - 1) + PANEL_W;
        let label_y = y1 + GAP + text_h(TICK) + GAP * 2;
        let x_label = "nodes verified by exact patching, in the estimate's order (log scale)";
        pen.text(area, x_label, Place::new(((self.plot_x + last) / 2, label_y), LABEL, HPos::Center, VPos::Top))?;
        let at = (MARGIN + text_h(LABEL) / 2, (y0 + y1) / 2);
        pen.text(area, "recall of the top k", Place::new(at, LABEL, HPos::Center, VPos::Center).upwards())?;
        let row = |i: usize| self.legend_y + i as i32 * (text_h(NOTE) + GAP) + text_h(NOTE) / 2;
        let note = |t: &str, y: i32| {
            pen.text(area, t, Place::new((self.plot_x + LEGEND_KEY + GAP, y), NOTE, HPos::Left, VPos::Center))
        };
        for (i, m) in self.g.methods.iter().enumerate() {
            let colour = rgb(COLOURS[i % COLOURS.len()]);
            let y = row(i);
            area.draw(&PathElement::new(
                vec![(self.plot_x, y), (self.plot_x + LEGEND_KEY, y)],
                colour.stroke_width(2),
            ))?;
            note(&legend_text(self.g, m), y)?;
        }
        let y = row(self.g.methods.len());
        area.draw(&PathElement::new(vec![(self.plot_x, y), (self.plot_x + LEGEND_KEY, y)], GUIDE.stroke_width(1)))?;
        note("the ideal order (exact patching's own): full recall after k nodes", y)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attrpatch_core::recall::grid_recall;

    fn recall() -> GridRecall {
        let exact = [vec![0.5, 0.1, -0.05, -0.9], vec![0.3, 0.0, 0.2, 0.01], vec![0.02, 0.03, 0.04, 0.6]];
        let good = [vec![0.4, 0.1, -0.05, -0.8], vec![0.3, 0.0, 0.2, 0.01], vec![0.02, 0.03, 0.04, 0.5]];
        let bad = [vec![0.0, 0.9, -0.05, 0.0], vec![0.3, 0.6, 0.2, 0.01], vec![0.02, 0.03, 0.04, 0.1]];
        grid_recall("heads", &exact, &[("attribution", "AtP".into(), &good[..]), ("ig", "IG".into(), &bad[..])])
            .unwrap()
    }

    #[test]
    fn curves_are_drawn_on_a_log_axis_with_their_legend() {
        let g = recall();
        assert_eq!(g.ks, vec![1, 2, 5, 10]);
        let l = Layout::new(&g, "model").unwrap();
        assert_eq!(l.x_ticks, vec![1, 2, 5, 10], "12 is too close to 10 for its own tick");
        assert_eq!(x_ticks(144), vec![1, 2, 5, 10, 20, 50, 100, 144]);
        // Log scale: 1 -> 2 spans as much as 5 -> 10; panel p's origin is its left edge.
        assert_eq!(l.px(0, 2.0) - l.px(0, 1.0), l.px(0, 10.0) - l.px(0, 5.0));
        assert_eq!((l.px(1, 1.0), l.px(0, 12.0)), (l.panel_x(1), l.panel_x(0) + PANEL_W));
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-recall-{}", std::process::id()));
        let written = write_recall(&g, "model", &dir.join("recall-heads.png")).unwrap();
        let svg = std::fs::read_to_string(&written[1]).unwrap();
        for want in ["top 1", "top 10", "log scale", &legend_text(&g, &g.methods[1]), "ideal order"] {
            assert!(svg.contains(want), "recall-heads.svg lacks '{want}'");
        }
        // A good estimate's top 1 is found at the first node: its dot sits at x = 1, recall 1.
        assert_eq!(g.methods[0].curves[0].full_recall_at, 1);
        let img = image::open(&written[0]).unwrap().to_rgb8();
        let p = img.get_pixel((l.px(0, 1.0) + 1) as u32, (l.py(1.0) + 1) as u32).0;
        assert_eq!(p, COLOURS[0], "the first estimate's full-recall dot in panel 'top 1'");
    }

    #[test]
    fn steps_hold_each_value_until_the_next_node() {
        let g = recall();
        let l = Layout::new(&g, "").unwrap();
        let s = l.steps(0, &[0.0, 0.0, 1.0]);
        assert_eq!(
            s,
            vec![
                (l.px(0, 1.0), l.py(0.0)),
                (l.px(0, 2.0), l.py(0.0)),
                (l.px(0, 3.0), l.py(0.0)),
                (l.px(0, 3.0), l.py(1.0))
            ]
        );
        let empty = GridRecall { methods: vec![], ..g };
        assert!(Layout::new(&empty, "").is_err());
    }
}

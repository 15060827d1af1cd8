//! The faithfulness curve, faithfulness.svg and faithfulness.png, as in MIB's
//! circuit-performance plots: x = edges in the circuit (log scale), y = the
//! fraction of the clean-corrupted metric gap the circuit restores under exact
//! edge patching, with guide lines at 0 (the corrupted run) and 1 (the clean run).
//! With MIB's curve (`edges::mib`), its sizes are marked with squares and the
//! legend below the plot gives its CPR and CMD.

use super::circuit_layout::method_label;
use super::colour::{rgb, FRAME};
use super::figure::{draw_header, header_height, write_figure, DrawResult, Figure, SUBTITLE, TITLE};
use super::font::{text_h, text_w, wrap};
use super::pen::{Pen, Place};
use super::scatter::COLOURS;
use super::ticks::{fmt_tick, nice_ticks};
use attrpatch_core::edges::mib::MibCurve;
use attrpatch_core::edges::EdgeScores;
use attrpatch_onnx::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use std::path::{Path, PathBuf};

const PLOT_W: i32 = 520;
const PLOT_H: i32 = 340;
const MARGIN: i32 = 14;
const GAP: i32 = 6;
const LABEL: f64 = 16.0;
const TICK: f64 = 15.0;
const NOTE: f64 = 13.0;
const RADIUS: i32 = 4;
/// The legend's line sample, in pixels.
const LEGEND_KEY: i32 = 24;
const GUIDE: RGBColor = RGBColor(150, 150, 150);
const GRID: RGBColor = RGBColor(238, 238, 238);

/// Draws the curve through `points` (edges in the circuit, fraction of the gap
/// restored) as `dir/faithfulness.png` and `.svg`; `scores` names the metric,
/// the method and the number of edges. Points are drawn in order of K.
pub fn write_faithfulness(dir: &Path, points: &[(usize, f64)], scores: &EdgeScores) -> Result<Vec<PathBuf>> {
    write_faithfulness_mib(dir, points, None, scores)
}

/// As `write_faithfulness`, with MIB's sizes marked on the curve and its CPR
/// and CMD in the legend when `mib` is given.
pub fn write_faithfulness_mib(
    dir: &Path,
    points: &[(usize, f64)],
    mib: Option<&MibCurve>,
    scores: &EdgeScores,
) -> Result<Vec<PathBuf>> {
    write_figure(&Curve::new(points, scores)?.with_mib(mib), &dir.join("faithfulness.png"))
}

/// The SVG text of the same figure, for pages that embed it.
pub fn faithfulness_svg(points: &[(usize, f64)], scores: &EdgeScores) -> Result<String> {
    super::figure::svg_text(&Curve::new(points, scores)?)
}

struct Curve {
    points: Vec<(usize, f64)>,
    /// MIB's points that a log axis can show (K >= 1), and the legend's text.
    mib: Option<(Vec<(usize, f64)>, String)>,
    /// log10 of the x range's ends (whole decades).
    x_lo: f64,
    x_hi: f64,
    y_lo: f64,
    y_hi: f64,
    y_ticks: Vec<f64>,
    title: Vec<String>,
    subtitle: Vec<String>,
    plot_x: i32,
    plot_y: i32,
    width: i32,
    height: i32,
}

impl Curve {
    fn new(points: &[(usize, f64)], scores: &EdgeScores) -> Result<Self> {
        if points.is_empty() {
            return Err(Error::Input("faithfulness curve: no (K, faithfulness) points to draw".into()));
        }
        if let Some((k, f)) = points.iter().find(|(k, f)| *k == 0 || !f.is_finite()) {
            return Err(Error::Input(format!(
                "faithfulness curve: point (K = {k}, {f}) cannot be drawn: K must be at least 1 (the axis is \
                 logarithmic) and the faithfulness finite"
            )));
        }
        let mut points = points.to_vec();
        points.sort_by_key(|p| p.0);
        let (k_min, k_max) = (points[0].0 as f64, points[points.len() - 1].0.max(scores.edges.len()) as f64);
        let x_lo = k_min.log10().floor();
        let x_hi = k_max.log10().ceil().max(x_lo + 1.0);
        let (lo, hi) = points.iter().fold((0f64, 1f64), |(lo, hi), &(_, f)| (lo.min(f), hi.max(f)));
        let (y_lo, y_hi) = (lo - 0.06 * (hi - lo), hi + 0.06 * (hi - lo));
        let y_ticks = nice_ticks(y_lo, y_hi, 5);
        let header_w = PLOT_W + 160;
        let title = wrap("Circuit faithfulness: the metric gap each top-K circuit restores", TITLE, header_w as u32);
        let subtitle = format!(
            "metric: normalised {} · {} edges ranked by {} · exact edge patching",
            scores.metric,
            scores.edges.len(),
            method_label(scores)
        );
        let subtitle = wrap(&subtitle, SUBTITLE, header_w as u32);
        let header_h = MARGIN + header_height(&title, &subtitle) + GAP * 3;
        let tick_w = y_ticks.iter().map(|&v| text_w(&fmt_tick(v), TICK)).max().unwrap_or(0);
        let plot_x = MARGIN + text_h(LABEL) + GAP * 2 + tick_w + GAP;
        let guide_w = text_w("corrupted (0)", NOTE) + GAP;
        let widest = title
            .iter()
            .map(|l| text_w(l, TITLE))
            .chain(subtitle.iter().map(|l| text_w(l, SUBTITLE)))
            .max()
            .unwrap_or(0);
        let width = (plot_x + PLOT_W + GAP + guide_w).max(2 * MARGIN + widest) + MARGIN;
        let height = header_h + PLOT_H + GAP + text_h(TICK) + GAP * 2 + text_h(LABEL) + MARGIN;
        Ok(Curve {
            points,
            mib: None,
            x_lo,
            x_hi,
            y_lo,
            y_hi,
            y_ticks,
            title,
            subtitle,
            plot_x,
            plot_y: header_h,
            width,
            height,
        })
    }

    /// Marks MIB's sizes and adds the legend row below the plot. Its points
    /// are already on the curve (the sweep measures them); only K >= 1 can be
    /// drawn, and f beyond the y range is clamped to it by `new`'s range.
    fn with_mib(mut self, mib: Option<&MibCurve>) -> Self {
        let Some(m) = mib else { return self };
        let drawn: Vec<(usize, f64)> =
            m.k.iter().zip(&m.f).filter(|(&k, f)| k > 0 && f.is_finite()).map(|(&k, &f)| (k, f)).collect();
        let text = format!(
            "MIB sizes 0.1% .. 100% of the edges: CPR {:.3} (area under f), CMD {:.3} (area under |1 - f|)",
            m.cpr, m.cmd
        );
        self.width = self.width.max(self.plot_x + 3 * LEGEND_KEY + text_w(&text, NOTE) + MARGIN);
        self.height += 2 * (text_h(NOTE) + GAP);
        self.mib = Some((drawn, text));
        self
    }

    fn px(&self, k: f64) -> i32 {
        self.plot_x + ((k.log10() - self.x_lo) / (self.x_hi - self.x_lo) * PLOT_W as f64).round() as i32
    }

    fn py(&self, f: f64) -> i32 {
        self.plot_y + PLOT_H - ((f - self.y_lo) / (self.y_hi - self.y_lo) * PLOT_H as f64).round() as i32
    }
}

/// "1", "10", "100", "1000", "10^4"...: powers of ten as the axis labels them.
fn decade_label(p: i32) -> String {
    if p <= 3 {
        format!("{}", 10u64.pow(p as u32))
    } else {
        format!("1e{p}")
    }
}

impl Figure for Curve {
    fn size(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, pen: Pen) -> DrawResult<DB> {
        draw_header(area, pen, self.width / 2, MARGIN, &self.title, &self.subtitle)?;
        let (x0, y0, x1, y1) = (self.plot_x, self.plot_y, self.plot_x + PLOT_W, self.plot_y + PLOT_H);
        // Grid: every decade, lighter minor lines at 2..9 times it; y at round values.
        for p in self.x_lo as i32..=self.x_hi as i32 {
            let x = self.px(10f64.powi(p));
            area.draw(&PathElement::new(vec![(x, y0), (x, y1)], GRID))?;
            pen.text(area, &decade_label(p), Place::new((x, y1 + GAP), TICK, HPos::Center, VPos::Top))?;
            if p < self.x_hi as i32 {
                for m in 2..10 {
                    let x = self.px(m as f64 * 10f64.powi(p));
                    area.draw(&PathElement::new(vec![(x, y1 - 4), (x, y1)], FRAME))?;
                }
            }
        }
        for &v in &self.y_ticks {
            area.draw(&PathElement::new(vec![(x0, self.py(v)), (x1, self.py(v))], GRID))?;
            pen.text(area, &fmt_tick(v), Place::new((x0 - GAP, self.py(v)), TICK, HPos::Right, VPos::Center))?;
        }
        // The corrupted (0) and clean (1) runs, named at the right.
        for (v, name) in [(0.0, "corrupted (0)"), (1.0, "clean (1)")] {
            let gy = self.py(v);
            area.draw(&PathElement::new(vec![(x0, gy), (x1, gy)], GUIDE.stroke_width(2)))?;
            pen.text(area, name, Place::new((x1 + GAP, gy), NOTE, HPos::Left, VPos::Center))?;
        }
        area.draw(&Rectangle::new([(x0, y0), (x1, y1)], FRAME.stroke_width(1)))?;
        let colour = rgb(COLOURS[0]);
        let line: Vec<(i32, i32)> = self.points.iter().map(|&(k, f)| (self.px(k as f64), self.py(f))).collect();
        area.draw(&PathElement::new(line.clone(), colour.stroke_width(2)))?;
        for at in line {
            area.draw(&Circle::new(at, RADIUS, colour.filled()))?;
        }
        let x_label = "edges in the circuit (K, log scale)";
        let label_y = y1 + GAP + text_h(TICK) + GAP * 2;
        pen.text(area, x_label, Place::new(((x0 + x1) / 2, label_y), LABEL, HPos::Center, VPos::Top))?;
        let at = (MARGIN + text_h(LABEL) / 2, (y0 + y1) / 2);
        pen.text(area, "fraction of the gap restored", Place::new(at, LABEL, HPos::Center, VPos::Center).upwards())?;
        if let Some((mib, text)) = &self.mib {
            let mib_colour = rgb(COLOURS[1]);
            let (lo, hi) = (self.py(self.y_lo), self.py(self.y_hi));
            let at: Vec<(i32, i32)> = mib.iter().map(|&(k, f)| (self.px(k as f64), self.py(f).clamp(hi, lo))).collect();
            for &(x, y) in &at {
                area.draw(&Rectangle::new(
                    [(x - RADIUS - 1, y - RADIUS - 1), (x + RADIUS + 1, y + RADIUS + 1)],
                    mib_colour.stroke_width(2),
                ))?;
            }
            // Legend: the curve's line, then MIB's square with CPR and CMD.
            let row1 = label_y + text_h(LABEL) + GAP + text_h(NOTE) / 2;
            let row2 = row1 + text_h(NOTE) + GAP;
            let kx = x0 + LEGEND_KEY / 2;
            area.draw(&PathElement::new(vec![(x0, row1), (x0 + LEGEND_KEY, row1)], colour.stroke_width(2)))?;
            area.draw(&Circle::new((kx, row1), RADIUS, colour.filled()))?;
            let note = |t: &str, y: i32| {
                pen.text(area, t, Place::new((x0 + LEGEND_KEY + GAP, y), NOTE, HPos::Left, VPos::Center))
            };
            note("top-K circuits (every K measured)", row1)?;
            area.draw(&Rectangle::new(
                [(kx - RADIUS - 1, row2 - RADIUS - 1), (kx + RADIUS + 1, row2 + RADIUS + 1)],
                mib_colour.stroke_width(2),
            ))?;
            note(text, row2)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::circuit_layout::tests::{synthetic, GPT2_SMALL};
    use super::*;

    #[test]
    fn points_land_on_a_log_axis_between_the_guides() {
        let s = synthetic(GPT2_SMALL, 3);
        let points = [(1000, 0.97), (10, 0.2), (100, 0.8), (32491, 1.0), (1, -0.1)];
        let c = Curve::new(&points, &s).unwrap();
        assert_eq!(c.points.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 10, 100, 1000, 32491]);
        // Decades are equally spaced; 0 and 1 inside the plot, 1 above 0.
        assert_eq!(c.px(100.0) - c.px(10.0), c.px(1000.0) - c.px(100.0));
        assert_eq!((c.x_lo, c.x_hi), (0.0, 5.0));
        assert!(c.py(1.0) < c.py(0.0) && c.py(1.0) > c.plot_y && c.py(-0.1) < c.plot_y + PLOT_H);
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-faith-{}", std::process::id()));
        let written = write_faithfulness(&dir, &points, &s).unwrap();
        assert_eq!(written, [dir.join("faithfulness.png"), dir.join("faithfulness.svg")]);
        let svg = std::fs::read_to_string(&written[1]).unwrap();
        for want in ["clean (1)", "corrupted (0)", "EAP-IG (5 steps)", "log scale", "\n1e4\n"] {
            assert!(svg.contains(want), "faithfulness.svg lacks '{want}'");
        }
        // The point at K = 100 is drawn in the curve's colour.
        let img = image::open(&written[0]).unwrap().to_rgb8();
        let p = img.get_pixel(c.px(100.0) as u32, c.py(0.8) as u32).0;
        assert_eq!(p, COLOURS[0], "the point (100, 0.8)");
    }

    /// MIB's sizes are squares on the curve, its CPR and CMD in the legend.
    #[test]
    fn the_mib_curve_is_marked_with_cpr_and_cmd_in_the_legend() {
        let s = synthetic(GPT2_SMALL, 3);
        let n = s.edges.len();
        let mib = MibCurve::from_points(n, |k| Some(k as f64 / n as f64)).unwrap();
        let points: Vec<(usize, f64)> = mib.k.iter().zip(&mib.f).map(|(&k, &f)| (k, f)).collect();
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-faith-mib-{}", std::process::id()));
        let written = write_faithfulness_mib(&dir, &points, Some(&mib), &s).unwrap();
        let svg = std::fs::read_to_string(&written[1]).unwrap();
        for want in [format!("CPR {:.3}", mib.cpr), format!("CMD {:.3}", mib.cmd), "top-K circuits".into()] {
            assert!(svg.contains(&want), "faithfulness.svg lacks '{want}'");
        }
        // The background, the frame, one square per MIB point and the legend's.
        assert_eq!(svg.matches("<rect").count(), 2 + points.len() + 1, "rectangles");
        let c = Curve::new(&points, &s).unwrap().with_mib(Some(&mib));
        let img = image::open(&written[0]).unwrap().to_rgb8();
        let (x, y) = (c.px(points[5].0 as f64) + RADIUS + 1, c.py(points[5].1));
        assert_eq!(img.get_pixel(x as u32, y as u32).0, COLOURS[1], "the square's edge at {:?}", points[5]);
    }

    #[test]
    fn unplottable_points_are_errors() {
        let s = synthetic(GPT2_SMALL, 3);
        assert!(Curve::new(&[], &s).is_err());
        let e = Curve::new(&[(0, 0.5)], &s).err().unwrap().to_string();
        assert!(e.contains("K = 0"), "{e}");
        let e = Curve::new(&[(5, f64::NAN)], &s).err().unwrap().to_string();
        assert!(e.contains("NaN"), "{e}");
    }
}

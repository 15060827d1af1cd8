//! Scatter plot: estimate (x) against exact (y), one point per grid cell, one
//! colour per estimator, semi-transparent circles so overlapping points stay
//! visible, the line y = x where a perfect estimate would put every point, and
//! the largest misses labelled with their cell. Both axes share one range so
//! the line is the diagonal.

use super::colour::{rgb, Colour, FRAME};
use super::figure::{draw_header, header_height, write_figure, DrawResult, Figure, SUBTITLE, TITLE};
use super::font::{text_h, text_w, wrap};
use super::pen::{Pen, Place};
use super::ticks::{fmt_tick, nice_ticks};
use attrpatch_onnx::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use std::path::{Path, PathBuf};

/// One estimator's points, drawn in one colour and named in the legend.
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// The points' fill colour.
    pub colour: Colour,
    /// (x, y); non-finite points are left out.
    pub points: Vec<(f64, f64)>,
    /// Each point's cell, e.g. "L0 9 ' John'" (empty, or one per point): the
    /// largest misses are labelled with it.
    pub point_names: Vec<String>,
}

/// A scatter plot: its titles, axis labels and series.
pub struct Scatter {
    /// The figure's title.
    pub title: String,
    /// The hook, the metric and the model.
    pub subtitle: String,
    /// The x axis's label (the estimate).
    pub x_label: String,
    /// The y axis's label (the exact values).
    pub y_label: String,
    /// The estimators, drawn in order; each has a legend entry.
    pub series: Vec<Series>,
}

/// Colours for up to three estimators (plotly's first three).
pub const COLOURS: [Colour; 4] = [[99, 110, 250], [239, 85, 59], [0, 204, 150], [171, 99, 250]];

/// How many of the points furthest from y = x get their cell's name.
pub const LABELLED_MISSES: usize = 4;

const PLOT: i32 = 440;
const MARGIN: i32 = 14;
const GAP: i32 = 6;
const LABEL: f64 = 16.0;
const TICK: f64 = 15.0;
const NOTE: f64 = 14.0;
const RADIUS: i32 = 5;
const GUIDE: RGBColor = RGBColor(150, 150, 150);
const ZERO: RGBColor = RGBColor(215, 215, 215);

/// Draws the scatter plot as `path` (PNG) and the SVG beside it; returns both paths.
pub fn write_scatter(s: &Scatter, path: &Path) -> Result<Vec<PathBuf>> {
    if s.series.iter().all(|se| se.points.iter().all(|(x, y)| !x.is_finite() || !y.is_finite())) {
        return Err(Error::Input(format!("scatter plot '{}': no finite points to draw", s.title)));
    }
    if let Some(se) = s.series.iter().find(|se| !se.point_names.is_empty() && se.point_names.len() != se.points.len()) {
        return Err(Error::Input(format!(
            "scatter plot '{}': series '{}' has {} points but {} point names",
            s.title,
            se.name,
            se.points.len(),
            se.point_names.len()
        )));
    }
    write_figure(&Layout::new(s), path)
}

/// The shared axis range: every finite coordinate and 0, padded by 6%.
fn range(s: &Scatter) -> (f64, f64) {
    let coords = s.series.iter().flat_map(|se| finite(&se.points)).flat_map(|(_, (x, y))| [x, y]);
    let (lo, hi) = coords.fold((0f64, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    (lo - 0.06 * span, hi + 0.06 * span)
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = (usize, (f64, f64))> + '_ {
    points.iter().copied().enumerate().filter(|(_, (x, y))| x.is_finite() && y.is_finite())
}

/// The named points furthest from y = x, over all series, furthest first:
/// (series, point index).
fn largest_misses(s: &Scatter) -> Vec<(usize, usize)> {
    let mut all: Vec<(f64, usize, usize)> = s
        .series
        .iter()
        .enumerate()
        .filter(|(_, se)| !se.point_names.is_empty())
        .flat_map(|(k, se)| finite(&se.points).map(move |(i, (x, y))| ((x - y).abs(), k, i)))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all.into_iter().take(LABELLED_MISSES).map(|(_, k, i)| (k, i)).collect()
}

struct Layout<'a> {
    s: &'a Scatter,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    title: Vec<String>,
    subtitle: Vec<String>,
    plot_x: i32,
    plot_y: i32,
    legend_y: i32,
    width: i32,
    height: i32,
}

impl<'a> Layout<'a> {
    fn new(s: &'a Scatter) -> Self {
        let (lo, hi) = range(s);
        // About 5 ticks: fewer when the labels are wide, so they never crowd.
        let mut ticks = nice_ticks(lo, hi, 4);
        let tick_w = |t: &[f64]| t.iter().map(|&v| text_w(&fmt_tick(v), TICK)).max().unwrap_or(0);
        while ticks.len() > 3 && (tick_w(&ticks) + 3 * GAP) * ticks.len() as i32 > PLOT {
            ticks = ticks.iter().copied().step_by(2).collect();
        }
        let header_w = PLOT + 120;
        let title = wrap(&s.title, TITLE, header_w as u32);
        let subtitle = if s.subtitle.is_empty() { vec![] } else { wrap(&s.subtitle, SUBTITLE, header_w as u32) };
        let header_h = MARGIN + header_height(&title, &subtitle) + GAP * 2;
        let plot_x = MARGIN + text_h(LABEL) + GAP * 2 + tick_w(&ticks) + GAP;
        let plot_y = header_h;
        let legend_y = plot_y + PLOT + GAP + text_h(TICK) + GAP * 2 + text_h(LABEL) + GAP * 2;
        let legend_w = s.series.iter().map(|se| text_w(&se.name, TICK)).max().unwrap_or(0) + 2 * RADIUS + GAP;
        let widest_header = title
            .iter()
            .map(|l| text_w(l, TITLE))
            .chain(subtitle.iter().map(|l| text_w(l, SUBTITLE)))
            .max()
            .unwrap_or(0);
        let width = (plot_x + PLOT + 3 * GAP).max(plot_x + legend_w).max(MARGIN + widest_header) + MARGIN;
        let height = legend_y + s.series.len() as i32 * (text_h(TICK) + GAP) + MARGIN;
        Layout { s, lo, hi, ticks, title, subtitle, plot_x, plot_y, legend_y, width, height }
    }

    /// Canvas pixel of a value on either axis.
    fn px(&self, v: f64) -> i32 {
        self.plot_x + ((v - self.lo) / (self.hi - self.lo) * PLOT as f64).round() as i32
    }

    fn py(&self, v: f64) -> i32 {
        self.plot_y + PLOT - ((v - self.lo) / (self.hi - self.lo) * PLOT as f64).round() as i32
    }
}

impl Figure for Layout<'_> {
    fn size(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, pen: Pen) -> DrawResult<DB> {
        let s = self.s;
        draw_header(area, pen, self.width / 2, MARGIN, &self.title, &self.subtitle)?;
        let (x0, y0, x1, y1) = (self.plot_x, self.plot_y, self.plot_x + PLOT, self.plot_y + PLOT);
        // Grid lines at the ticks, the zero lines darker, then y = x.
        for &v in &self.ticks {
            let colour = if v == 0.0 { ZERO } else { RGBColor(238, 238, 238) };
            area.draw(&PathElement::new(vec![(self.px(v), y0), (self.px(v), y1)], colour))?;
            area.draw(&PathElement::new(vec![(x0, self.py(v)), (x1, self.py(v))], colour))?;
        }
        area.draw(&PathElement::new(vec![(x0, y1), (x1, y0)], GUIDE.stroke_width(1)))?;
        area.draw(&Rectangle::new([(x0, y0), (x1, y1)], FRAME.stroke_width(1)))?;
        for &v in &self.ticks {
            pen.text(area, &fmt_tick(v), Place::new((self.px(v), y1 + GAP), TICK, HPos::Center, VPos::Top))?;
            pen.text(area, &fmt_tick(v), Place::new((x0 - GAP, self.py(v)), TICK, HPos::Right, VPos::Center))?;
        }
        let x_label_y = y1 + GAP + text_h(TICK) + GAP * 2;
        pen.text(area, &s.x_label, Place::new(((x0 + x1) / 2, x_label_y), LABEL, HPos::Center, VPos::Top))?;
        let at = (MARGIN + text_h(LABEL) / 2, (y0 + y1) / 2);
        pen.text(area, &s.y_label, Place::new(at, LABEL, HPos::Center, VPos::Center).upwards())?;

        // Points: a translucent fill and a solid ring, so piles at zero show as darker rings.
        for se in &s.series {
            let c = rgb(se.colour);
            for (_, (x, y)) in finite(&se.points) {
                let at = (self.px(x), self.py(y));
                area.draw(&Circle::new(at, RADIUS, c.mix(0.25).filled()))?;
                area.draw(&Circle::new(at, RADIUS, c.stroke_width(1)))?;
            }
        }
        // The largest misses, named beside their point: to its right where the label
        // fits inside the plot, else to its left.
        for (k, i) in largest_misses(s) {
            let (x, y) = s.series[k].points[i];
            let (cx, cy) = (self.px(x), self.py(y));
            let label = s.series[k].point_names[i].clone();
            let fits_right = cx + RADIUS + 3 + text_w(&label, NOTE) < x1;
            let (dx, h) = if fits_right { (RADIUS + 3, HPos::Left) } else { (-(RADIUS + 3), HPos::Right) };
            pen.text(area, &label, Place::new((cx + dx, cy), NOTE, h, VPos::Center))?;
        }
        // Legend under the x label.
        for (k, se) in s.series.iter().enumerate() {
            let ly = self.legend_y + k as i32 * (text_h(TICK) + GAP) + text_h(TICK) / 2;
            let c = rgb(se.colour);
            area.draw(&Circle::new((x0 + RADIUS, ly), RADIUS, c.mix(0.25).filled()))?;
            area.draw(&Circle::new((x0 + RADIUS, ly), RADIUS, c.stroke_width(1)))?;
            pen.text(area, &se.name, Place::new((x0 + 2 * RADIUS + GAP, ly), TICK, HPos::Left, VPos::Center))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot() -> Scatter {
        Scatter {
            title: "Heads: estimate vs exact".into(),
            subtitle: "hook: attention out-projection input".into(),
            x_label: "estimate".into(),
            y_label: "exact".into(),
            series: vec![
                Series {
                    name: "attribution".into(),
                    colour: COLOURS[0],
                    points: vec![(0.5, 0.4), (-0.2, -0.05), (f64::NAN, 1.0), (0.0, 0.9)],
                    point_names: vec!["L0 H0".into(), "L0 H1".into(), "L0 H2".into(), "L1 H0".into()],
                },
                Series { name: "IG".into(), colour: COLOURS[1], points: vec![(0.41, 0.4)], point_names: vec![] },
            ],
        }
    }

    #[test]
    fn range_holds_every_point_and_misses_are_largest_first() {
        let s = plot();
        let (lo, hi) = range(&s);
        assert!(lo < -0.2 && hi > 0.9 && lo > -0.4 && hi < 1.1, "{lo} {hi}");
        // (0, 0.9) is the furthest from y = x, then (-0.2, -0.05), then (0.5, 0.4); NaN is skipped.
        assert_eq!(largest_misses(&s), [(0, 3), (0, 1), (0, 0)]);
    }

    #[test]
    fn points_are_drawn_in_their_colour_where_their_values_say() {
        let s = plot();
        let l = Layout::new(&s);
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-scatter-px-{}", std::process::id()));
        let path = dir.join("s.png");
        write_scatter(&s, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // The ring of the attribution point (0.0, 0.9), one radius to its right.
        let (cx, cy) = (l.px(0.0), l.py(0.9));
        let ring = (cx + RADIUS - 1..=cx + RADIUS + 1).map(|x| img.get_pixel(x as u32, cy as u32).0);
        let blueish = |p: [u8; 3]| p[2] > 180 && p[0] < 200 && p[1] < 200;
        assert!(ring.clone().any(blueish), "{:?}", ring.collect::<Vec<_>>());
    }

    #[test]
    fn nothing_finite_is_an_error() {
        let mut s = plot();
        s.series.iter_mut().for_each(|se| {
            se.points = vec![(f64::NAN, 0.0)];
            se.point_names = vec![];
        });
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-scatter-{}", std::process::id()));
        let e = write_scatter(&s, &dir.join("s.png")).unwrap_err().to_string();
        assert!(e.contains("no finite points"), "{e}");
    }
}

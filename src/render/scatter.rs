//! Scatter plot PNG: estimate (x) against exact (y), one point per grid
//! cell, one colour per estimator, the line y = x where a perfect estimate
//! would put every point. Both axes share one range so the line is the
//! diagonal.

use super::draw::{draw_text, fill_rect, fmt_tick, frame, text_w, write_png, Colour, CH, GAP, MARGIN, WHITE};
use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

pub struct Series {
    pub name: String,
    pub colour: Colour,
    /// (x, y); non-finite points are left out.
    pub points: Vec<(f64, f64)>,
}

pub struct Scatter {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const PLOT: u32 = 480;
const DOT: i64 = 5;
/// About this many ticks per axis, at round values.
const N_TICKS: usize = 5;
const GUIDE: Colour = [170, 170, 170];
const ZERO: Colour = [225, 225, 225];

/// Colours for up to three estimators (plotly's first three).
pub const COLOURS: [Colour; 3] = [[99, 110, 250], [239, 85, 59], [0, 204, 150]];

pub fn write_scatter_png(s: &Scatter, path: &Path) -> Result<()> {
    if s.series.iter().all(|se| se.points.iter().all(|(x, y)| !x.is_finite() || !y.is_finite())) {
        return Err(Error::Input(format!("scatter plot '{}': no finite points to draw", s.title)));
    }
    write_png(&render(s), path)
}

/// The shared axis range: every finite coordinate and 0, padded by 5%.
fn range(s: &Scatter) -> (f64, f64) {
    let coords = s
        .series
        .iter()
        .flat_map(|se| se.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .flat_map(|&(x, y)| [x, y]);
    let (lo, hi) = coords.fold((0f64, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// Multiples of a round step (1, 2 or 5 times a power of ten) inside [lo, hi]:
/// the largest such step that still gives at least four ticks.
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let ticks = |step: f64| -> Vec<f64> {
        // + 0.0 turns -0 into 0.
        ((lo / step).ceil() as i64..=(hi / step).floor() as i64).map(|k| k as f64 * step + 0.0).collect()
    };
    let magnitude = 10f64.powf(((hi - lo) / (N_TICKS - 1) as f64).log10().floor());
    let candidates = [10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1].map(|m| m * magnitude);
    candidates.iter().map(|&st| ticks(st)).find(|t| t.len() >= 4).unwrap_or_else(|| ticks(candidates[6]))
}

fn render(s: &Scatter) -> RgbImage {
    let (lo, hi) = range(s);
    let ticks = nice_ticks(lo, hi);
    let labels: Vec<String> = ticks.iter().map(|&v| fmt_tick(v)).collect();
    let tick_w = labels.iter().map(|l| text_w(l)).max().unwrap_or(0);
    let plot_x = MARGIN + CH + GAP + tick_w + GAP;
    let plot_y = MARGIN + CH + 2 * GAP;
    let x_label_y = plot_y + PLOT + GAP + CH + GAP;
    let legend_y = x_label_y + CH + 2 * GAP;
    let legend_w = s.series.iter().map(|se| text_w(&se.name)).max().unwrap_or(0);
    let width =
        (plot_x + PLOT + 2 * MARGIN).max(text_w(&s.title) + 2 * MARGIN).max(plot_x + CH + GAP + legend_w + MARGIN);
    let height = legend_y + s.series.len() as u32 * (CH + GAP) + MARGIN;
    let mut img = RgbImage::from_pixel(width, height, Rgb(WHITE));
    let (px, py, side) = (plot_x as i64, plot_y as i64, PLOT as i64);
    let to_px = |v: f64| ((v - lo) / (hi - lo) * (side - 1) as f64).round() as i64;
    let (sx, sy) = (|x: f64| px + to_px(x), |y: f64| py + side - 1 - to_px(y));

    draw_text(&mut img, ((width - text_w(&s.title)) / 2) as i64, MARGIN as i64, &s.title, false);
    if lo < 0.0 && hi > 0.0 {
        fill_rect(&mut img, sx(0.0), py, 1, side, ZERO);
        fill_rect(&mut img, px, sy(0.0), side, 1, ZERO);
    }
    // y = x, dotted.
    for i in (0..side).step_by(3) {
        fill_rect(&mut img, px + i, py + side - 1 - i, 1, 1, GUIDE);
    }
    frame(&mut img, px, py, side, side);
    for (v, label) in ticks.iter().zip(&labels) {
        let w = text_w(label) as i64;
        draw_text(&mut img, (sx(*v) - w / 2).clamp(0, width as i64 - w), py + side + GAP as i64, label, false);
        draw_text(&mut img, px - GAP as i64 - w, sy(*v) - CH as i64 / 2, label, false);
    }
    let xl = text_w(&s.x_label) as i64;
    draw_text(&mut img, px + side / 2 - xl / 2, x_label_y as i64, &s.x_label, false);
    let yl = text_w(&s.y_label) as i64;
    draw_text(&mut img, MARGIN as i64, (py + side / 2 - yl / 2).max(0), &s.y_label, true);

    for (k, se) in s.series.iter().enumerate() {
        for &(x, y) in se.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
            fill_rect(&mut img, sx(x) - DOT / 2, sy(y) - DOT / 2, DOT, DOT, se.colour);
        }
        let ly = legend_y as i64 + k as i64 * (CH + GAP) as i64;
        fill_rect(&mut img, px, ly + 3, CH as i64 - 6, CH as i64 - 6, se.colour);
        draw_text(&mut img, px + CH as i64 + GAP as i64, ly, &se.name, false);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot() -> Scatter {
        Scatter {
            title: "Heads: estimate vs exact".into(),
            x_label: "estimate".into(),
            y_label: "exact".into(),
            series: vec![
                Series {
                    name: "attribution".into(),
                    colour: COLOURS[0],
                    points: vec![(0.5, 0.4), (-0.2, -0.1), (f64::NAN, 1.0)],
                },
                Series { name: "IG".into(), colour: COLOURS[1], points: vec![(0.41, 0.4)] },
            ],
        }
    }

    #[test]
    fn points_land_where_their_values_say() {
        let s = plot();
        let img = render(&s);
        let (lo, hi) = range(&s);
        assert!(lo < -0.2 && hi > 0.5 && lo > -0.3 && hi < 0.6, "{lo} {hi}");
        // The attribution point (0.5, 0.4): find a pixel of its colour right of and above the centre.
        let coloured: Vec<(u32, u32)> =
            img.enumerate_pixels().filter(|(_, _, p)| p.0 == COLOURS[0]).map(|(x, y, _)| (x, y)).collect();
        // Two points of 25 pixels plus the legend box; the NaN point is not drawn.
        assert_eq!(coloured.len(), 2 * 25 + ((CH - 6) * (CH - 6)) as usize);
    }

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        let labels: Vec<String> = nice_ticks(-0.0561, 1.06).iter().map(|&v| fmt_tick(v)).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let t = nice_ticks(-2.3e-3, 7.1e-3);
        assert_eq!(t.len(), 5, "{t:?}");
        assert!(t.iter().all(|&v| (-2.3e-3..=7.1e-3).contains(&v)));
    }

    #[test]
    fn nothing_finite_is_an_error() {
        let mut s = plot();
        s.series.iter_mut().for_each(|se| se.points = vec![(f64::NAN, 0.0)]);
        let dir = std::env::temp_dir().join(format!("attrpatch-scatter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = write_scatter_png(&s, &dir.join("s.png")).unwrap_err().to_string();
        assert!(e.contains("no finite points"), "{e}");
    }
}

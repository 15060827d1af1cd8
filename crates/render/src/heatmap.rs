//! Heatmaps in the style of plotly's `px.imshow(..., color_continuous_scale="RdBu",
//! color_continuous_midpoint=0)`: layer 0 at the top, RdBu over [-m, m] (blue
//! positive), a title naming the hook, metric and model, axis and tick labels,
//! and one colour bar as tall as the plot at round values. Several grids can sit
//! side by side on one shared scale. The canvas is sized from the measured text,
//! so it holds the content and nothing else.

use super::colour::{rdbu, rgb, FRAME};
use super::data::Grid;
use super::figure::{draw_header, header_height, write_figure, DrawResult, Figure, SUBTITLE, TITLE};
use super::font::{text_h, text_w, wrap};
use super::pen::{Pen, Place};
use super::ticks::{fmt_tick, nice_ticks};
use attrpatch_onnx::error::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use std::path::{Path, PathBuf};

const MARGIN: i32 = 14;
const GAP: i32 = 6;
const PANEL_TITLE: f64 = 18.0;
const LABEL: f64 = 16.0;
const TICK: f64 = 15.0;
const MAX_CELL: i32 = 72;
const MIN_CELL: i32 = 4;
/// Cells shrink so that all panels together stay about this wide (one panel, or
/// several side by side), and each this tall.
const MAX_PLOT_W: i32 = 760;
const MAX_PANELS_W: i32 = 1000;
const MAX_PLOT_H: i32 = 560;
/// Side by side, panels whose cells would be narrower than this are stacked instead.
const MIN_SIDE_BY_SIDE_CELL: i32 = 32;
/// Narrowest header: below this the title wraps less and the figure is padded.
const MIN_HEADER_W: i32 = 600;
const BAR_W: i32 = 16;
const MAX_LABEL_CHARS: usize = 18;

/// Draws `grid` as `path` (PNG) and the SVG beside it; returns both paths.
pub fn write_heatmap(grid: &Grid, path: &Path) -> Result<Vec<PathBuf>> {
    grid.validate()?;
    let fig = Heatmaps::new(vec![grid], grid.abs_max(), &grid.title, &grid.subtitle, false);
    write_figure(&fig, path)
}

/// Draws several grids side by side with one colour bar, on one scale (the
/// largest |value| of all), so equal colours mean equal values across panels;
/// each panel is titled by its grid's title, the figure by `title` and `subtitle`.
pub fn write_heatmaps(grids: &[&Grid], title: &str, subtitle: &str, path: &Path) -> Result<Vec<PathBuf>> {
    for g in grids {
        g.validate()?;
    }
    let m = grids.iter().map(|g| g.abs_max()).fold(f64::MIN_POSITIVE, f64::max);
    let fig = Heatmaps::new(grids.to_vec(), m, title, subtitle, true);
    write_figure(&fig, path)
}

/// How a panel's column labels are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cols {
    /// Names across the cells.
    Across,
    /// Names reading upwards, ending at the plot.
    Upwards,
    /// Position numbers across on one row, tokens reading upwards on a second.
    IndexAndToken,
}

/// One panel's place: everything in canvas pixels.
#[derive(Debug)]
struct Panel {
    plot_x: i32,
    plot_y: i32,
    plot_w: i32,
    plot_h: i32,
    cols: Cols,
    row_stride: usize,
    col_stride: usize,
    token_stride: usize,
    /// Height of the column numbers' row (IndexAndToken) or of the names.
    col_names_h: i32,
    /// Right edge of everything the panel draws.
    right: i32,
    /// Bottom edge of everything the panel draws.
    bottom: i32,
}

struct Heatmaps<'a> {
    grids: Vec<&'a Grid>,
    m: f64,
    panel_titles: bool,
    title: Vec<String>,
    subtitle: Vec<String>,
    cell: i32,
    panels: Vec<Panel>,
    bar_x: i32,
    bar_y: i32,
    bar_h: i32,
    ticks: Vec<f64>,
    width: i32,
    height: i32,
}

/// Labels are cut so a long token does not make the image huge; control
/// characters are shown escaped.
fn clip(s: &str) -> String {
    let s: String =
        s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect();
    if s.chars().count() <= MAX_LABEL_CHARS {
        return s;
    }
    s.chars().take(MAX_LABEL_CHARS - 1).chain(['…']).collect()
}

/// Every n-th label, so labels `extent` pixels apart never overlap.
fn stride(extent: i32, cell: i32) -> usize {
    ((extent + cell - 1) / cell.max(1)).max(1) as usize
}

fn widest<'s>(names: impl Iterator<Item = &'s String>, size: f64) -> i32 {
    names.map(|s| text_w(&clip(s), size)).max().unwrap_or(0)
}

impl<'a> Heatmaps<'a> {
    fn new(grids: Vec<&'a Grid>, m: f64, title: &str, subtitle: &str, panel_titles: bool) -> Self {
        let n = grids.len().max(1) as i32;
        let cell_for = |width: i32, across: i32| {
            grids
                .iter()
                .map(|g| {
                    let (rows, cols) = (g.row_names.len().max(1) as i32, g.col_names.len().max(1) as i32);
                    (width / (across * cols)).min(MAX_PLOT_H / rows).clamp(MIN_CELL, MAX_CELL)
                })
                .min()
                .unwrap_or(MAX_CELL)
        };
        // Several wide grids (positions) side by side would shrink to unreadable
        // cells: they go one under the other instead.
        let stacked = n > 1 && cell_for(MAX_PANELS_W, n) < MIN_SIDE_BY_SIDE_CELL;
        let cell = match (n, stacked) {
            (1, _) => cell_for(MAX_PLOT_W, 1),
            (_, true) => cell_for(MAX_PLOT_W, 1),
            (_, false) => cell_for(MAX_PANELS_W, n),
        };
        let (th, lh) = (text_h(TICK), text_h(TICK) + 3);
        let (label_h, panel_title_h) = (text_h(LABEL), text_h(PANEL_TITLE));

        // Panels first at y = 0 (the header's height depends on the total width),
        // shifted down once the header is known.
        let mut panels = vec![];
        let (mut x, mut y) = (MARGIN, 0);
        for g in &grids {
            let (rows, cols) = (g.row_names.len() as i32, g.col_names.len() as i32);
            let (plot_w, plot_h) = (cols * cell, rows * cell);
            let row_names_w = widest(g.row_names.iter(), TICK);
            let mut left = label_h + GAP + row_names_w + GAP;
            let centre_room = |w: i32| (w - plot_w).max(0) / 2;
            let head_w = if panel_titles { text_w(&g.title, PANEL_TITLE) } else { 0 };
            let axis_w = text_w(&g.col_label, LABEL);
            left = left.max(centre_room(head_w.max(axis_w)));
            let plot_x = x + left;
            let plot_y = y + if panel_titles { panel_title_h + GAP * 2 } else { 0 };

            let has_tokens = !g.tokens.is_empty();
            let names_w = widest(g.col_names.iter(), TICK);
            let (cols_mode, col_stride, token_stride, names_h, below) = if has_tokens {
                let index_w = text_w(&(g.col_names.len() - 1).to_string(), TICK);
                let token_len = widest(g.tokens.iter(), TICK);
                (Cols::IndexAndToken, stride(index_w + 4, cell), stride(lh, cell), th, th + GAP + token_len)
            } else if names_w + 4 <= cell {
                (Cols::Across, 1, 1, th, th)
            } else {
                (Cols::Upwards, stride(lh, cell), 1, names_w, names_w)
            };
            let bottom = plot_y + plot_h + GAP + below + GAP * 2 + label_h;
            let right = plot_x + plot_w + centre_room(head_w.max(axis_w));
            panels.push(Panel {
                plot_x,
                plot_y,
                plot_w,
                plot_h,
                cols: cols_mode,
                row_stride: stride(lh, cell),
                col_stride,
                token_stride,
                col_names_h: names_h,
                right,
                bottom,
            });
            if stacked {
                y = bottom + GAP * 4;
            } else {
                x = right + GAP * 4;
            }
        }

        // The colour bar: as tall as the plot (from the first plot's top to the
        // last one's bottom when stacked), ticks at round values spaced at least
        // 1.6 text heights apart.
        let bar_y = panels.first().map_or(0, |p| p.plot_y);
        let bar_h = panels.last().map_or(cell, |p| p.plot_y + p.plot_h) - bar_y;
        let plot_h = bar_h;
        let most = (plot_h / (th * 8 / 5)).max(1) as usize + 1;
        let ticks = [5, 4, 3, 2]
            .iter()
            .map(|&want| nice_ticks(-m, m, want))
            .find(|t| t.len() <= most)
            .unwrap_or_else(|| vec![0.0]);
        let last_right = panels.iter().map(|p| p.plot_x + p.plot_w).max().unwrap_or(MARGIN);
        let bar_x = last_right + GAP * 3;
        let tick_w = ticks.iter().map(|&v| text_w(&fmt_tick(v), TICK)).max().unwrap_or(0);
        let bar_right = bar_x + BAR_W + GAP + tick_w + GAP + text_h(LABEL);
        let content_right = panels.iter().map(|p| p.right).max().unwrap_or(MARGIN).max(bar_right);

        // Header wrapped to the content's width.
        let header_w = (content_right - MARGIN).max(MIN_HEADER_W);
        let title = wrap(title, TITLE, header_w as u32);
        let subtitle = if subtitle.is_empty() { vec![] } else { wrap(subtitle, SUBTITLE, header_w as u32) };
        let header_h = MARGIN + header_height(&title, &subtitle) + GAP * 2;
        let widest_header = title
            .iter()
            .map(|l| text_w(l, TITLE))
            .chain(subtitle.iter().map(|l| text_w(l, SUBTITLE)))
            .max()
            .unwrap_or(0);
        for p in &mut panels {
            p.plot_y += header_h;
            p.bottom += header_h;
        }
        let width = content_right.max(MARGIN + widest_header).max(MARGIN + MIN_HEADER_W) + MARGIN;
        // Content narrower than the header is centred under it.
        let shift = (width - MARGIN - content_right) / 2;
        for p in &mut panels {
            p.plot_x += shift;
            p.right += shift;
        }
        let bar_x = bar_x + shift;
        let plots_bottom = panels.iter().map(|p| p.bottom).max().unwrap_or(header_h);
        let height = plots_bottom.max(header_h + plot_h + th) + MARGIN;
        Heatmaps {
            grids,
            m,
            panel_titles,
            title,
            subtitle,
            cell,
            panels,
            bar_x,
            bar_y: bar_y + header_h,
            bar_h,
            ticks,
            width,
            height,
        }
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        pen: Pen,
        g: &Grid,
        p: &Panel,
    ) -> DrawResult<DB> {
        let cell = self.cell;
        if self.panel_titles {
            let at = (p.plot_x + p.plot_w / 2, p.plot_y - GAP - text_h(PANEL_TITLE));
            pen.text(area, &g.title, Place::new(at, PANEL_TITLE, HPos::Center, VPos::Top))?;
        }
        for (r, row) in g.values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let (x, y) = (p.plot_x + c as i32 * cell, p.plot_y + r as i32 * cell);
                area.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], rgb(rdbu(v, self.m)).filled()))?;
            }
        }
        // A frame, so near-white cells still show the plot's extent.
        let (x1, y1) = (p.plot_x + p.plot_w, p.plot_y + p.plot_h);
        area.draw(&Rectangle::new([(p.plot_x - 1, p.plot_y - 1), (x1, y1)], FRAME.stroke_width(1)))?;

        // Rows: names right-aligned to the plot, the axis label reading upwards.
        for (r, name) in g.row_names.iter().enumerate().step_by(p.row_stride) {
            let y = p.plot_y + r as i32 * cell + cell / 2;
            pen.text(area, &clip(name), Place::new((p.plot_x - GAP, y), TICK, HPos::Right, VPos::Center))?;
        }
        let row_names_w = widest(g.row_names.iter(), TICK);
        let label_x = p.plot_x - GAP - row_names_w - GAP - text_h(LABEL) / 2;
        let at = (label_x, p.plot_y + p.plot_h / 2);
        pen.text(area, &g.row_label, Place::new(at, LABEL, HPos::Center, VPos::Center).upwards())?;

        // Columns.
        let below = y1 + GAP;
        let centre = |c: usize| p.plot_x + c as i32 * cell + cell / 2;
        let across = |at| Place::new(at, TICK, HPos::Center, VPos::Top);
        let upwards = |at| Place::new(at, TICK, HPos::Right, VPos::Center).upwards();
        match p.cols {
            Cols::Across => {
                for (c, name) in g.col_names.iter().enumerate() {
                    pen.text(area, &clip(name), across((centre(c), below)))?;
                }
            }
            Cols::Upwards => {
                for (c, name) in g.col_names.iter().enumerate().step_by(p.col_stride) {
                    pen.text(area, &clip(name), upwards((centre(c), below)))?;
                }
            }
            Cols::IndexAndToken => {
                for c in (0..g.col_names.len()).step_by(p.col_stride) {
                    pen.text(area, &c.to_string(), across((centre(c), below)))?;
                }
                let token_top = below + p.col_names_h + GAP;
                for (c, token) in g.tokens.iter().enumerate().step_by(p.token_stride) {
                    pen.text(area, &clip(token), upwards((centre(c), token_top)))?;
                }
            }
        }
        let at = (p.plot_x + p.plot_w / 2, p.bottom);
        pen.text(area, &g.col_label, Place::new(at, LABEL, HPos::Center, VPos::Bottom))?;
        Ok(())
    }

    /// The colour bar beside the plots, as tall as they are, with value labels
    /// and no tick marks (as plotly: a mark before "0" would read as a minus sign).
    fn draw_colour_bar<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, pen: Pen) -> DrawResult<DB> {
        let (x, y, h) = (self.bar_x, self.bar_y, self.bar_h.max(2));
        // Top row = +m, bottom row = -m.
        let value_at = |i: i32| self.m * (1.0 - 2.0 * i as f64 / (h - 1) as f64);
        // At most 256 bands (finer than the scale's 8-bit steps; keeps tall SVG bars small).
        let band = (h / 256 + 1) as usize;
        for i in (0..h).step_by(band) {
            let bottom = (i + band as i32).min(h);
            let colour = rgb(rdbu(value_at((i + bottom - 1) / 2), self.m));
            area.draw(&Rectangle::new([(x, y + i), (x + BAR_W, y + bottom)], colour.filled()))?;
        }
        area.draw(&Rectangle::new([(x - 1, y - 1), (x + BAR_W, y + h)], FRAME.stroke_width(1)))?;
        for &v in &self.ticks {
            let ty = y + ((self.m - v) / (2.0 * self.m) * (h - 1) as f64).round() as i32;
            pen.text(area, &fmt_tick(v), Place::new((x + BAR_W + GAP, ty), TICK, HPos::Left, VPos::Center))?;
        }
        let tick_w = self.ticks.iter().map(|&v| text_w(&fmt_tick(v), TICK)).max().unwrap_or(0);
        let label_x = x + BAR_W + GAP + tick_w + GAP + text_h(LABEL) / 2;
        let label = self.grids.first().map_or(String::new(), |g| g.value_label.clone());
        pen.text(area, &label, Place::new((label_x, y + h / 2), LABEL, HPos::Center, VPos::Center).upwards())?;
        Ok(())
    }
}

impl Figure for Heatmaps<'_> {
    fn size(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, pen: Pen) -> DrawResult<DB> {
        draw_header(area, pen, self.width / 2, MARGIN, &self.title, &self.subtitle)?;
        for (g, p) in self.grids.iter().zip(&self.panels) {
            self.draw_panel(area, pen, g, p)?;
        }
        self.draw_colour_bar(area, pen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::{grid, temp_dir};

    fn heads_grid() -> Grid {
        grid("heads", &["0", "1", "2", "3"], vec![vec![0.0, 0.8, -0.3, 0.05], vec![-0.5, f64::NAN, 0.2, -0.02]])
    }

    /// The centre pixel of cell (r, c) of the first panel.
    fn pixel(img: &image::RgbImage, f: &Heatmaps, r: i32, c: i32) -> [u8; 3] {
        let p = &f.panels[0];
        let (x, y) = (p.plot_x + c * f.cell + f.cell / 2, p.plot_y + r * f.cell + f.cell / 2);
        img.get_pixel(x as u32, y as u32).0
    }

    #[test]
    fn cells_have_rdbu_colours_where_the_layout_puts_them() {
        let g = heads_grid();
        let dir = temp_dir("heatmap");
        let path = dir.join("heads.png");
        let written = write_heatmap(&g, &path).unwrap();
        assert_eq!(written, [path.clone(), dir.join("heads.svg")]);
        let img = image::open(&path).unwrap().to_rgb8();
        let f = Heatmaps::new(vec![&g], g.abs_max(), &g.title, &g.subtitle, false);
        assert_eq!((img.width(), img.height()), f.size());
        let [r, g_, b] = pixel(&img, &f, 0, 1); // +0.8, the max
        assert!(b as i32 > r as i32 + 80 && b > g_, "max positive not blue: {r},{g_},{b}");
        let [r, g_, b] = pixel(&img, &f, 1, 0); // -0.5, the most negative
        assert!(r as i32 > b as i32 + 80 && r > g_, "most negative not red: {r},{g_},{b}");
        assert!(pixel(&img, &f, 0, 0).iter().all(|&ch| ch >= 240), "zero not white");
        assert_eq!(pixel(&img, &f, 1, 1), crate::colour::NAN_GREY);
    }

    #[test]
    fn colour_bar_is_as_tall_as_the_plot_and_canvas_is_cropped() {
        let g = heads_grid();
        let f = Heatmaps::new(vec![&g], g.abs_max(), &g.title, &g.subtitle, false);
        let p = &f.panels[0];
        // Nothing is further than a margin (plus the bar's labels) from the content, but for
        // the header's narrowest width, under which the content is centred.
        let cropped = (f.bar_x + 120 + MARGIN).max(MIN_HEADER_W + 2 * MARGIN);
        assert!(f.width <= cropped, "{} vs bar at {}", f.width, f.bar_x);
        assert!(f.height <= p.bottom + MARGIN + 1, "{} vs {}", f.height, p.bottom);
        assert!(f.ticks.len() >= 3 && f.ticks.contains(&0.0), "{:?}", f.ticks);
    }

    #[test]
    fn wide_panels_stack_and_narrow_ones_sit_side_by_side() {
        let tokens: Vec<String> = (0..14).map(|i| format!("{i} tok")).collect();
        let cols: Vec<&str> = tokens.iter().map(|s| s.as_str()).collect();
        let wide = grid("positions", &cols, vec![vec![0.5; 14]; 3]);
        let f = Heatmaps::new(vec![&wide, &wide, &wide], 1.0, "t", "s", true);
        let (a, b) = (&f.panels[0], &f.panels[1]);
        assert_eq!(a.plot_x, b.plot_x, "stacked: {a:?} {b:?}");
        assert!(b.plot_y > a.plot_y + a.plot_h, "{a:?} {b:?}");
        // One colour bar from the first plot's top to the last one's bottom.
        let last = &f.panels[2];
        assert_eq!((f.bar_y, f.bar_h), (a.plot_y, last.plot_y + last.plot_h - a.plot_y));
        assert!(f.cell >= MIN_SIDE_BY_SIDE_CELL);

        let narrow = heads_grid();
        let f = Heatmaps::new(vec![&narrow, &narrow, &narrow], 1.0, "t", "s", true);
        let (a, b) = (&f.panels[0], &f.panels[1]);
        assert_eq!(a.plot_y, b.plot_y, "side by side: {a:?} {b:?}");
        assert!(b.plot_x > a.plot_x + a.plot_w);
        assert_eq!((f.bar_y, f.bar_h), (a.plot_y, a.plot_h));
    }

    /// Writes GPT-2-small-sized sample figures for a person to look at:
    /// `cargo test --lib render::heatmap -- --ignored`, files in $TMPDIR/render_samples/.
    #[test]
    #[ignore]
    fn write_samples() {
        let dir = std::env::temp_dir().join("render_samples");
        std::fs::create_dir_all(&dir).unwrap();
        let wave = |r: usize, c: usize| ((r * 7 + c * 3) as f64 * 0.37).sin() * (r as f64 + 1.0) / 12.0;
        let heads: Vec<Vec<f64>> = (0..12).map(|r| (0..12).map(|c| wave(r, c)).collect()).collect();
        let names: Vec<String> = (0..12).map(|h| h.to_string()).collect();
        let g = grid("heads", &names.iter().map(|s| s.as_str()).collect::<Vec<_>>(), heads);
        write_heatmap(&g, &dir.join("heads12.png")).unwrap();
        let tokens: Vec<String> = (0..40).map(|i| format!(" token{i}")).collect();
        let cols: Vec<String> = tokens.iter().enumerate().map(|(i, t)| format!("{i} {t}")).collect();
        let positions: Vec<Vec<f64>> = (0..12).map(|r| (0..40).map(|c| wave(r, c) * 1e-3).collect()).collect();
        let mut g = grid("positions", &cols.iter().map(|s| s.as_str()).collect::<Vec<_>>(), positions);
        g.tokens = tokens;
        write_heatmap(&g, &dir.join("positions40.png")).unwrap();
        write_heatmaps(&[&g, &g], "two panels", "subtitle", &dir.join("compare40.png")).unwrap();
    }

    #[test]
    fn big_grids_stay_readable_size() {
        let g = grid("heads", &[""; 200], vec![vec![1.0; 200]; 48]);
        let f = Heatmaps::new(vec![&g], 1.0, "t", "", false);
        assert!(f.width < 1200, "{}", f.width);
        assert!(f.panels[0].row_stride > 1);
    }
}

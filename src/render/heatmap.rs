//! PNG heatmap in the style of plotly's `px.imshow(..., color_continuous_scale="RdBu",
//! color_continuous_midpoint=0)`: RdBu colours over [-m, m], a title, axis
//! labels, tick labels and a colour bar, drawn with the 8x8 bitmap font.

use super::data::Grid;
use super::draw::{draw_text, fill_rect, fmt_tick, frame, text_w, write_png, Colour, CH, GAP, MARGIN, WHITE};
use crate::error::Result;
use image::{Rgb, RgbImage};
use std::path::Path;

/// plotly.colors.sequential.RdBu, lowest value (red) to highest (blue).
const RDBU: [Colour; 11] = [
    [103, 0, 31],
    [178, 24, 43],
    [214, 96, 77],
    [244, 165, 130],
    [253, 219, 199],
    [247, 247, 247],
    [209, 229, 240],
    [146, 197, 222],
    [67, 147, 195],
    [33, 102, 172],
    [5, 48, 97],
];
const NAN_GREY: Colour = [150, 150, 150];

const MAX_CELL: u32 = 48;
const MIN_CELL: u32 = 4;
const MAX_PLOT: u32 = 2000; // cells shrink so the plot stays under this, either way
const MAX_LABEL_CHARS: usize = 24;
const BAR_W: u32 = 20;
const BAR_MIN_H: u32 = 200; // room for the ticks even when the grid is one row
const N_TICKS: usize = 5;

/// Draw `grid` as a heatmap PNG at `path`.
pub fn write_heatmap_png(grid: &Grid, path: &Path) -> Result<()> {
    grid.validate()?;
    write_png(&render(grid, grid.abs_max()), path)
}

/// Draw several grids side by side on one colour scale (the largest |value|
/// of all), so equal colours mean equal values across the panels.
pub fn write_heatmaps_png(grids: &[&Grid], path: &Path) -> Result<()> {
    for g in grids {
        g.validate()?;
    }
    let m = grids.iter().map(|g| g.abs_max()).fold(f64::MIN_POSITIVE, f64::max);
    let panels: Vec<RgbImage> = grids.iter().map(|g| render(g, m)).collect();
    let width = panels.iter().map(|p| p.width()).sum::<u32>().max(1);
    let height = panels.iter().map(|p| p.height()).max().unwrap_or(1);
    let mut img = RgbImage::from_pixel(width, height, Rgb(WHITE));
    let mut x = 0;
    for p in &panels {
        image::imageops::replace(&mut img, p, x as i64, 0);
        x += p.width();
    }
    write_png(&img, path)
}

/// Where everything goes, in pixels. The plot's top-left cell starts at (plot_x, plot_y).
#[derive(Debug)]
struct Layout {
    width: u32,
    height: u32,
    cell: u32,
    plot_x: u32,
    plot_y: u32,
    plot_w: u32,
    plot_h: u32,
    row_tick_w: u32,
    row_label_y: u32,
    cols_vertical: bool,
    col_label_x: u32,
    col_label_y: u32,
    bar_x: u32,
    bar_h: u32,
    value_label_x: u32,
    ticks: Vec<(f64, String)>,
}

fn layout(grid: &Grid, m: f64) -> Layout {
    let rows = grid.row_names.len().max(1) as u32;
    let cols = grid.col_names.len().max(1) as u32;
    let cell = (MAX_PLOT / cols).min(MAX_PLOT / rows).clamp(MIN_CELL, MAX_CELL);
    let (plot_w, plot_h) = (cols * cell, rows * cell);

    let widest = |names: &[String]| names.iter().map(|s| text_w(&clip(s))).max().unwrap_or(0);
    let row_tick_w = widest(&grid.row_names);
    let col_tick_len = widest(&grid.col_names);
    // Column names that do not fit across a cell are turned to read upwards.
    let cols_vertical = col_tick_len + 4 > cell;
    let col_tick_h = if cols_vertical { col_tick_len } else { CH };

    let plot_x = MARGIN + CH + GAP + row_tick_w + GAP; // row axis label, its ticks
    let plot_y = MARGIN + CH + 2 * GAP; // title
    let col_label_w = text_w(&grid.col_label);
    let col_label_x = (plot_x + plot_w / 2).saturating_sub(col_label_w / 2).max(MARGIN);
    // Row axis label centred on the plot but below the title; a short plot's label
    // hangs below it, so the column axis label goes below that.
    let row_label_len = text_w(&grid.row_label);
    let row_label_y = (plot_y + plot_h / 2).saturating_sub(row_label_len / 2).max(plot_y - GAP);
    let col_label_y = (plot_y + plot_h + GAP + col_tick_h).max(row_label_y + row_label_len) + GAP;

    let ticks: Vec<(f64, String)> =
        (0..N_TICKS).map(|i| m * (1.0 - 2.0 * i as f64 / (N_TICKS - 1) as f64)).map(|v| (v, fmt_tick(v))).collect();
    let tick_w = ticks.iter().map(|(_, s)| text_w(s)).max().unwrap_or(0);
    let bar_x = (plot_x + plot_w).max(col_label_x + col_label_w) + 3 * GAP;
    let bar_h = plot_h.max(BAR_MIN_H).max(text_w(&grid.value_label));
    let value_label_x = bar_x + BAR_W + GAP + tick_w + GAP;

    let width = (value_label_x + CH + MARGIN).max(text_w(&grid.title) + 2 * MARGIN);
    let height = (col_label_y + CH).max(plot_y + bar_h + CH / 2) + MARGIN;
    Layout {
        width,
        height,
        cell,
        plot_x,
        plot_y,
        plot_w,
        plot_h,
        row_tick_w,
        row_label_y,
        cols_vertical,
        col_label_x,
        col_label_y,
        bar_x,
        bar_h,
        value_label_x,
        ticks,
    }
}

/// The heatmap with its colour scale over [-m, m].
fn render(grid: &Grid, m: f64) -> RgbImage {
    let l = layout(grid, m);
    let mut img = RgbImage::from_pixel(l.width, l.height, Rgb(WHITE));
    let (px, py, cell) = (l.plot_x as i64, l.plot_y as i64, l.cell as i64);

    let title_x = (l.width - text_w(&grid.title)) / 2;
    draw_text(&mut img, title_x as i64, MARGIN as i64, &grid.title, false);

    // Cells, then a frame so near-white cells still show the plot's extent.
    for (r, row) in grid.values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let (x, y) = (px + c as i64 * cell, py + r as i64 * cell);
            fill_rect(&mut img, x, y, cell, cell, colour(v, m));
        }
    }
    frame(&mut img, px, py, l.plot_w as i64, l.plot_h as i64);

    // Row axis: label reading upwards, then the row names right-aligned to the plot.
    draw_text(&mut img, MARGIN as i64, l.row_label_y as i64, &grid.row_label, true);
    let stride = label_stride(l.cell);
    for (r, name) in grid.row_names.iter().enumerate().step_by(stride) {
        let name = clip(name);
        let x = MARGIN as i64 + (CH + GAP + l.row_tick_w - text_w(&name)) as i64;
        let y = py + r as i64 * cell + (cell - CH as i64) / 2;
        draw_text(&mut img, x, y, &name, false);
    }

    // Column axis: names under their cells (reading upwards, ending at the axis, when
    // they do not fit across), then the axis label centred under the plot.
    let below = py + l.plot_h as i64 + GAP as i64;
    for (c, name) in grid.col_names.iter().enumerate().step_by(stride) {
        let name = clip(name);
        let centre = px + c as i64 * cell + cell / 2;
        if l.cols_vertical {
            draw_text(&mut img, centre - CH as i64 / 2, below, &name, true);
        } else {
            draw_text(&mut img, centre - text_w(&name) as i64 / 2, below, &name, false);
        }
    }
    draw_text(&mut img, l.col_label_x as i64, l.col_label_y as i64, &grid.col_label, false);

    draw_colour_bar(&mut img, &l, m);
    let value_label_len = text_w(&grid.value_label) as i64;
    let value_label_y = py + (l.bar_h as i64 - value_label_len) / 2;
    draw_text(&mut img, l.value_label_x as i64, value_label_y, &grid.value_label, true);
    img
}

/// The colour bar, highest value at the top, with value labels beside it (no tick
/// marks, as in plotly: a mark before "0" would read as a minus sign).
fn draw_colour_bar(img: &mut RgbImage, l: &Layout, m: f64) {
    let (x, y, h) = (l.bar_x as i64, l.plot_y as i64, l.bar_h as i64);
    for i in 0..h {
        let v = m * (1.0 - 2.0 * i as f64 / (h - 1).max(1) as f64);
        fill_rect(img, x, y + i, BAR_W as i64, 1, colour(v, m));
    }
    frame(img, x, y, BAR_W as i64, h);
    for (i, (_, label)) in l.ticks.iter().enumerate() {
        let ty = y + i as i64 * (h - 1) / (N_TICKS as i64 - 1);
        draw_text(img, x + (BAR_W + GAP) as i64, ty - CH as i64 / 2, label, false);
    }
}

/// Colour of `v` on RdBu stretched over [-m, m]; grey for NaN and infinities.
fn colour(v: f64, m: f64) -> Colour {
    if !v.is_finite() {
        return NAN_GREY;
    }
    let t = ((v / m + 1.0) / 2.0).clamp(0.0, 1.0) * (RDBU.len() - 1) as f64;
    let i = (t.floor() as usize).min(RDBU.len() - 2);
    let f = t - i as f64;
    let (a, b) = (RDBU[i], RDBU[i + 1]);
    std::array::from_fn(|k| (a[k] as f64 + (b[k] as f64 - a[k] as f64) * f).round() as u8)
}

/// Draw every n-th tick label so labels of height CH never overlap.
fn label_stride(cell: u32) -> usize {
    CH.div_ceil(cell.max(1)) as usize
}

/// Long labels are cut so rotated column names do not make the image huge.
fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_LABEL_CHARS {
        return s.to_string();
    }
    s.chars().take(MAX_LABEL_CHARS - 2).chain("..".chars()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::data::tests::{grid, temp_dir};

    const TOKENS: [&str; 14] = [
        "0 When",
        "1  Mary",
        "2  and",
        "3  John",
        "4  went",
        "5  to",
        "6  the",
        "7  store",
        "8 ,",
        "9  John",
        "10  gave",
        "11  a",
        "12  drink",
        "13  to",
    ];

    fn heads_grid() -> Grid {
        grid("heads", &["0", "1", "2", "3"], vec![vec![0.0, 0.8, -0.3, 0.05], vec![-0.5, f64::NAN, 0.2, -0.02]])
    }

    fn positions_grid() -> Grid {
        let row = |k: f64| (0..14).map(|i| k * ((i as f64) * 0.7).sin() * 1e-3).collect();
        grid("positions", &TOKENS, vec![row(1.0), row(-0.4)])
    }

    fn pixel(img: &RgbImage, l: &Layout, r: u32, c: u32) -> [u8; 3] {
        let (x, y) = (l.plot_x + c * l.cell + l.cell / 2, l.plot_y + r * l.cell + l.cell / 2);
        img.get_pixel(x, y).0
    }

    #[test]
    fn png_has_layout_size_and_rdbu_colours() {
        let g = heads_grid();
        let dir = temp_dir("png");
        let path = dir.join("heads.png");
        write_heatmap_png(&g, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let l = layout(&g, g.abs_max());
        assert_eq!((img.width(), img.height()), (l.width, l.height));
        assert_eq!(l.cell, MAX_CELL);
        let [r, g_, b] = pixel(&img, &l, 0, 1); // +0.8, the max
        assert!(b as i32 > r as i32 + 80 && b > g_, "max positive not blue: {r},{g_},{b}");
        let [r, g_, b] = pixel(&img, &l, 1, 0); // -0.5, the most negative
        assert!(r as i32 > b as i32 + 80 && r > g_, "most negative not red: {r},{g_},{b}");
        assert!(pixel(&img, &l, 0, 0).iter().all(|&ch| ch >= 240), "zero not white");
        assert_eq!(pixel(&img, &l, 1, 1), NAN_GREY);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn scale_ends_and_middle() {
        assert_eq!(colour(-2.0, 2.0), RDBU[0]);
        assert_eq!(colour(0.0, 2.0), RDBU[5]);
        assert_eq!(colour(2.0, 2.0), RDBU[10]);
        assert_eq!(colour(5.0, 2.0), RDBU[10]);
    }

    #[test]
    fn tick_text_is_compact() {
        assert_eq!(fmt_tick(0.0), "0");
        assert_eq!(fmt_tick(0.8), "0.8");
        assert_eq!(fmt_tick(-1.2345), "-1.23");
        assert_eq!(fmt_tick(0.0123), "0.0123");
        assert_eq!(fmt_tick(1.2e-4), "1.20e-4");
    }

    #[test]
    fn big_grids_stay_readable_size() {
        let g = grid("heads", &[""; 200], vec![vec![1.0; 200]; 48]);
        let l = layout(&g, 1.0);
        assert!(l.width < 2500, "{l:?}");
        assert!(label_stride(l.cell) > 1);
    }

    /// Writes sample images for a person to look at:
    /// `cargo test --lib render::heatmap -- --ignored`.
    #[test]
    #[ignore]
    fn write_samples() {
        let dir = std::env::temp_dir().join("render_samples");
        std::fs::create_dir_all(&dir).unwrap();
        write_heatmap_png(&heads_grid(), &dir.join("heads.png")).unwrap();
        write_heatmap_png(&positions_grid(), &dir.join("positions.png")).unwrap();
    }
}

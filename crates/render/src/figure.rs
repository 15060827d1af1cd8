//! One figure, two files: every figure is drawn by the same code onto plotters'
//! SVG backend and its bitmap backend, and written as `stem.svg` and `stem.png`.

use super::font::text_h;
use super::pen::{Pen, Place};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::fsutil::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use std::path::{Path, PathBuf};

pub use super::pen::DrawResult;

/// Point sizes of a figure's title lines and its subtitle lines.
pub const TITLE: f64 = 21.0;
/// See [`TITLE`].
pub const SUBTITLE: f64 = 15.0;

/// The height of wrapped title and subtitle lines as [`draw_header`] draws them.
pub fn header_height(title: &[String], subtitle: &[String]) -> i32 {
    title.len() as i32 * (text_h(TITLE) + 4) + subtitle.len() as i32 * (text_h(SUBTITLE) + 3)
}

/// The width of the widest of the title and subtitle lines.
pub fn header_width(title: &[String], subtitle: &[String]) -> i32 {
    let t = title.iter().map(|l| super::font::text_w(l, TITLE));
    t.chain(subtitle.iter().map(|l| super::font::text_w(l, SUBTITLE))).max().unwrap_or(0)
}

/// Draws the title and subtitle lines centred on `centre`, the first at `top`;
/// returns the y below the last.
pub fn draw_header<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    pen: Pen,
    centre: i32,
    top: i32,
    title: &[String],
    subtitle: &[String],
) -> std::result::Result<i32, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut y = top;
    for line in title {
        pen.text(area, line, Place::new((centre, y), TITLE, HPos::Center, VPos::Top))?;
        y += text_h(TITLE) + 4;
    }
    for line in subtitle {
        pen.text(area, line, Place::new((centre, y), SUBTITLE, HPos::Center, VPos::Top))?;
        y += text_h(SUBTITLE) + 3;
    }
    Ok(y)
}

/// A figure whose size is known before it is drawn (its layout is computed
/// from the measured text, so the canvas is cropped to the content).
pub trait Figure {
    fn size(&self) -> (u32, u32);
    /// Draws everything; `pen` writes the text (SVG text elements or PNG pixels).
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, pen: Pen) -> DrawResult<DB>;
}

/// The SVG document of `fig` (for pages that embed a figure).
pub fn svg_text(fig: &impl Figure) -> Result<String> {
    let (w, h) = fig.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|_| fig.draw(&root, Pen { raster: false }))
            .and_then(|_| root.present())
            .map_err(|e| Error::Runtime(format!("drawing an SVG figure: {e}")))?;
    }
    Ok(svg)
}

/// Draws `fig` into `png` and the SVG of the same stem beside it; returns both paths.
pub fn write_figure(fig: &impl Figure, png: &Path) -> Result<Vec<PathBuf>> {
    let svg_path = png.with_extension("svg");
    let (w, h) = fig.size();
    let failed = |e: String| Error::Runtime(format!("drawing {}: {e}", png.display()));
    let svg = svg_text(fig).map_err(|e| failed(e.to_string()))?;
    let mut pixels = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        fig.draw(&root, Pen { raster: true }).and_then(|_| root.present()).map_err(|e| failed(e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).ok_or_else(|| failed("pixel buffer size".into()))?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(|e| failed(e.to_string()))?;
    write_atomic(png, &bytes)?;
    write_atomic(&svg_path, svg.as_bytes())?;
    Ok(vec![png.to_path_buf(), svg_path])
}

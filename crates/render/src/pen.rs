//! Text on either backend: SVG gets plotters' `<text>` elements (selectable,
//! searchable), PNG gets glyphs rasterised here with ab_glyph at their exact
//! sub-pixel positions, anti-aliased, with the anchors and baseline the SVG
//! text uses, so the two files agree.

use super::colour::TEXT;
use super::font::{advance, em, face, scale, text};
use ab_glyph::{point, Font, ScaleFont};

/// DejaVu Sans's x-height in units of its 2048 per em.
const X_HEIGHT: f32 = 1120.0 / 2048.0;
use plotters::coord::Shift;
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendCoord, DrawingErrorKind};

/// What drawing onto backend `DB` returns.
pub type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Draws text onto one backend: as SVG text, or as rasterised pixels.
#[derive(Debug, Clone, Copy)]
pub struct Pen {
    pub raster: bool,
}

/// Where and how one piece of text goes.
#[derive(Clone, Copy)]
pub struct Place {
    pub at: (i32, i32),
    pub size: f64,
    pub h: HPos,
    pub v: VPos,
    /// Turned 90 degrees anticlockwise (reads bottom to top); the anchor is
    /// applied before turning, as plotters does.
    pub upwards: bool,
}

impl Place {
    pub fn new(at: (i32, i32), size: f64, h: HPos, v: VPos) -> Self {
        Place { at, size, h, v, upwards: false }
    }

    pub fn upwards(self) -> Self {
        Place { upwards: true, ..self }
    }
}

impl Pen {
    pub fn text<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, s: &str, p: Place) -> DrawResult<DB> {
        if self.raster {
            return area.draw(&RasterText { s: s.to_string(), p });
        }
        let mut style = text(p.size).pos(Pos::new(p.h, p.v));
        if p.upwards {
            style = style.transform(FontTransform::Rotate270);
        }
        area.draw(&Text::new(s.to_string(), p.at, style))
    }
}

struct RasterText {
    s: String,
    p: Place,
}

impl<'a> PointCollection<'a, (i32, i32)> for &'a RasterText {
    type Point = &'a (i32, i32);
    type IntoIter = std::iter::Once<&'a (i32, i32)>;
    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.p.at)
    }
}

impl<DB: DrawingBackend> Drawable<DB> for RasterText {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let Some((x0, y0)) = pos.next() else { return Ok(()) };
        let em = em(self.p.size);
        let font = face().as_scaled(scale(em));
        // The anchors of plotters' SVG text: top = baseline 0.76 em down; centre
        // and bottom = baseline half an x-height below or above the point.
        let half_ex = em * X_HEIGHT / 2.0;
        let width = advance(&self.s, em);
        let dx = match self.p.h {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let baseline = match self.p.v {
            VPos::Top => 0.76 * em,
            VPos::Center => half_ex,
            VPos::Bottom => -half_ex,
        };
        let colour = TEXT;
        let mut pixels: Vec<(i32, i32, f32)> = vec![];
        let mut pen = dx;
        let mut prev = None;
        for c in self.s.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                pen += font.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale(em), point(pen, baseline));
            if let Some(outline) = face().outline_glyph(glyph) {
                let b = outline.px_bounds();
                outline.draw(|x, y, coverage| {
                    pixels.push((b.min.x as i32 + x as i32, b.min.y as i32 + y as i32, coverage));
                });
            }
            pen += font.h_advance(id);
            prev = Some(id);
        }
        for (x, y, coverage) in pixels {
            let (x, y) = if self.p.upwards { (y, -x) } else { (x, y) };
            if coverage > 0.0 {
                backend.draw_pixel((x0 + x, y0 + y), colour.mix(coverage.min(1.0) as f64).to_backend_color())?;
            }
        }
        Ok(())
    }
}

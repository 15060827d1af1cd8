//! The bundled font (DejaVu Sans, crates/render/assets/fonts/, licence beside it): SVG text
//! names it (with plotters), PNG text is rasterised from it with ab_glyph, and
//! layouts measure with it, so figures look the same on every machine and no
//! system font library is needed.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use plotters::style::{FontFamily, FontStyle, IntoFont, TextStyle};
use std::sync::OnceLock;

static DEJAVU_SANS: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// The family every figure uses, registered under this CSS font list, which
/// SVG files name as is: DejaVu Sans where the viewer has it, else its sans-serif.
pub const FAMILY: &str = "DejaVu Sans, sans-serif";

/// Registers the font (first call only); every drawing function calls this first.
pub fn ensure_registered() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // The bytes are compiled in and known to parse (a unit test checks), so
        // failure here is a build defect, not a user error.
        plotters::style::register_font(FAMILY, FontStyle::Normal, DEJAVU_SANS)
            .unwrap_or_else(|_| panic!("bundled DejaVuSans.ttf does not parse"));
    });
}

/// Text of `size` pixels in the figures' colour.
pub fn text(size: f64) -> TextStyle<'static> {
    ensure_registered();
    FontFamily::Name(FAMILY).into_font().resize(size).color(&super::colour::TEXT)
}

/// Pixels per em for text of plotters "size" `size`: plotters' SVG backend
/// writes `font-size = size / 1.24`, and the PNG text matches it.
pub fn em(size: f64) -> f32 {
    (size / 1.24) as f32
}

/// The parsed font, for rasterising and measuring.
pub fn face() -> &'static FontRef<'static> {
    static FACE: OnceLock<FontRef<'static>> = OnceLock::new();
    FACE.get_or_init(|| FontRef::try_from_slice(DEJAVU_SANS).unwrap_or_else(|_| panic!("bundled DejaVuSans.ttf")))
}

/// ab_glyph's scale (ascent - descent in pixels) for `em` pixels per em.
pub fn scale(em: f32) -> PxScale {
    let f = face();
    let units = f.units_per_em().unwrap_or(2048.0);
    PxScale::from(em * f.height_unscaled() / units)
}

/// Advance width of `s` at `em` pixels per em, kerning included.
pub fn advance(s: &str, em: f32) -> f32 {
    let font = face().as_scaled(scale(em));
    let mut prev = None;
    let mut w = 0.0;
    for c in s.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = prev {
            w += font.kern(p, id);
        }
        w += font.h_advance(id);
        prev = Some(id);
    }
    w
}

/// Width and height in pixels of `s` drawn at `size` (height: one em).
pub fn measure(s: &str, size: f64) -> (u32, u32) {
    let em = em(size);
    (advance(s, em).ceil() as u32, em.ceil() as u32)
}

/// Splits `s` into lines no wider than `width` pixels at `size`, at spaces
/// (a single word wider than that gets a line of its own).
pub fn wrap(s: &str, size: f64, width: u32) -> Vec<String> {
    let mut lines: Vec<String> = vec![];
    for word in s.split(' ') {
        match lines.last_mut() {
            Some(line) if measure(&format!("{line} {word}"), size).0 <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Width in pixels of `s` at `size`, for layout arithmetic.
pub fn text_w(s: &str, size: f64) -> i32 {
    measure(s, size).0 as i32
}

/// Height of a line of text at `size` (ascenders and descenders included).
pub fn text_h(size: f64) -> i32 {
    measure("0Hg", size).1 as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn font_measures_proportionally() {
        let (w_i, h) = measure("iiii", 20.0);
        let (w_m, _) = measure("MMMM", 20.0);
        assert!((12..=24).contains(&h), "{h}");
        assert!(w_m > 2 * w_i, "proportional font: {w_i} vs {w_m}");
        assert!(measure("MMMM", 40.0).0 > w_m * 3 / 2);
    }

    #[test]
    fn wrap_keeps_lines_under_the_width() {
        let s = "hook: attention out-projection input · metric: logit diff · model: ioi-gpt2/model.onnx";
        let lines = wrap(s, 14.0, 250);
        assert!(lines.len() >= 2, "{lines:?}");
        assert_eq!(lines.join(" "), s);
        assert!(lines.iter().all(|l| measure(l, 14.0).0 <= 250), "{lines:?}");
    }
}

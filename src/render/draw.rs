//! Drawing primitives shared by the plots: text in the 8x8 bitmap font at
//! twice its size, boxes and frames, compact tick labels.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

pub type Colour = [u8; 3];

pub const WHITE: Colour = [255, 255, 255];
pub const TEXT: Colour = [42, 63, 95]; // plotly's default font colour
pub const FRAME: Colour = [200, 200, 200];
pub const SCALE: i64 = 2; // screen pixels per font pixel
pub const CH: u32 = 8 * SCALE as u32; // glyph size on screen
pub const MARGIN: u32 = 16;
pub const GAP: u32 = 8;

/// Compact tick text: about 3 significant digits, exponent form when tiny or huge.
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(0.01..1e4).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = (2 - a.log10().floor() as i64).clamp(0, 4) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

pub fn text_w(s: &str) -> u32 {
    s.chars().count() as u32 * CH
}

/// The 8x8 bitmap of `c` (row per byte, bit 0 leftmost); '?' for what the font lacks.
fn glyph(c: char) -> [u8; 8] {
    let c = if c.is_control() { '?' } else { c };
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// Draw `s` with its box's top-left at (x, y). `upwards` turns it 90 degrees
/// anticlockwise (reads bottom to top, like plotly's rotated labels).
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, s: &str, upwards: bool) {
    let len = text_w(s) as i64;
    for (i, c) in s.chars().enumerate() {
        for (gy, bits) in glyph(c).iter().enumerate() {
            for gx in 0..8 {
                if bits >> gx & 1 == 0 {
                    continue;
                }
                // Top-left of this font pixel in unrotated text coordinates.
                let (u, v) = ((i as i64 * 8 + gx) * SCALE, gy as i64 * SCALE);
                let (px, py) = if upwards { (x + v, y + len - u - SCALE) } else { (x + u, y + v) };
                fill_rect(img, px, py, SCALE, SCALE, TEXT);
            }
        }
    }
}

/// A one-pixel outline of the given box.
pub fn frame(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64) {
    fill_rect(img, x - 1, y - 1, w + 2, 1, FRAME);
    fill_rect(img, x - 1, y + h, w + 2, 1, FRAME);
    fill_rect(img, x - 1, y, 1, h, FRAME);
    fill_rect(img, x + w, y, 1, h, FRAME);
}

/// Fill a box, clipped to the image.
pub fn fill_rect(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, c: Colour) {
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    for py in y.max(0)..(y + h).min(ih) {
        for px in x.max(0)..(x + w).min(iw) {
            img.put_pixel(px as u32, py as u32, Rgb(c));
        }
    }
}

/// Encodes `img` as PNG and writes it atomically.
pub fn write_png(img: &RgbImage, path: &std::path::Path) -> crate::error::Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| crate::error::Error::io(path, std::io::Error::other(e)))?;
    crate::fsutil::write_atomic(path, &bytes)
}

//! Colours: plotly's RdBu diverging scale (red negative, blue positive, white
//! at zero) and the few fixed colours of the figures.

#[cfg(feature = "figures")]
use plotters::style::RGBColor;

/// An RGB colour, one byte per channel.
pub type Colour = [u8; 3];

/// plotly.colors.sequential.RdBu, lowest value (red) to highest (blue).
pub const RDBU: [Colour; 11] = [
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
#[cfg(feature = "figures")]
/// Cells whose value is NaN or infinite.
pub const NAN_GREY: Colour = [150, 150, 150];
/// plotly's default font colour.
#[cfg(feature = "figures")]
pub const TEXT: RGBColor = RGBColor(42, 63, 95);
#[cfg(feature = "figures")]
pub const FRAME: RGBColor = RGBColor(180, 180, 180);

#[cfg(feature = "figures")]
/// Colour of `v` on RdBu stretched over [-m, m]; grey for NaN and infinities.
pub fn rdbu(v: f64, m: f64) -> Colour {
    if !v.is_finite() {
        return NAN_GREY;
    }
    let t = ((v / m + 1.0) / 2.0).clamp(0.0, 1.0) * (RDBU.len() - 1) as f64;
    let i = (t.floor() as usize).min(RDBU.len() - 2);
    let f = t - i as f64;
    let (a, b) = (RDBU[i], RDBU[i + 1]);
    std::array::from_fn(|k| (a[k] as f64 + (b[k] as f64 - a[k] as f64) * f).round() as u8)
}

#[cfg(feature = "figures")]
pub fn rgb(c: Colour) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

// The scale's function is drawn only with the figures.
#[cfg(all(test, feature = "figures"))]
mod tests {
    use super::*;

    #[test]
    fn scale_ends_and_middle() {
        assert_eq!(rdbu(-2.0, 2.0), RDBU[0]);
        assert_eq!(rdbu(0.0, 2.0), RDBU[5]);
        assert_eq!(rdbu(2.0, 2.0), RDBU[10]);
        assert_eq!(rdbu(5.0, 2.0), RDBU[10]);
        assert_eq!(rdbu(f64::NAN, 2.0), NAN_GREY);
    }
}

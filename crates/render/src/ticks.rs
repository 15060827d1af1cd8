//! Round tick values (multiples of 1, 2 or 5 times a power of ten) and their
//! compact text, shared by the colour bars and the scatter plot's axes.

/// Multiples of a round step inside [lo, hi]: the largest such step that still
/// gives at least `min_count` ticks (at least 2).
pub fn nice_ticks(lo: f64, hi: f64, min_count: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let ticks = |step: f64| -> Vec<f64> {
        // Rounded to the step's decimals so 0.1 * 3 prints as 0.3; + 0.0 turns -0 into 0.
        ((lo / step - 1e-9).ceil() as i64..=(hi / step + 1e-9).floor() as i64)
            .map(|k| round_to_step(k as f64 * step, step) + 0.0)
            .collect()
    };
    let magnitude = 10f64.powf((hi - lo).log10().floor());
    let candidates = [10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01].map(|m| m * magnitude);
    let want = min_count.max(2);
    candidates.iter().map(|&st| ticks(st)).find(|t| t.len() >= want).unwrap_or_else(|| ticks(candidates[9]))
}

fn round_to_step(v: f64, step: f64) -> f64 {
    let decimals = (-step.log10().floor()).max(0.0) as i32 + 1;
    let k = 10f64.powi(decimals);
    (v * k).round() / k
}

/// Compact tick text: up to 3 significant digits, exponent form when tiny or huge.
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.2e}");
        // 1.00e-4 -> 1e-4, 2.50e-4 -> 2.5e-4
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa =
            if mantissa.contains('.') { mantissa.trim_end_matches('0').trim_end_matches('.') } else { mantissa };
        return format!("{mantissa}e{exp}");
    }
    let decimals = (2 - a.log10().floor() as i64).clamp(0, 5) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        let labels: Vec<String> = nice_ticks(-0.0561, 1.06, 4).iter().map(|&v| fmt_tick(v)).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let t = nice_ticks(-2.3e-3, 7.1e-3, 4);
        assert!((4..=10).contains(&t.len()), "{t:?}");
        assert!(t.iter().all(|&v| (-2.3e-3..=7.1e-3).contains(&v)));
        // A colour bar over [-0.146, 0.146]: round values, not max and max/2.
        let labels: Vec<String> = nice_ticks(-0.146, 0.146, 3).iter().map(|&v| fmt_tick(v)).collect();
        assert_eq!(labels, ["-0.1", "0", "0.1"]);
        let labels: Vec<String> = nice_ticks(-0.94, 0.94, 3).iter().map(|&v| fmt_tick(v)).collect();
        assert_eq!(labels, ["-0.5", "0", "0.5"]);
        let labels: Vec<String> = nice_ticks(-0.94, 0.94, 5).iter().map(|&v| fmt_tick(v)).collect();
        assert_eq!(labels, ["-0.8", "-0.6", "-0.4", "-0.2", "0", "0.2", "0.4", "0.6", "0.8"]);
    }

    #[test]
    fn tick_text_is_compact() {
        assert_eq!(fmt_tick(0.0), "0");
        assert_eq!(fmt_tick(0.8), "0.8");
        assert_eq!(fmt_tick(-1.2345), "-1.23");
        assert_eq!(fmt_tick(0.0123), "0.0123");
        assert_eq!(fmt_tick(0.3), "0.3");
        assert_eq!(fmt_tick(1.2e-4), "1.2e-4");
        assert_eq!(fmt_tick(1e-4), "1e-4");
    }
}

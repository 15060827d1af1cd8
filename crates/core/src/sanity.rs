//! Warnings before a run misleads: baselines that make the normalised metric
//! meaningless, and a model that mostly gets the clean prompts wrong.
//!
//! The grids divide by `clean - corrupted`; when that gap is noise, every
//! cell is noise scaled up. attrpatch still writes the results (they are what
//! the graph computed) but says so on the terminal, in results.json and in
//! the report, so nobody reads meaning into them.

use crate::augment::Metric;
use serde::Serialize;

/// Below this gap (in the metric's own units) the baselines are too close to
/// normalise by: 0.1 nats of logit or log-prob difference, 1% of probability,
/// a KL of 0.01 nats.
fn min_gap(metric: Metric) -> f64 {
    match metric {
        Metric::LogitDiff | Metric::LogprobDiff => 0.1,
        Metric::Prob => 0.01,
        Metric::Kl => 0.01,
    }
}

/// What the baselines say about a run, written beside its results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineCheck {
    /// Fraction of pairs whose clean prompt prefers the correct answer (clean
    /// logit or log-prob difference > 0); None for metrics without a sign.
    pub clean_accuracy: Option<f64>,
    /// One sentence per problem found; empty when the baselines are usable.
    pub warnings: Vec<String>,
}

/// Checks the per-pair clean and corrupted metric values of a run.
pub fn check_baselines(metric: Metric, clean: &[f64], corrupted: &[f64]) -> BaselineCheck {
    let n = clean.len().min(corrupted.len());
    let mut warnings = vec![];
    if n == 0 {
        return BaselineCheck { clean_accuracy: None, warnings };
    }
    let mean = |v: &[f64]| v[..n].iter().sum::<f64>() / n as f64;
    let (c, k) = (mean(clean), mean(corrupted));
    // KL(clean || .) is 0 on the clean run and grows with corruption: its gap runs the other way.
    let sign = if metric == Metric::Kl { -1.0 } else { 1.0 };
    let gap = sign * (c - k);
    let what = metric.label();
    if gap.abs() < min_gap(metric) {
        warnings.push(format!(
            "the clean and corrupted {what} differ by only {:.4} ({c:.4} vs {k:.4}); the grids divide by this \
             gap, so every cell is mostly noise. Check that the model does the task on these prompts",
            gap.abs()
        ));
    }
    if gap <= 0.0 {
        let (above, below) = if metric == Metric::Kl { ("corrupted", "clean") } else { ("clean", "corrupted") };
        warnings.push(format!(
            "the {above} {what} is not above the {below} one ({c:.4} clean, {k:.4} corrupted): the normalised \
             metric runs backwards, so positive cells mean the patch moves the model away from the clean behaviour"
        ));
    }
    // The gap against its own spread over pairs: mean difference within two
    // standard errors of zero says the prompt set shows no effect.
    if n >= 3 && gap > 0.0 {
        let d: Vec<f64> = (0..n).map(|i| sign * (clean[i] - corrupted[i])).collect();
        let var = d.iter().map(|x| (x - gap).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se = (var / n as f64).sqrt();
        if gap < 2.0 * se {
            warnings.push(format!(
                "the clean-corrupted gap ({gap:.4}) is within two standard errors ({:.4}) of zero over {n} pairs: \
                 the pairs disagree about the effect",
                2.0 * se
            ));
        }
    }
    let clean_accuracy = matches!(metric, Metric::LogitDiff | Metric::LogprobDiff)
        .then(|| clean[..n].iter().filter(|&&v| v > 0.0).count() as f64 / n as f64);
    if let Some(acc) = clean_accuracy {
        if acc < 0.5 {
            warnings.push(format!(
                "the model prefers the incorrect answer on {:.0}% of the clean prompts: it does not do this task, \
                 so there is little behaviour to attribute",
                100.0 * (1.0 - acc)
            ));
        }
    }
    BaselineCheck { clean_accuracy, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanity_usable_baselines_give_no_warning() {
        let r = check_baselines(Metric::LogitDiff, &[3.0, 2.5, 4.0, 3.2], &[-3.0, -2.0, -3.5, -2.9]);
        assert_eq!(r.warnings, Vec::<String>::new());
        assert_eq!(r.clean_accuracy, Some(1.0));
    }

    #[test]
    fn sanity_tiny_gap_is_flagged() {
        // The pronoun set on the bundled model: 0.0235 vs 0.0071.
        let r = check_baselines(Metric::LogitDiff, &[0.03, 0.017], &[0.008, 0.0062]);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("differ by only 0.0164"), "{:?}", r.warnings);
    }

    #[test]
    fn sanity_clean_not_above_corrupted_is_flagged() {
        let r = check_baselines(Metric::Prob, &[0.2, 0.3], &[0.4, 0.5]);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("the clean prob of correct is not above the corrupted one"), "{:?}", r.warnings);
        assert_eq!(r.clean_accuracy, None);
    }

    #[test]
    fn sanity_kl_runs_from_zero_upwards() {
        let r = check_baselines(Metric::Kl, &[0.0, 0.0, 0.0], &[20.0, 25.0, 30.0]);
        assert_eq!(r.warnings, Vec::<String>::new());
        let r = check_baselines(Metric::Kl, &[0.0, 0.0, 0.0], &[0.001, 0.002, 0.0015]);
        assert!(r.warnings[0].contains("differ by only 0.0015"), "{:?}", r.warnings);
    }

    #[test]
    fn sanity_a_tiny_gap_the_wrong_way_gets_both_warnings() {
        let r = check_baselines(Metric::LogitDiff, &[-0.0003, -0.0002], &[0.0003, 0.0002]);
        assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("differ by only 0.0005"), "{:?}", r.warnings);
        assert!(r.warnings[1].contains("is not above the corrupted one"), "{:?}", r.warnings);
        assert!(r.warnings[2].contains("incorrect answer on 100%"), "{:?}", r.warnings);
    }

    #[test]
    fn sanity_gap_within_noise_is_flagged() {
        // Mean gap 0.5 but the pairs point both ways.
        let r = check_baselines(Metric::LogitDiff, &[5.0, -4.0, 4.5, -3.0], &[0.0, 0.0, 0.0, 0.0]);
        assert!(r.warnings.iter().any(|w| w.contains("within two standard errors")), "{:?}", r.warnings);
        assert!(r.warnings.iter().all(|w| !w.contains("incorrect answer")), "{:?}", r.warnings);
        assert_eq!(r.clean_accuracy, Some(0.5));
    }

    #[test]
    fn sanity_a_model_wrong_on_most_clean_prompts_is_flagged() {
        let r = check_baselines(Metric::LogitDiff, &[2.0, -0.5, -0.1, -0.2, 9.0], &[-9.0, -9.5, -9.0, -9.2, -9.0]);
        assert_eq!(r.clean_accuracy, Some(0.4));
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("incorrect answer on 60% of the clean prompts"), "{:?}", r.warnings);
    }
}

//! Which run the edge scores differentiate and what each writer is swapped for
//! (README "Edges": conventions and ablations).
//!
//! Denoising (attrpatch's own): gradient on the corrupted run, Δ = clean -
//! corrupted, metric normalised to (m - CORR) / (CLEAN - CORR). Noising (the
//! EAP-IG codebase's, `get_scores_eap`): gradient on the clean run, Δ =
//! counterfactual - clean, the raw metric averaged over the pairs.

use crate::augment::Metric;
use crate::error::{Error, Result};

/// Which run the backward is taken on (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Convention {
    /// Gradient at the corrupted run, Δ = clean - corrupted, normalised metric.
    #[default]
    Denoising,
    /// Gradient at the clean run, Δ = counterfactual - clean, raw metric (EAP-IG's).
    Noising,
}

/// The counterfactual activation of every writer (noising only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Ablation {
    /// The writer's activation on the pair's corrupted prompt.
    #[default]
    Patching,
    /// Zero.
    Zero,
    /// The mean of the writer's corrupted activations over every pair and real position.
    Mean,
    /// Per position: the mean of the writer's corrupted activations over the pairs that reach it.
    MeanPositional,
}

impl Convention {
    /// The name in edges.json.
    pub fn label(&self) -> &'static str {
        match self {
            Convention::Denoising => "denoising",
            Convention::Noising => "noising",
        }
    }
}

impl Ablation {
    /// The name in edges.json and on the command line.
    pub fn label(&self) -> &'static str {
        match self {
            Ablation::Patching => "patching",
            Ablation::Zero => "zero",
            Ablation::Mean => "mean",
            Ablation::MeanPositional => "mean-positional",
        }
    }

    /// Whether the counterfactual is a mean over the data set (a first pass computes it).
    pub fn is_mean(&self) -> bool {
        matches!(self, Ablation::Mean | Ablation::MeanPositional)
    }
}

/// Refuses the combinations without a definition, saying what to use instead.
pub fn check(convention: Convention, ablation: Ablation, ig_steps: usize, metric: Metric) -> Result<()> {
    if convention == Convention::Denoising && ablation != Ablation::Patching {
        return Err(Error::Input(format!(
            "--ablation {}: the denoising convention differentiates at the corrupted run and moves each writer to \
             its clean activation, so there is no ablated base run; add --convention noising (gradient at the clean \
             run, Δ = ablated - clean) or drop --ablation",
            ablation.label()
        )));
    }
    if ig_steps > 1 && ablation != Ablation::Patching {
        return Err(Error::Input(format!(
            "--ablation {} with --ig-steps {ig_steps}: EAP-IG-inputs interpolates between the clean and corrupted \
             prompts' inputs, so only --ablation patching is defined (as in the EAP-IG codebase); drop --ig-steps \
             for plain EAP or drop --ablation",
            ablation.label()
        )));
    }
    if convention == Convention::Noising && metric == Metric::Kl {
        return Err(Error::Input(
            "--metric kl with --convention noising: KL(clean || clean) is 0 at its minimum, so every gradient at \
             the clean run is 0; use --metric logit-diff, logprob-diff or prob, or --convention denoising"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_flag_and_the_fix() {
        let e = check(Convention::Denoising, Ablation::Zero, 1, Metric::LogitDiff).unwrap_err().to_string();
        assert!(e.contains("--ablation zero") && e.contains("--convention noising"), "{e}");
        let e = check(Convention::Noising, Ablation::Mean, 4, Metric::LogitDiff).unwrap_err().to_string();
        assert!(e.contains("--ablation mean") && e.contains("--ig-steps 4"), "{e}");
        let e = check(Convention::Noising, Ablation::Patching, 1, Metric::Kl).unwrap_err().to_string();
        assert!(e.contains("--metric kl"), "{e}");
        assert!(check(Convention::Noising, Ablation::MeanPositional, 1, Metric::LogitDiff).is_ok());
        assert!(check(Convention::Noising, Ablation::Patching, 4, Metric::Prob).is_ok());
    }
}

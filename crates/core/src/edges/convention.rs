//! Which method scores the edges, which run it differentiates and what each
//! writer is swapped for (the book, docs/src/edges.md: methods, conventions and ablations).
//!
//! Denoising (attrpatch's own): gradient on the corrupted run, Δ = clean -
//! corrupted, metric normalised to (m - CORR) / (CLEAN - CORR). Noising (the
//! EAP-IG codebase's, `get_scores_eap`): gradient on the clean run, Δ =
//! counterfactual - clean, the raw metric averaged over the pairs.

use crate::augment::Metric;
use attrpatch_onnx::error::{Error, Result};

/// How the reader gradients are taken (the EAP-IG codebase's `attribute` methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The gradient at the base run (`get_scores_eap`).
    #[default]
    Eap,
    /// The gradient averaged over N runs with the `input` writer interpolated (`get_scores_eap_ig`).
    EapIgInputs,
    /// The gradient averaged over N runs per component (the input, each layer's attention, each
    /// MLP), that component's output alone interpolated and held constant (`get_scores_ig_activations`).
    EapIgActivations,
    /// The gradient averaged over the clean and the corrupted run (`get_scores_clean_corrupted`).
    CleanCorrupted,
}

impl Method {
    /// The name in edges.json and on the command line.
    pub fn label(&self) -> &'static str {
        match self {
            Method::Eap => "EAP",
            Method::EapIgInputs => "EAP-IG-inputs",
            Method::EapIgActivations => "EAP-IG-activations",
            Method::CleanCorrupted => "clean-corrupted",
        }
    }

    /// The flag's spelling (`--method`).
    pub fn flag(&self) -> &'static str {
        match self {
            Method::Eap => "eap",
            Method::EapIgInputs => "eap-ig-inputs",
            Method::EapIgActivations => "eap-ig-activations",
            Method::CleanCorrupted => "clean-corrupted",
        }
    }

    /// Whether the method integrates over steps (takes `--ig-steps`).
    pub fn has_steps(&self) -> bool {
        matches!(self, Method::EapIgInputs | Method::EapIgActivations)
    }
}

/// One of `names` (the flags' spellings), or an error naming `what` and the choices.
fn parse_choice<T: Copy>(value: &str, what: &str, choices: &[(&str, T)]) -> Result<T> {
    choices.iter().find(|(name, _)| *name == value).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        Error::Input(format!("{what} '{value}': expected one of {}", names.join(", ")))
    })
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let all = [Method::Eap, Method::EapIgInputs, Method::EapIgActivations, Method::CleanCorrupted];
        parse_choice(s, "method", &all.map(|m| (m.flag(), m)))
    }
}

impl std::str::FromStr for Convention {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_choice(s, "convention", &[Convention::Denoising, Convention::Noising].map(|c| (c.label(), c)))
    }
}

impl std::str::FromStr for Ablation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let all = [Ablation::Patching, Ablation::Zero, Ablation::Mean, Ablation::MeanPositional];
        parse_choice(s, "ablation", &all.map(|a| (a.label(), a)))
    }
}

/// The steps of an IG method given without `--ig-steps`.
pub const DEFAULT_IG_STEPS: usize = 5;

/// The method and its steps from `--method` and `--ig-steps`: `--ig-steps N > 1` alone
/// is EAP-IG-inputs (as before `--method`), an IG method alone takes `DEFAULT_IG_STEPS`,
/// and EAP or clean-corrupted with `--ig-steps` other than 1 is refused.
pub fn resolve(method: Option<Method>, ig_steps: Option<usize>) -> Result<(Method, usize)> {
    if ig_steps == Some(0) {
        return Err(Error::Input("--ig-steps 0: the integration steps must be at least 1 (1 is plain EAP)".into()));
    }
    match (method, ig_steps) {
        (None, None) => Ok((Method::Eap, 1)),
        (None, Some(1)) => Ok((Method::Eap, 1)),
        (None, Some(n)) => Ok((Method::EapIgInputs, n)),
        (Some(m), None) => Ok((m, if m.has_steps() { DEFAULT_IG_STEPS } else { 1 })),
        (Some(m), Some(n)) if m.has_steps() => Ok((m, n)),
        (Some(m), Some(1)) => Ok((m, 1)),
        (Some(m), Some(n)) => Err(Error::Input(format!(
            "--method {} with --ig-steps {n}: {} takes no integration steps; drop --ig-steps, or use --method \
             eap-ig-inputs or eap-ig-activations",
            m.flag(),
            m.label()
        ))),
    }
}

/// Which run the backward is taken on (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
pub fn check(
    method: Method,
    convention: Convention,
    ablation: Ablation,
    ig_steps: usize,
    metric: Metric,
) -> Result<()> {
    if ig_steps == 0 {
        return Err(Error::Input("--ig-steps 0: the integration steps must be at least 1 (1 is plain EAP)".into()));
    }
    if !method.has_steps() && ig_steps != 1 {
        return Err(Error::Input(format!(
            "--method {} with --ig-steps {ig_steps}: {} takes no integration steps; drop --ig-steps",
            method.flag(),
            method.label()
        )));
    }
    if convention == Convention::Denoising && ablation != Ablation::Patching {
        return Err(Error::Input(format!(
            "--ablation {}: the denoising convention differentiates at the corrupted run and moves each writer to \
             its clean activation, so there is no ablated base run; add --convention noising (gradient at the clean \
             run, Δ = ablated - clean) or drop --ablation",
            ablation.label()
        )));
    }
    if method == Method::EapIgInputs && ablation != Ablation::Patching {
        return Err(Error::Input(format!(
            "--ablation {} with --ig-steps {ig_steps}: EAP-IG-inputs interpolates between the clean and corrupted \
             prompts' inputs, so only --ablation patching is defined (as in the EAP-IG codebase); drop --ig-steps \
             for plain EAP, use --method eap-ig-activations, or drop --ablation",
            ablation.label()
        )));
    }
    if method == Method::CleanCorrupted && ablation != Ablation::Patching {
        return Err(Error::Input(format!(
            "--ablation {} with --method clean-corrupted: the method averages the gradients at the clean and the \
             corrupted run, so only --ablation patching is defined (as in the EAP-IG codebase); use --method eap \
             or eap-ig-activations, or drop --ablation",
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
        let (eap, ig, act, cc) = (Method::Eap, Method::EapIgInputs, Method::EapIgActivations, Method::CleanCorrupted);
        let ld = Metric::LogitDiff;
        let e = check(eap, Convention::Denoising, Ablation::Zero, 1, ld).unwrap_err().to_string();
        assert!(e.contains("--ablation zero") && e.contains("--convention noising"), "{e}");
        let e = check(ig, Convention::Noising, Ablation::Mean, 4, ld).unwrap_err().to_string();
        assert!(e.contains("--ablation mean") && e.contains("--ig-steps 4"), "{e}");
        let e = check(cc, Convention::Noising, Ablation::Zero, 1, ld).unwrap_err().to_string();
        assert!(e.contains("--ablation zero") && e.contains("clean-corrupted"), "{e}");
        let e = check(cc, Convention::Denoising, Ablation::Patching, 3, ld).unwrap_err().to_string();
        assert!(e.contains("--method clean-corrupted") && e.contains("--ig-steps 3"), "{e}");
        let e = check(eap, Convention::Noising, Ablation::Patching, 1, Metric::Kl).unwrap_err().to_string();
        assert!(e.contains("--metric kl"), "{e}");
        assert!(check(eap, Convention::Noising, Ablation::MeanPositional, 1, ld).is_ok());
        assert!(check(ig, Convention::Noising, Ablation::Patching, 4, Metric::Prob).is_ok());
        assert!(check(act, Convention::Noising, Ablation::Zero, 4, ld).is_ok());
        assert!(check(act, Convention::Noising, Ablation::Mean, 4, ld).is_ok());
    }

    #[test]
    fn names_parse_back() {
        for m in [Method::Eap, Method::EapIgInputs, Method::EapIgActivations, Method::CleanCorrupted] {
            assert_eq!(m.flag().parse::<Method>().unwrap(), m);
        }
        assert_eq!("mean-positional".parse::<Ablation>().unwrap(), Ablation::MeanPositional);
        assert_eq!("noising".parse::<Convention>().unwrap(), Convention::Noising);
        let e = "eap-ig".parse::<Method>().unwrap_err().to_string();
        assert!(e.contains("method 'eap-ig'") && e.contains("eap-ig-activations"), "{e}");
    }

    #[test]
    fn method_and_steps_resolve_as_documented() {
        assert_eq!(resolve(None, None).unwrap(), (Method::Eap, 1));
        assert_eq!(resolve(None, Some(4)).unwrap(), (Method::EapIgInputs, 4));
        assert_eq!(
            resolve(Some(Method::EapIgActivations), None).unwrap(),
            (Method::EapIgActivations, DEFAULT_IG_STEPS)
        );
        assert_eq!(resolve(Some(Method::EapIgInputs), Some(7)).unwrap(), (Method::EapIgInputs, 7));
        assert_eq!(resolve(Some(Method::CleanCorrupted), None).unwrap(), (Method::CleanCorrupted, 1));
        let e = resolve(Some(Method::Eap), Some(5)).unwrap_err().to_string();
        assert!(e.contains("--method eap") && e.contains("--ig-steps 5"), "{e}");
        assert!(resolve(None, Some(0)).is_err());
    }
}

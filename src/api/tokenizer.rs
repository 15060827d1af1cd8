//! Text pairs to token ids with a `tokenizer.json`, checked as a job checks
//! them (single-token distinct answers, corresponding positions).

use super::pairs::TokenPairs;
use super::source::TokenizerSource;
use attrpatch_core::augment::Metric;
use attrpatch_core::prompts::{tokenize_for, Answers, PromptPair, PromptTokenizer};
use attrpatch_onnx::error::Result;

/// A HuggingFace tokenizer, as jobs use it.
#[derive(Clone)]
pub struct Tokenizer {
    inner: PromptTokenizer,
}

impl Tokenizer {
    /// Reads a `tokenizer.json` (a path or its bytes).
    pub fn new(source: impl Into<TokenizerSource>) -> Result<Self> {
        let source = source.into();
        Ok(Tokenizer { inner: PromptTokenizer::from_bytes(&source.bytes()?, &source.label())? })
    }

    /// The pairs' token ids (unpadded), with BOS first when `bos`; the answers
    /// are required (one token each, distinct) unless `metric` is `Kl`.
    pub fn tokenize(&self, pairs: &[PromptPair], bos: bool, metric: Metric) -> Result<TokenPairs> {
        let answers = if metric == Metric::Kl { Answers::Unused } else { Answers::Required };
        let t = tokenize_for(&self.inner, pairs, bos, usize::MAX, answers)?;
        let unpad = |rows: &[Vec<i64>]| -> Vec<Vec<i64>> {
            rows.iter().zip(&t.lengths).map(|(r, &n)| r[..n].to_vec()).collect()
        };
        Ok(TokenPairs {
            clean: unpad(&t.clean_ids),
            corrupted: unpad(&t.corrupted_ids),
            correct: t.correct_ids.clone(),
            incorrect: t.incorrect_ids.clone(),
        })
    }

    /// Each id's text on its own (e.g. `" Mary"`), for labels.
    pub fn token_strings(&self, ids: &[i64]) -> Vec<String> {
        self.inner.token_strings(ids)
    }
}

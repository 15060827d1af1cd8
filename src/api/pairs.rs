//! The prompt pairs a job runs on: texts (tokenized by the job's tokenizer),
//! token ids, or the tutorial's 8 IOI pairs.

use attrpatch_core::prompts::{PromptPair, TokenizedPrompts};
use attrpatch_onnx::error::{Error, Result};

/// Prompt pairs as token ids. Each pair's clean and corrupted prompts have one
/// length (their positions correspond); pairs may differ in length and are
/// right-padded (with id 0, masked) to the longest.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenPairs {
    /// `[pair][position]`
    pub clean: Vec<Vec<i64>>,
    /// `[pair][position]`, the same length as the pair's clean prompt.
    pub corrupted: Vec<Vec<i64>>,
    /// [pair] the correct answer's token (ignored by the `kl` metric).
    pub correct: Vec<i64>,
    /// [pair] the incorrect answer's token (ignored by the `kl` and `prob` metrics).
    pub incorrect: Vec<i64>,
}

impl TokenPairs {
    /// The padded id grids a graph is fed, checked: equal counts, equal
    /// lengths within a pair, at least one token, ids inside `vocab`.
    pub(crate) fn to_tokenized(&self, vocab: usize) -> Result<TokenizedPrompts> {
        let n = self.clean.len();
        if n == 0 {
            return Err(Error::Input("no prompt pairs: the token pairs are empty".into()));
        }
        for (what, len) in
            [("corrupted", self.corrupted.len()), ("correct", self.correct.len()), ("incorrect", self.incorrect.len())]
        {
            if len != n {
                return Err(Error::Input(format!(
                    "token pairs: {n} clean prompts but {len} {what} entries; give one per pair"
                )));
            }
        }
        let mut lengths = Vec::with_capacity(n);
        for (i, (c, k)) in self.clean.iter().zip(&self.corrupted).enumerate() {
            if c.is_empty() || c.len() != k.len() {
                return Err(Error::Input(format!(
                    "token pair {i}: the clean prompt has {} tokens and the corrupted one {}; they must be equal \
                     and at least 1 (positions must correspond)",
                    c.len(),
                    k.len()
                )));
            }
            lengths.push(c.len());
        }
        let all = self.clean.iter().chain(&self.corrupted).flatten().chain(&self.correct).chain(&self.incorrect);
        if let Some(bad) = all.copied().find(|&id| id < 0 || id as usize >= vocab) {
            return Err(Error::Input(format!("token id {bad} is outside the model's vocabulary of {vocab}")));
        }
        let seq_len = lengths.iter().copied().max().unwrap_or(0);
        let pad = |rows: &[Vec<i64>]| -> Vec<Vec<i64>> {
            rows.iter().map(|r| r.iter().copied().chain(std::iter::repeat(0)).take(seq_len).collect()).collect()
        };
        Ok(TokenizedPrompts {
            clean_ids: pad(&self.clean),
            corrupted_ids: pad(&self.corrupted),
            correct_ids: self.correct.clone(),
            incorrect_ids: self.incorrect.clone(),
            seq_len,
            lengths,
            clean_tokens: vec![vec![]; n],
        })
    }
}

/// What a job runs on.
#[derive(Debug, Clone, Default)]
pub enum Pairs {
    /// The tutorial's 8 IOI pairs (the CLI's default).
    #[default]
    Tutorial,
    /// Texts, tokenized with the job's tokenizer.
    Prompts(Vec<PromptPair>),
    /// Token ids (no tokenizer is read).
    Tokens(TokenPairs),
}

impl From<Vec<PromptPair>> for Pairs {
    fn from(p: Vec<PromptPair>) -> Self {
        Pairs::Prompts(p)
    }
}

impl From<TokenPairs> for Pairs {
    fn from(t: TokenPairs) -> Self {
        Pairs::Tokens(t)
    }
}

/// A prompt pair from its four texts: clean and corrupted prompts, correct and
/// incorrect answers (each answer one token, usually with its leading space).
pub fn pair(clean: &str, corrupted: &str, correct: &str, incorrect: &str) -> PromptPair {
    PromptPair {
        clean: clean.into(),
        corrupted: corrupted.into(),
        correct: correct.into(),
        incorrect: incorrect.into(),
        origin: None,
    }
}

/// The tutorial's 8 IOI pairs (what `Pairs::Tutorial` runs).
pub fn tutorial_pairs() -> Vec<PromptPair> {
    attrpatch_core::prompts::ioi_default()
}

/// Pairs from a JSONL file of `{"clean", "corrupted", "correct", "incorrect"}` lines.
pub fn read_pairs(path: &std::path::Path) -> Result<Vec<PromptPair>> {
    attrpatch_core::prompts::read_jsonl(path)
}

impl Pairs {
    /// The texts of the pairs (empty texts for token ids: they name nothing).
    pub(crate) fn texts(&self) -> Vec<PromptPair> {
        match self {
            Pairs::Tutorial => attrpatch_core::prompts::ioi_default(),
            Pairs::Prompts(p) => p.clone(),
            Pairs::Tokens(t) => vec![PromptPair::default(); t.clean.len()],
        }
    }
}

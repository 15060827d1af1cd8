//! Prompt pairs (clean / corrupted plus the two answer tokens) and their
//! tokenization into the equal-length id grids the patching run needs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use attrpatch_onnx::error::{Error, Result};

/// One clean/corrupted prompt pair and the answers whose logit difference is the metric.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PromptPair {
    /// The clean prompt.
    pub clean: String,
    /// The corrupted prompt (as many tokens as the clean one).
    pub corrupted: String,
    /// Empty when the file gives none (only `--metric kl` runs without answers).
    #[serde(default)]
    pub correct: String,
    /// The incorrect answer (one token).
    #[serde(default)]
    pub incorrect: String,
    /// Where the pair was read ("pairs.jsonl:3"), for messages; not part of the pair.
    #[serde(skip)]
    pub origin: Option<String>,
}

/// Pairs are equal when their texts are, wherever they were read.
impl PartialEq for PromptPair {
    fn eq(&self, o: &Self) -> bool {
        (&self.clean, &self.corrupted, &self.correct, &self.incorrect)
            == (&o.clean, &o.corrupted, &o.correct, &o.incorrect)
    }
}

impl PromptPair {
    /// "FILE:LINE: pair I" when the pair came from a file, else "pair I".
    fn label(&self, i: usize) -> String {
        match &self.origin {
            Some(o) => format!("{o}: pair {i}"),
            None => format!("pair {i}"),
        }
    }
}

/// Whether the metric reads the answers (every metric but KL does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// Both answers must be single, distinct tokens.
    Required,
    /// Answers may be missing; missing ones become id 0, which a metric that
    /// ignores the answers (weight 0) never reads.
    Unused,
}

/// The tutorial's 8 IOI prompts. Prompts come in pairs that differ only in
/// the subject of "gave", so each one's partner serves as its corrupted run.
pub fn ioi_default() -> Vec<PromptPair> {
    const PROMPTS: [&str; 8] = [
        "When John and Mary went to the shops, John gave the bag to",
        "When John and Mary went to the shops, Mary gave the bag to",
        "When Tom and James went to the park, James gave the ball to",
        "When Tom and James went to the park, Tom gave the ball to",
        "When Dan and Sid went to the shops, Sid gave an apple to",
        "When Dan and Sid went to the shops, Dan gave an apple to",
        "After Martin and Amy went to the park, Amy gave a drink to",
        "After Martin and Amy went to the park, Martin gave a drink to",
    ];
    const ANSWERS: [(&str, &str); 8] = [
        (" Mary", " John"),
        (" John", " Mary"),
        (" Tom", " James"),
        (" James", " Tom"),
        (" Dan", " Sid"),
        (" Sid", " Dan"),
        (" Martin", " Amy"),
        (" Amy", " Martin"),
    ];
    (0..PROMPTS.len())
        .map(|i| PromptPair {
            clean: PROMPTS[i].to_string(),
            corrupted: PROMPTS[i ^ 1].to_string(), // partner: i+1 for even i, i-1 for odd
            correct: ANSWERS[i].0.to_string(),
            incorrect: ANSWERS[i].1.to_string(),
            origin: None,
        })
        .collect()
}

/// Reads prompt pairs from JSONL: one `PromptPair` object per line, blank
/// lines skipped. A UTF-8 byte-order mark is ignored, and a file holding one
/// JSON array of pair objects is read as well (editors and `json.dump` write
/// those), so each pair's messages can name its line.
pub fn read_jsonl(path: &Path) -> Result<Vec<PromptPair>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let expected = "{\"clean\", \"corrupted\", \"correct\", \"incorrect\"}";
    let mut pairs = Vec::new();
    if text.trim_start().starts_with('[') {
        let values: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            Error::Input(format!(
                "{}: looks like a JSON array but does not parse ({e}); expected JSONL, one {expected} object per line",
                path.display()
            ))
        })?;
        for (k, v) in values.into_iter().enumerate() {
            let mut pair: PromptPair = serde_json::from_value(v).map_err(|e| {
                Error::Input(format!("{}: array element {k}: not a prompt pair {expected}: {e}", path.display()))
            })?;
            pair.origin = Some(format!("{}: array element {k}", path.display()));
            pairs.push(pair);
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut pair: PromptPair = serde_json::from_str(line).map_err(|e| {
                Error::Input(format!("{}:{}: not a prompt pair {expected}: {e}", path.display(), i + 1))
            })?;
            pair.origin = Some(format!("{}:{}", path.display(), i + 1));
            pairs.push(pair);
        }
    }
    if pairs.is_empty() {
        return Err(Error::Input(format!("{} contains no prompt pairs", path.display())));
    }
    Ok(pairs)
}

/// A HuggingFace `tokenizer.json` tokenizer, with ids as the i64 the ONNX model takes.
#[derive(Clone)]
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
}

impl PromptTokenizer {
    /// Loads a HuggingFace `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Input(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// A tokenizer from the bytes of a `tokenizer.json`; `label` names it in messages.
    pub fn from_bytes(bytes: &[u8], label: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Input(format!("{label}: cannot load tokenizer: {e}")))?;
        Ok(Self { inner })
    }

    /// Vocabulary size including added tokens (GPT-2: 50257).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The beginning-of-sequence token. tokenizer.json has no BOS field, so
    /// look for the usual names; GPT-2 uses `<|endoftext|>` for this.
    pub fn bos_id(&self) -> Option<i64> {
        ["<|endoftext|>", "<s>", "<|begin_of_text|>", "<bos>"]
            .iter()
            .find_map(|t| self.inner.token_to_id(t))
            .map(i64::from)
    }

    /// Token ids of `text`, without special tokens (BOS is added by `tokenize` on request).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Input(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(enc.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// Readable text of each id on its own (decoding one at a time keeps the
    /// leading space of " Mary" that the byte-level decoder would merge away).
    pub fn token_strings(&self, ids: &[i64]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                u32::try_from(id)
                    .ok()
                    .and_then(|id| self.inner.decode(&[id], false).ok())
                    .unwrap_or_else(|| format!("<id {id}>"))
            })
            .collect()
    }
}

/// Id grids for a batch of prompt pairs. Pairs of different lengths are
/// right-padded to `seq_len` (padding side: right, because every supported
/// model is causal: a real token never attends to the pads after it, so
/// the results do not depend on the pads, mask or not, and positions keep
/// their ids).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPrompts {
    /// [pair][position], padded to `seq_len`
    pub clean_ids: Vec<Vec<i64>>,
    /// The corrupted prompts' ids, `[pair][position]`, padded to `seq_len`.
    pub corrupted_ids: Vec<Vec<i64>>,
    /// [pair]
    pub correct_ids: Vec<i64>,
    /// `[pair]`: the incorrect answer's token id.
    pub incorrect_ids: Vec<i64>,
    /// The longest pair's length.
    pub seq_len: usize,
    /// [pair] real (unpadded) length; the metric reads position `lengths[p] - 1`.
    pub lengths: Vec<usize>,
    /// Token strings of each clean prompt, for axis labels.
    pub clean_tokens: Vec<Vec<String>>,
}

/// Tokenizes every pair and checks what patching relies on: single-token,
/// distinct answers; clean and corrupted positions that correspond; ids the
/// model's embedding can look up. Shorter pairs are right-padded.
/// `model_vocab = usize::MAX` skips the vocabulary check.
pub fn tokenize(
    tok: &PromptTokenizer,
    pairs: &[PromptPair],
    add_bos: bool,
    model_vocab: usize,
) -> Result<TokenizedPrompts> {
    tokenize_for(tok, pairs, add_bos, model_vocab, Answers::Required)
}

/// `tokenize`, with answers optional when the metric does not read them.
pub fn tokenize_for(
    tok: &PromptTokenizer,
    pairs: &[PromptPair],
    add_bos: bool,
    model_vocab: usize,
    answers: Answers,
) -> Result<TokenizedPrompts> {
    if pairs.is_empty() {
        return Err(Error::Input("no prompt pairs to tokenize".into()));
    }
    let bos = match (add_bos, tok.bos_id()) {
        (false, _) => None,
        (true, Some(id)) => Some(id),
        (true, None) => {
            return Err(Error::Input(
                "BOS requested but the tokenizer has no BOS token (<|endoftext|>, <s>, ...)".into(),
            ))
        }
    };
    let mut out = TokenizedPrompts {
        clean_ids: Vec::with_capacity(pairs.len()),
        corrupted_ids: Vec::with_capacity(pairs.len()),
        correct_ids: Vec::with_capacity(pairs.len()),
        incorrect_ids: Vec::with_capacity(pairs.len()),
        seq_len: 0,
        lengths: Vec::with_capacity(pairs.len()),
        clean_tokens: Vec::with_capacity(pairs.len()),
    };
    for (i, p) in pairs.iter().enumerate() {
        let t = tokenize_pair(tok, p, i, bos, model_vocab, answers)?;
        out.seq_len = out.seq_len.max(t.clean.len());
        out.clean_tokens.push(tok.token_strings(&t.clean));
        out.lengths.push(t.clean.len());
        out.clean_ids.push(t.clean);
        out.corrupted_ids.push(t.corrupted);
        out.correct_ids.push(t.correct);
        out.incorrect_ids.push(t.incorrect);
    }
    // The pad id never reaches a real token (causal attention): any valid id does.
    let pad = tok.bos_id().filter(|&id| id >= 0 && (id as u64) < model_vocab as u64).unwrap_or(0);
    for row in out.clean_ids.iter_mut().chain(out.corrupted_ids.iter_mut()) {
        row.resize(out.seq_len, pad);
    }
    Ok(out)
}

/// What a tokenized prompt set may mislead with, in words for a warning:
/// answers without the leading space their prompt implies (GPT-2-style
/// tokenizers fold the space into the word, so "Alice" after "to" is another
/// token than " Alice"), and prompts of different lengths (right-padded, so
/// their last tokens sit in different columns of the positions grid, which
/// is labelled with the first prompt's tokens).
pub fn warnings(tok: &PromptTokenizer, pairs: &[PromptPair], t: &TokenizedPrompts) -> Vec<String> {
    let mut out = vec![];
    let unspaced: Vec<(usize, &str, &str)> = pairs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            [(i, "correct", p.correct.as_str()), (i, "incorrect", p.incorrect.as_str())]
                .map(|(i, w, a)| (i, w, a, &p.clean))
        })
        .filter(|(_, _, a, prompt)| {
            !a.is_empty()
                && !a.starts_with(char::is_whitespace)
                && !prompt.ends_with(char::is_whitespace)
                && matches!(tok.encode(&format!(" {a}")).as_deref(), Ok([_]))
        })
        .map(|(i, w, a, _)| (i, w, a))
        .collect();
    if let Some(&(i, which, a)) = unspaced.first() {
        out.push(format!(
            "{} answer{} without the leading space the prompt implies, e.g. {} {which} answer {a:?}: the prompt ends in a \
             word, and \" {a}\" is the token that follows one; write \" {a}\" (the logit difference of {a:?} reads another \
             token)",
            unspaced.len(),
            if unspaced.len() == 1 { "" } else { "s" },
            pairs[i].label(i),
        ));
    }
    let (lo, hi) = (t.lengths.iter().min().copied().unwrap_or(0), t.lengths.iter().max().copied().unwrap_or(0));
    if lo != hi {
        out.push(format!(
            "the prompts have {lo} to {hi} tokens: they are right-padded, so column i of the positions grid is every \
             prompt's i-th token and the last tokens of prompts of different lengths sit in different columns; the \
             axis labels are the first prompt's ({} tokens). Prompts of one template and length give a positions grid \
             that reads token by token",
            t.lengths.first().copied().unwrap_or(0)
        ));
    }
    out
}

/// One pair's ids, before padding.
struct PairIds {
    clean: Vec<i64>,
    corrupted: Vec<i64>,
    correct: i64,
    incorrect: i64,
}

/// Tokenizes pair `i` and checks what patching relies on (see `tokenize`).
fn tokenize_pair(
    tok: &PromptTokenizer,
    p: &PromptPair,
    i: usize,
    bos: Option<i64>,
    model_vocab: usize,
    answers: Answers,
) -> Result<PairIds> {
    let fail = |what: String| Err(Error::Input(format!("{}: {what}", p.label(i))));
    let correct = answer_id(tok, p, i, "correct", &p.correct, answers)?;
    let incorrect = answer_id(tok, p, i, "incorrect", &p.incorrect, answers)?;
    if correct == incorrect && answers == Answers::Required {
        return fail(format!(
            "correct answer {:?} and incorrect answer {:?} are the same token {correct}",
            p.correct, p.incorrect
        ));
    }
    let prompt_ids = |text: &str| -> Result<Vec<i64>> {
        let mut ids: Vec<i64> = bos.into_iter().collect();
        ids.extend(tok.encode(text)?);
        Ok(ids)
    };
    let clean = prompt_ids(&p.clean)?;
    let corrupted = prompt_ids(&p.corrupted)?;
    if clean.len() != corrupted.len() {
        return fail(format!(
            "clean prompt has {} tokens but corrupted prompt has {}; they must be equal so that positions correspond",
            clean.len(),
            corrupted.len()
        ));
    }
    if clean.is_empty() {
        return fail("prompts are empty".into());
    }
    // An id past the embedding table means the tokenizer belongs to another model.
    let all = clean.iter().chain(&corrupted).chain([&correct, &incorrect]);
    if let Some(&bad) = all.into_iter().find(|&&id| id < 0 || id as u64 >= model_vocab as u64) {
        return fail(format!(
            "token id {bad} is outside the model's vocabulary of {model_vocab}; \
             the tokenizer (vocabulary {}) does not match the model's vocabulary size",
            tok.vocab_size()
        ));
    }
    Ok(PairIds { clean, corrupted, correct, incorrect })
}

/// The single token of an answer; a missing answer is id 0 when the metric
/// does not read answers.
fn answer_id(
    tok: &PromptTokenizer,
    p: &PromptPair,
    i: usize,
    which: &str,
    text: &str,
    answers: Answers,
) -> Result<i64> {
    if text.is_empty() {
        return match answers {
            Answers::Unused => Ok(0),
            Answers::Required => Err(Error::Input(format!(
                "{}: the {which} answer is missing; this metric reads the answers \
                 (only --metric kl runs without them)",
                p.label(i)
            ))),
        };
    }
    match tok.encode(text)?[..] {
        [id] => Ok(id),
        ref ids => Err(Error::Input(format!(
            "{}: {which} answer {text:?} must be exactly one token, but it tokenized to {} tokens {:?}{}",
            p.label(i),
            ids.len(),
            tok.token_strings(ids),
            leading_space_hint(tok, text)
        ))),
    }
}

impl TokenizedPrompts {
    /// The pairs in `range`, as a prompt set of their own.
    pub fn slice(&self, range: std::ops::Range<usize>) -> TokenizedPrompts {
        TokenizedPrompts {
            clean_ids: self.clean_ids[range.clone()].to_vec(),
            corrupted_ids: self.corrupted_ids[range.clone()].to_vec(),
            correct_ids: self.correct_ids[range.clone()].to_vec(),
            incorrect_ids: self.incorrect_ids[range.clone()].to_vec(),
            seq_len: self.seq_len,
            lengths: self.lengths[range.clone()].to_vec(),
            clean_tokens: self.clean_tokens[range].to_vec(),
        }
    }
}

/// When `text` has no leading space but " text" is one token (GPT-2-style
/// tokenizers fold the space into the word), says so.
fn leading_space_hint(tok: &PromptTokenizer, text: &str) -> String {
    if text.starts_with(' ') {
        return String::new();
    }
    match tok.encode(&format!(" {text}")).as_deref() {
        Ok([_]) => format!(
            "; with a leading space, \" {text}\" is one token: answers follow the prompt's last word, \
             so they usually start with a space"
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The workspace root (this crate is crates/core): the bundled model's folder.
    fn root() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/core").to_path_buf()
    }

    fn gpt2() -> PromptTokenizer {
        PromptTokenizer::from_file(&root().join("models/tokenizer.json")).unwrap()
    }

    fn pair(clean: &str, corrupted: &str, correct: &str, incorrect: &str) -> PromptPair {
        PromptPair {
            clean: clean.into(),
            corrupted: corrupted.into(),
            correct: correct.into(),
            incorrect: incorrect.into(),
            origin: None,
        }
    }

    fn input_err(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::Input(m)) => m,
            other => panic!("expected Error::Input, got {other:?}"),
        }
    }

    /// A file in a temp folder unique to this test process and `name`, and the folder's guard
    /// (hold it while the file is read).
    fn temp_file(name: &str, contents: &str) -> (crate::test_dir::TestDir, PathBuf) {
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-prompts-{}-{name}", std::process::id()));
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        (dir, path)
    }

    fn check_reference(fixture: &str, add_bos: bool) {
        let text = std::fs::read_to_string(root().join("tests/fixtures").join(fixture)).unwrap();
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        let input_ids: Vec<Vec<i64>> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
        let answer_ids: Vec<[i64; 2]> = serde_json::from_value(reference["answer_ids"].clone()).unwrap();

        let tok = gpt2();
        let t = tokenize(&tok, &ioi_default(), add_bos, tok.vocab_size()).unwrap();
        assert_eq!(t.clean_ids, input_ids);
        assert_eq!(t.seq_len, reference["seq_len"].as_u64().unwrap() as usize);
        let answers: Vec<[i64; 2]> = t.correct_ids.iter().zip(&t.incorrect_ids).map(|(&c, &i)| [c, i]).collect();
        assert_eq!(answers, answer_ids);
        // Corrupted prompt i is the clean prompt of its partner.
        for i in 0..8 {
            assert_eq!(t.corrupted_ids[i], input_ids[i ^ 1]);
        }
    }

    #[test]
    fn prompts_match_reference_ids() {
        check_reference("ioi-reference.json", false);
    }

    #[test]
    fn prompts_match_reference_ids_with_bos() {
        check_reference("ioi-reference-bos.json", true);
    }

    #[test]
    fn prompts_gpt2_tokenizer_facts() {
        let tok = gpt2();
        assert_eq!(tok.vocab_size(), 50257);
        assert_eq!(tok.bos_id(), Some(50256));
        let names = [
            (" Mary", 5335),
            (" John", 1757),
            (" Tom", 4186),
            (" James", 3700),
            (" Dan", 6035),
            (" Sid", 15686),
            (" Martin", 5780),
            (" Amy", 14235),
        ];
        for (name, id) in names {
            assert_eq!(tok.encode(name).unwrap(), vec![id], "{name:?}");
            assert_eq!(tok.token_strings(&[id]), vec![name.to_string()]);
        }
        // No special tokens are added by encode.
        assert_eq!(tok.encode(&ioi_default()[0].clean).unwrap().len(), 14);
    }

    #[test]
    fn prompts_clean_tokens_label_positions() {
        let tok = gpt2();
        let t = tokenize(&tok, &ioi_default(), true, usize::MAX).unwrap();
        assert_eq!(t.clean_tokens.len(), 8);
        assert_eq!(t.clean_tokens[0][0], "<|endoftext|>");
        assert_eq!(t.clean_tokens[0][1..4], ["When", " John", " and"]);
        assert_eq!(t.clean_tokens[0].concat(), format!("<|endoftext|>{}", ioi_default()[0].clean));
    }

    #[test]
    fn prompts_jsonl_file_equals_default() {
        let pairs = read_jsonl(&root().join("models/ioi-prompts.jsonl")).unwrap();
        assert_eq!(pairs, ioi_default());
    }

    #[test]
    fn prompts_jsonl_skips_blank_lines() {
        let line = serde_json::to_string(&ioi_default()[0]).unwrap();
        let (_dir, path) = temp_file("blank.jsonl", &format!("\n{line}\n   \n{line}\n\n"));
        let pairs = read_jsonl(&path).unwrap();
        assert_eq!(pairs, vec![ioi_default()[0].clone(); 2]);
    }

    #[test]
    fn prompts_jsonl_malformed_line_names_line() {
        let good = serde_json::to_string(&ioi_default()[0]).unwrap();
        let (_dir, path) = temp_file("bad.jsonl", &format!("{good}\n\n{{\"clean\": \"x\", \"corrupted\": \"y\"\n"));
        let msg = input_err(read_jsonl(&path));
        assert!(msg.contains(&format!("{}:3:", path.display())), "{msg}");
        assert!(msg.contains("EOF while parsing"), "{msg}");

        let (_dir2, path2) =
            temp_file("missing-field.jsonl", "{\"clean\": \"x\", \"correct\": \" a\", \"incorrect\": \" b\"}\n");
        let msg = input_err(read_jsonl(&path2));
        assert!(msg.contains(&format!("{}:1:", path2.display())), "{msg}");
        assert!(msg.contains("missing field `corrupted`"), "{msg}");
    }

    #[test]
    fn prompts_jsonl_with_a_utf8_bom_reads() {
        let line = serde_json::to_string(&ioi_default()[0]).unwrap();
        let (_dir, path) = temp_file("bom.jsonl", &format!("\u{feff}{line}\n{line}\n"));
        assert_eq!(read_jsonl(&path).unwrap(), vec![ioi_default()[0].clone(); 2]);
    }

    #[test]
    fn prompts_json_array_file_reads_as_pairs() {
        let text = serde_json::to_string_pretty(&ioi_default()).unwrap();
        let (_dir, path) = temp_file("array.json", &text);
        let pairs = read_jsonl(&path).unwrap();
        assert_eq!(pairs, ioi_default());
        assert_eq!(pairs[3].origin.as_deref(), Some(format!("{}: array element 3", path.display()).as_str()));
        let (_bad_dir, bad) = temp_file("bad-array.json", "[{\"clean\": \"x\"}]");
        let msg = input_err(read_jsonl(&bad));
        assert!(msg.contains("array element 0: not a prompt pair"), "{msg}");
        assert!(msg.contains("missing field `corrupted`"), "{msg}");
    }

    #[test]
    fn prompts_per_pair_errors_name_the_file_line() {
        let mut pairs = ioi_default();
        pairs[1].incorrect = " Maryland-ish".into();
        let lines: Vec<String> = pairs.iter().map(|p| serde_json::to_string(p).unwrap()).collect();
        // A blank line first: line numbers are the file's, not the pair index.
        let (_dir, path) = temp_file("lines.jsonl", &format!("\n{}\n", lines.join("\n")));
        let read = read_jsonl(&path).unwrap();
        let msg = input_err(tokenize(&gpt2(), &read, false, usize::MAX));
        assert!(msg.starts_with(&format!("{}:3: pair 1: incorrect answer", path.display())), "{msg}");
    }

    #[test]
    fn prompts_answer_without_leading_space_gets_a_hint() {
        let mut pairs = ioi_default();
        pairs[4].correct = "Sid".into();
        let msg = input_err(tokenize(&gpt2(), &pairs, false, usize::MAX));
        assert!(msg.contains("[\"S\", \"id\"]"), "{msg}");
        assert!(msg.contains("with a leading space, \" Sid\" is one token"), "{msg}");
        // No hint when the spaced form is not one token either.
        pairs[4].correct = "Maryland-ish".into();
        let msg = input_err(tokenize(&gpt2(), &pairs, false, usize::MAX));
        assert!(!msg.contains("leading space"), "{msg}");
    }

    #[test]
    fn prompts_without_answers_only_for_a_metric_that_ignores_them() {
        let (_dir, path) = temp_file(
            "no-answers.jsonl",
            "{\"clean\": \"When John and Mary went\", \"corrupted\": \"When Tom and Mary went\"}\n",
        );
        let pairs = read_jsonl(&path).unwrap();
        let msg = input_err(tokenize(&gpt2(), &pairs, false, usize::MAX));
        assert!(msg.contains(":1: pair 0: the correct answer is missing"), "{msg}");
        assert!(msg.contains("only --metric kl runs without them"), "{msg}");
        let t = tokenize_for(&gpt2(), &pairs, false, usize::MAX, Answers::Unused).unwrap();
        assert_eq!((t.correct_ids.clone(), t.incorrect_ids.clone()), (vec![0], vec![0]));
        assert_eq!(t.clean_ids[0].len(), 5);
    }

    #[test]
    fn prompts_jsonl_empty_file() {
        let (_dir, path) = temp_file("empty.jsonl", "\n  \n");
        let msg = input_err(read_jsonl(&path));
        assert_eq!(msg, format!("{} contains no prompt pairs", path.display()));
    }

    #[test]
    fn prompts_jsonl_missing_file() {
        let path = root().join("models/no-such-prompts.jsonl");
        let err = read_jsonl(&path).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-prompts.jsonl"), "{err}");
    }

    #[test]
    fn prompts_tokenizer_missing_file() {
        let path = root().join("models/no-such-tokenizer.json");
        let msg = input_err(PromptTokenizer::from_file(&path).map(|_| ()));
        assert!(msg.contains("no-such-tokenizer.json"), "{msg}");
    }

    #[test]
    fn prompts_multi_token_answer() {
        let tok = gpt2();
        let mut pairs = ioi_default();
        pairs[2].correct = " Maryland-ish".into();
        let msg = input_err(tokenize(&tok, &pairs, false, usize::MAX));
        assert!(msg.starts_with("pair 2: correct answer \" Maryland-ish\" must be exactly one token"), "{msg}");
        assert!(msg.contains("[\" Maryland\", \"-\", \"ish\"]"), "{msg}");

        pairs[2] = ioi_default()[2].clone();
        pairs[5].incorrect = "Mary Jane".into();
        let msg = input_err(tokenize(&tok, &pairs, false, usize::MAX));
        assert!(msg.contains("pair 5: incorrect answer \"Mary Jane\""), "{msg}");
        assert!(msg.contains("[\"Mary\", \" Jane\"]"), "{msg}");
    }

    #[test]
    fn prompts_same_answers() {
        let p = pair("When John and Mary went", "When John and Mary went", " Mary", " Mary");
        let msg = input_err(tokenize(&gpt2(), &[p], false, usize::MAX));
        assert!(
            msg.contains("pair 0: correct answer \" Mary\" and incorrect answer \" Mary\" are the same token 5335"),
            "{msg}"
        );
    }

    #[test]
    fn prompts_unequal_pair_lengths() {
        let mut pairs = ioi_default();
        pairs[1].corrupted = "When John and Mary went to the shops, Mary Jane gave the bag to".into();
        let msg = input_err(tokenize(&gpt2(), &pairs, false, usize::MAX));
        assert!(msg.contains("pair 1: clean prompt has 14 tokens but corrupted prompt has 15"), "{msg}");
        assert!(msg.contains("positions correspond"), "{msg}");
    }

    #[test]
    fn prompts_of_different_lengths_are_right_padded() {
        let mut pairs = ioi_default();
        pairs.push(pair(
            "When Ann and Bob left, Bob gave it to",
            "When Ann and Bob left, Ann gave it to",
            " Ann",
            " Bob",
        ));
        // Shorter pairs are right-padded; each keeps its own length.
        let t = tokenize(&gpt2(), &pairs, true, usize::MAX).unwrap();
        assert_eq!(t.seq_len, 15);
        assert_eq!(t.lengths[0], 15);
        assert_eq!(t.lengths[8], 11);
        assert_eq!(t.clean_ids[8].len(), 15);
        assert_eq!(t.clean_ids[8][11..], [50256; 4]);
    }

    #[test]
    fn prompts_no_pairs() {
        let msg = input_err(tokenize(&gpt2(), &[], false, usize::MAX));
        assert!(msg.contains("no prompt pairs"), "{msg}");
    }

    #[test]
    fn prompts_ids_outside_model_vocab() {
        let tok = gpt2();
        // BOS 50256 is the largest GPT-2 id: fine for 50257, out of range for 50256.
        tokenize(&tok, &ioi_default(), true, 50257).unwrap();
        let msg = input_err(tokenize(&tok, &ioi_default(), true, 50256));
        assert!(msg.starts_with("pair 0: token id 50256 is outside the model's vocabulary of 50256"), "{msg}");
        assert!(msg.contains("does not match the model's vocabulary size"), "{msg}");
        // A tiny random model's vocabulary catches the first large id (" Mary" = 5335).
        let msg = input_err(tokenize(&tok, &ioi_default(), false, 1000));
        assert!(msg.starts_with("pair 0: token id 2215 is outside"), "{msg}");
    }
}

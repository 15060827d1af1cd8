//! How many prompt pairs (attribution) or patching rows (exact patching,
//! integrated gradients) one runtime call may hold, from the model's size and
//! the memory this machine has, so that no default run exceeds the machine.
//!
//! The cost model, calibrated with `/usr/bin/time -v` on whole processes
//! (see `Workload::coefficients`):
//!
//! ```text
//! peak = weights + BASE + rows x row_bytes
//! row_bytes = 4 x (a x layers x seq x width + b x layers x heads x seq^2 + c x vocab)
//! ```
//!
//! `weights` counts every initializer once, at the precision the runtime holds
//! it (ONNX Runtime reads them from the file; attrpatch holds no copy), plus
//! twice the largest float32 copy a weight held at the file's precision
//! becomes while one node runs (`onnx::file_precision`). `a` counts the width-sized float tensors a
//! row keeps alive per layer and token (the MLP's are 4 wide), `b` the
//! attention's `heads x seq x seq` score tensors, `c` the logits row. A row
//! with a backward pass keeps its forward tensors for the gradients, so its
//! coefficients are larger.

use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::pb::ModelProto;

/// What the sizing needs to know of a rewritten model and its prompts.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelShape {
    /// Hooks, one per layer.
    pub layers: usize,
    /// The hook's width (the model's hidden size for attention hooks).
    pub width: usize,
    /// Attention heads; 1 when the hooks do not split into heads.
    pub heads: usize,
    /// Tokens per (padded) prompt.
    pub seq_len: usize,
    /// Vocabulary size (the width of a logits row).
    pub vocab: usize,
    /// Bytes of every initializer, counted once.
    pub weight_bytes: u64,
}

impl ModelShape {
    /// Reads the weight bytes and the hook's width from the graph (the hook
    /// node's 2-D constant weight; its largest dim), before the weights are
    /// handed to the runtime.
    pub fn of(proto: &ModelProto, hook_nodes: &[&str], heads: Option<usize>, vocab: usize, seq_len: usize) -> Self {
        let Some(g) = proto.graph.as_ref() else {
            return ModelShape {
                layers: hook_nodes.len(),
                heads: heads.unwrap_or(1),
                vocab,
                seq_len,
                ..Default::default()
            };
        };
        // Weights held at the file's precision count as the file holds them, plus the
        // float32 copies that exist while one node runs (up to two at once: a forward
        // MatMulNBits' and a backward DequantizeLinear's).
        use attrpatch_onnx::file_precision;
        let weight_bytes: u64 = g
            .initializer
            .iter()
            .map(|t| {
                file_precision::held_bytes(t).unwrap_or_else(|| {
                    let numel = t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>();
                    (numel * elem_bits(t.data_type)).div_ceil(8)
                })
            })
            .sum::<u64>()
            + 2 * file_precision::largest_transient(g);
        let width = hook_nodes
            .first()
            .and_then(|name| g.node.iter().find(|n| n.name == *name))
            .and_then(|n| n.input.iter().find_map(|i| g.initializer.iter().find(|t| &t.name == i && t.dims.len() == 2)))
            .map(|t| t.dims.iter().copied().max().unwrap_or(0).max(0) as usize)
            // No weight found: the width of a GPT-2-like model of these weights (12 width^2 per layer).
            .unwrap_or_else(|| {
                let params = weight_bytes as f64 / 4.0 / (12.0 * hook_nodes.len().max(1) as f64);
                params.sqrt().ceil() as usize
            });
        ModelShape { layers: hook_nodes.len(), width, heads: heads.unwrap_or(1), seq_len, vocab, weight_bytes }
    }
}

/// Bytes per element of an ONNX tensor data type (4 when unknown).
fn elem_bits(data_type: i32) -> u64 {
    match data_type {
        21 | 22 => 4,          // uint4, int4
        2 | 3 | 9 => 8,        // uint8, int8, bool
        4 | 5 | 10 | 16 => 16, // uint16, int16, float16, bfloat16
        7 | 11 | 13 => 64,     // int64, double, uint64
        _ => 32,
    }
}

/// What one row of a runtime call computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// An attribution pair: clean and corrupted forward, the corrupted backward.
    AttributionPair,
    /// An exact-patching row: one patched forward.
    PatchedForward,
    /// An integrated-gradients row: a patched forward and its backward.
    ForwardBackward,
}

impl Workload {
    /// (a, b, c) of the module's cost model. Measured with `/usr/bin/time -v`
    /// (debug build, ONNX Runtime CPU, 2 threads) on the GPT-2-small-sized
    /// export (12 layers x 12 heads, 768 wide, vocab 50257) as the slope of
    /// the peak RSS over rows per call:
    /// - attribution pairs: 12.7 MB a pair at 14 tokens (2 vs 8 pairs:
    ///   647 vs 723 MB), 264 MB at 256 tokens (1 vs 4 pairs: 1.34 vs
    ///   2.13 GB); fitted a = 24, b = 1, taken 1.5x;
    /// - exact-patching rows: 0.4-0.6 MB a row at 14 tokens (16, 145 and
    ///   256 rows: 584, 640, 735 MB); taken 4x, since ONNX Runtime's arena
    ///   grows in doublings;
    /// - integrated-gradients rows: 9-19 MB a row at 14 tokens (8, 24 and 64
    ///   rows: 0.87, 1.01, 1.78 GB), and 256 rows once peaked at 12 GB
    ///   (47 MB a row, the arena's doubling): taken to give 43 MB a row.
    fn coefficients(self) -> (f64, f64, f64) {
        match self {
            Workload::AttributionPair => (36.0, 3.0, 2.0),
            Workload::PatchedForward => (4.0, 2.0, 2.0),
            Workload::ForwardBackward => (80.0, 12.0, 2.0),
        }
    }

    /// The unit a call is counted in, for messages.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::AttributionPair => "pairs",
            _ => "rows",
        }
    }

    /// The most rows a call takes even when memory allows more: past these,
    /// calls got no faster (64 IG rows ran faster than 256).
    pub fn cap(self) -> usize {
        match self {
            Workload::AttributionPair => 64,
            Workload::PatchedForward => 256,
            Workload::ForwardBackward => 64,
        }
    }

    /// `cap` for prompts of `seq_len` tokens. Attribution pairs: about
    /// [`ATTRIBUTION_TOKENS_PER_CALL`] tokens a call, 2 to 16 pairs. Past that
    /// calls got no faster while ONNX Runtime's arena, which grows in
    /// doublings, peaked far higher (GPT-2-small-sized export, release, 2
    /// threads: 8 pairs of 256 tokens ran in 7.1-8.0 s at 3.5 GB as one call,
    /// 6.4-7.0 s at 2.0 GB as 4 calls of 2; 64 pairs of 16 tokens 5.2 s at
    /// 1.9 GB as one call, 4.0 s at 1.2 GB as 4 calls of 16). At least 2 keeps
    /// a neighbour-swapped pair's partner in its call (its sequences are shared),
    /// and so does an even count.
    pub fn cap_for(self, seq_len: usize) -> usize {
        match self {
            Workload::AttributionPair => {
                let n = (ATTRIBUTION_TOKENS_PER_CALL / seq_len.max(1)).clamp(2, 16);
                n - n % 2
            }
            w => w.cap(),
        }
    }
}

/// Prompt tokens per attribution call (pairs x tokens) that `Workload::cap_for` aims at.
pub const ATTRIBUTION_TOKENS_PER_CALL: usize = 512;

/// The process's own memory besides weights and rows: the runtime library,
/// the tokenizer, the graph (measured: 100-200 MB on the bundled model).
pub const BASE_BYTES: u64 = 256 << 20;

/// Estimated bytes of one row of `w` on a model of this shape.
pub fn row_bytes(s: &ModelShape, w: Workload) -> u64 {
    let (a, b, c) = w.coefficients();
    let (l, e, h, n, v) = (s.layers as f64, s.width as f64, s.heads as f64, s.seq_len as f64, s.vocab as f64);
    (4.0 * (a * l * n * e + b * l * h * n * n + c * v)).ceil().max(1.0) as u64
}

/// The memory a run may use, and where that number came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes the run may use.
    pub bytes: u64,
    /// `MemAvailable` when it could be read.
    pub available: Option<u64>,
    /// Whether `--max-memory` set it.
    pub explicit: bool,
}

/// Share of the available memory a default run plans to use: the rest is
/// for other processes and the estimate's error.
pub const AVAILABLE_SHARE: f64 = 0.7;
/// The budget when the available memory cannot be read (not Linux).
pub const FALLBACK_BYTES: u64 = 2 << 30;

impl Budget {
    /// `--max-memory` when given, else 70% of `MemAvailable`, else 2 GiB.
    pub fn new(max_memory: Option<u64>) -> Self {
        let available = available_memory();
        match (max_memory, available) {
            (Some(bytes), _) => Budget { bytes, available, explicit: true },
            (None, Some(a)) => Budget { bytes: (a as f64 * AVAILABLE_SHARE) as u64, available, explicit: false },
            (None, None) => Budget { bytes: FALLBACK_BYTES, available, explicit: false },
        }
    }

    /// "memory budget 2.1G of 3.0G available", as the run prints it.
    pub fn describe(&self) -> String {
        let of = match self.available {
            Some(a) => format!("{} available", format_size(a)),
            None => "an unknown amount available".into(),
        };
        let how = if self.explicit { " (--max-memory)" } else { "" };
        format!("memory budget {}{how} of {of}", format_size(self.bytes))
    }
}

/// `MemAvailable` from /proc/meminfo (Linux); None elsewhere.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// How many rows a call holds, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sizing {
    /// Pairs or rows per runtime call.
    pub per_call: usize,
    /// "pairs" or "rows".
    pub unit: String,
    /// Whether `--batch-size` / `--rows-per-call` gave it.
    pub explicit: bool,
    /// The memory budget in bytes.
    pub budget_bytes: u64,
    /// The memory available when the job started, when known.
    pub available_bytes: Option<u64>,
    /// Whether the budget came from `--max-memory` (else 70% of what is available).
    pub budget_from_max_memory: bool,
    /// The estimate behind the choice.
    pub weight_bytes: u64,
    /// Estimated bytes per pair or row.
    pub row_bytes: u64,
    /// Set when even one row exceeds the budget.
    pub warning: Option<String>,
}

impl Sizing {
    /// "batch of 8 pairs per call (memory budget 2.1G of 3.0G available)".
    pub fn line(&self) -> String {
        let budget =
            Budget { bytes: self.budget_bytes, available: self.available_bytes, explicit: self.budget_from_max_memory };
        let given = if self.explicit { ", as given" } else { "" };
        let what = if self.unit == "pairs" { "batch of" } else { "patching:" };
        format!("{what} {} {} per call{given} ({})", self.per_call, self.unit, budget.describe())
    }
}

/// Rows per call: `explicit` when given, else as many as the budget holds
/// after the weights and the process's base (at least 1, with a warning when
/// even that does not fit; at most `needed`, the rows the job has, and the
/// workload's cap).
pub fn choose(explicit: Option<usize>, needed: usize, shape: &ModelShape, w: Workload, budget: &Budget) -> Sizing {
    choose_scaled(explicit, needed, shape, w, budget, 1.0)
}

/// `choose` with each row costing `scale` times `row_bytes`: a pair of the
/// shared-rows attribution graph costs its share R/B of the call's rows.
pub fn choose_scaled(
    explicit: Option<usize>,
    needed: usize,
    shape: &ModelShape,
    w: Workload,
    budget: &Budget,
    scale: f64,
) -> Sizing {
    let row = ((row_bytes(shape, w) as f64 * scale).ceil() as u64).max(1);
    let fixed = shape.weight_bytes + BASE_BYTES;
    let mut warning = None;
    let per_call = match explicit {
        Some(k) => k,
        None => {
            let fits = budget.bytes.saturating_sub(fixed) / row;
            if fits == 0 {
                warning = Some(format!(
                    "the {} leaves no room for one {} ({} of weights and base, {} per {}): running 1 per \
                     call, which may exceed it; give a larger --max-memory or use a machine with more memory",
                    budget.describe(),
                    w.unit().trim_end_matches('s'),
                    format_size(fixed),
                    format_size(row),
                    w.unit().trim_end_matches('s'),
                ));
            }
            (fits as usize).clamp(1, w.cap_for(shape.seq_len).min(needed.max(1)))
        }
    };
    Sizing {
        per_call,
        unit: w.unit().into(),
        explicit: explicit.is_some(),
        budget_bytes: budget.bytes,
        available_bytes: budget.available,
        budget_from_max_memory: budget.explicit,
        weight_bytes: shape.weight_bytes,
        row_bytes: row,
        warning,
    }
}

/// Parses `--max-memory`: a number with K, M, G or T (powers of 1024; a
/// trailing B or iB is allowed), e.g. `8G`, `512M`, `1.5G`.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = |why: &str| Error::Input(format!("--max-memory {s}: expected a size like 8G or 512M{why}"));
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let upper = upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).unwrap_or(&upper);
    let split = upper.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(upper.len());
    let (num, unit) = upper.split_at(split);
    let shift = match unit.trim() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad("")),
    };
    let n: f64 = num.parse().map_err(|_| bad(""))?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad(" (more than zero)"));
    }
    Ok(bytes as u64)
}

/// `--max-memory`'s value for clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxMemory(pub u64);

impl std::str::FromStr for MaxMemory {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_size(s).map(MaxMemory)
    }
}

/// Bytes as "512M" or "2.1G".
pub fn format_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1}G", b / (1u64 << 30) as f64)
    } else {
        format!("{:.0}M", (b / (1u64 << 20) as f64).ceil())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GPT-2-small-sized export with the tutorial's 14 tokens.
    fn gpt2_small() -> ModelShape {
        ModelShape { layers: 12, width: 768, heads: 12, seq_len: 14, vocab: 50257, weight_bytes: 653 << 20 }
    }

    fn budget(bytes: u64) -> Budget {
        Budget { bytes, available: Some(bytes * 2), explicit: true }
    }

    #[test]
    fn a_budget_that_fits_k_rows_gives_k() {
        let s = gpt2_small();
        for w in [Workload::AttributionPair, Workload::PatchedForward, Workload::ForwardBackward] {
            for k in [1, 3, 11] {
                let b = budget(s.weight_bytes + BASE_BYTES + k * row_bytes(&s, w) + row_bytes(&s, w) / 2);
                let c = choose(None, 1000, &s, w, &b);
                assert_eq!(c.per_call, k as usize, "{w:?}");
                assert!(c.warning.is_none());
            }
        }
    }

    #[test]
    fn rows_are_capped_by_the_job_and_the_workload() {
        let s = gpt2_small();
        let huge = budget(1 << 50);
        assert_eq!(choose(None, 5, &s, Workload::ForwardBackward, &huge).per_call, 5);
        assert_eq!(choose(None, 10_000, &s, Workload::ForwardBackward, &huge).per_call, 64);
        assert_eq!(choose(None, 10_000, &s, Workload::PatchedForward, &huge).per_call, 256);
    }

    #[test]
    fn attribution_calls_hold_about_512_tokens_of_2_to_16_pairs() {
        let huge = budget(1 << 50);
        let pairs_at = |seq_len| {
            let s = ModelShape { seq_len, ..gpt2_small() };
            choose(None, 10_000, &s, Workload::AttributionPair, &huge).per_call
        };
        assert_eq!(pairs_at(14), 16);
        assert_eq!(pairs_at(64), 8);
        assert_eq!(pairs_at(100), 4);
        assert_eq!(pairs_at(256), 2);
        assert_eq!(pairs_at(4096), 2);
        // The job's own pair count still caps it.
        let s = gpt2_small();
        assert_eq!(choose(None, 8, &s, Workload::AttributionPair, &huge).per_call, 8);
    }

    #[test]
    fn a_tiny_budget_gives_one_with_a_warning() {
        let c = choose(None, 100, &gpt2_small(), Workload::AttributionPair, &budget(1 << 20));
        assert_eq!(c.per_call, 1);
        let w = c.warning.expect("a warning");
        assert!(w.contains("--max-memory") && w.contains("1 per call"), "{w}");
    }

    #[test]
    fn explicit_flags_win() {
        let s = gpt2_small();
        let c = choose(Some(500), 1000, &s, Workload::ForwardBackward, &budget(1 << 20));
        assert_eq!((c.per_call, c.explicit, c.warning), (500, true, None));
        let c = choose(Some(3), 1000, &s, Workload::PatchedForward, &budget(1 << 50));
        assert_eq!(c.per_call, 3);
        assert!(c.line().contains("3 rows per call, as given"), "{}", c.line());
    }

    #[test]
    fn longer_prompts_cost_more_per_row() {
        let short = gpt2_small();
        let long = ModelShape { seq_len: 256, ..short };
        for w in [Workload::AttributionPair, Workload::PatchedForward, Workload::ForwardBackward] {
            assert!(row_bytes(&long, w) > 18 * row_bytes(&short, w) - row_bytes(&short, w));
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5GB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
    }

    #[test]
    fn bad_sizes_say_what_is_expected() {
        for s in ["8X", "", "G", "-1G", "0", "8 G G", "1e3G"] {
            let e = parse_size(s).err().unwrap_or_else(|| panic!("{s:?} parsed"));
            let msg = e.to_string();
            assert!(msg.contains(&format!("--max-memory {s}: expected a size like 8G or 512M")), "{msg}");
        }
    }

    #[test]
    fn meminfo_is_read() {
        let text = "MemTotal:       24000000 kB\nMemFree:         6000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(parse_meminfo(text), Some(22_000_000 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn budget_line_names_both_numbers() {
        let b = Budget { bytes: 3 << 30, available: Some(4 << 30), explicit: false };
        assert_eq!(b.describe(), "memory budget 3.0G of 4.0G available");
        let s = choose(None, 8, &gpt2_small(), Workload::AttributionPair, &b);
        assert_eq!(s.line(), "batch of 8 pairs per call (memory budget 3.0G of 4.0G available)");
    }
}

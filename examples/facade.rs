//! The library's facade alone: load the bundled model, rewrite it, run the
//! attribution job on two prompt pairs given here, print the heads grid.
//!
//! `cargo run --example facade` (the ONNX Runtime library from tools/fetch-ort.sh).

use attrpatch::{pair, Attributor, Device, LabeledGrid, Pairs, RewriteOptions, RuntimeOptions};
use std::path::Path;

const MODEL: &str = "models/ioi-gpt2/model.onnx";

/// The two IOI pairs: the indirect object swapped in the corrupted prompt.
fn pairs() -> Pairs {
    Pairs::Prompts(vec![
        pair(
            "When John and Mary went to the shops, John gave the bag to",
            "When John and Mary went to the shops, Mary gave the bag to",
            " Mary",
            " John",
        ),
        pair(
            "When Tom and James went to the park, James gave the ball to",
            "When Tom and James went to the park, Tom gave the ball to",
            " Tom",
            " James",
        ),
    ])
}

/// Rewrites the model (printing what the augmented graph is), then runs the
/// job and returns its heads grid.
fn heads_grid(model: &Path) -> attrpatch::Result<LabeledGrid> {
    let augmented = attrpatch::rewrite(model, &RewriteOptions::default())?;
    println!(
        "augmented model: metric {:?}, {} hooks, {} heads, {} inputs, {} outputs, {} bytes",
        augmented.metric(),
        augmented.hooks().len(),
        augmented.heads().unwrap_or(0),
        augmented.inputs().len(),
        augmented.outputs().len(),
        augmented.to_bytes()?.len()
    );
    let mut job =
        Attributor::builder(model).runtime(RuntimeOptions { device: Device::Cpu, ..Default::default() }).build()?;
    let result = job.attribute(&pairs())?;
    println!("clean metric {:.4}, corrupted metric {:.4}", result.clean_metric, result.corrupted_metric);
    Ok(result.heads())
}

fn print_grid(g: &LabeledGrid) {
    println!("heads grid (normalised logit difference; rows: layers, columns: heads)");
    print!("{:>6}", "");
    for c in &g.cols {
        print!("{c:>9}");
    }
    println!();
    for (r, row) in g.rows.iter().zip(&g.values) {
        print!("{r:>6}");
        for v in row {
            print!("{v:>9.4}");
        }
        println!();
    }
}

fn main() -> std::process::ExitCode {
    match heads_grid(Path::new(MODEL)) {
        Ok(g) => {
            print_grid(&g);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// The grid is the model's shape, finite, and not all noise: some head
    /// carries a clear share of the clean-corrupted gap (the bundled model does IOI).
    #[test]
    fn the_example_prints_a_sane_heads_grid() {
        let g = super::heads_grid(std::path::Path::new(super::MODEL)).unwrap();
        assert_eq!((g.rows.len(), g.cols.len()), (3, 4));
        assert!(g.values.iter().flatten().all(|v| v.is_finite()), "{:?}", g.values);
        let largest = g.values.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(largest > 0.05 && largest < 10.0, "largest |head| {largest}: {:?}", g.values);
    }
}

//! How long the load-time normalisation (`src/normalize/`) takes next to
//! decoding the file, for each model given:
//!
//! `cargo run --release --example normalize_time -- MODEL.onnx [MODEL.onnx ...]`
//!
//! Prints, per model, the median of 3 runs of: decoding (`onnx::io::read_model`),
//! and every normalisation pass on the decoded graph (`normalize::normalize`).

use attrpatch::onnx::io::read_model;
use attrpatch::onnx::model::default_opset;
use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let models: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if models.is_empty() {
        eprintln!("usage: normalize_time MODEL.onnx [MODEL.onnx ...]");
        std::process::exit(2);
    }
    println!("| model | nodes | decode s | normalise s | normalise / decode |");
    println!("|---|---|---|---|---|");
    for path in &models {
        let (mut decode, mut norm, mut nodes) = (vec![], vec![], 0);
        for _ in 0..3 {
            let t = Instant::now();
            let (mut proto, _) = match read_model(path) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            };
            decode.push(t.elapsed().as_secs_f64());
            let opset = default_opset(&proto).unwrap_or(0);
            let t = Instant::now();
            if let Err(e) = attrpatch::normalize::normalize(&mut proto, opset, path) {
                eprintln!("{e}");
                std::process::exit(1);
            }
            norm.push(t.elapsed().as_secs_f64());
            nodes = proto.graph.as_ref().map_or(0, |g| g.node.len());
        }
        let (d, n) = (median(decode), median(norm));
        println!("| {} | {nodes} | {d:.3} | {n:.4} | {:.3} |", path.display(), n / d);
    }
}

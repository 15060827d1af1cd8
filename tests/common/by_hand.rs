//! Exact activation patching done by hand, without the patching graph: the
//! plain model with one layer's hook tensor cut from its producer and fed as
//! an input, one run per head (at each pair's last position) and per
//! position. The reference the patching graph is tested against.

use attrpatch::hooks::{find_hooks, HookKind};
use attrpatch::onnx::consts::FLOAT;
use attrpatch::onnx::facts::Dim;
use attrpatch::onnx::OnnxModel;
use attrpatch::runtime::{self, Device, Runtime, RuntimeKind, RuntimeOptions, Value};
use ndarray::{Array2, ArrayD, Axis, IxDyn};
use prost::Message;
use std::collections::HashMap;
use std::path::Path;

/// Equal-length prompt pairs as token ids, answers as (correct, incorrect).
pub struct Pairs {
    pub clean: Array2<i64>,
    pub corrupted: Array2<i64>,
    pub answers: Vec<(usize, usize)>,
}

impl Pairs {
    pub fn new(clean: &[Vec<i64>], corrupted: &[Vec<i64>], answers: &[Vec<i64>]) -> Self {
        let (b, s) = (clean.len(), clean[0].len());
        Pairs {
            clean: Array2::from_shape_fn((b, s), |(r, c)| clean[r][c]),
            corrupted: Array2::from_shape_fn((b, s), |(r, c)| corrupted[r][c]),
            answers: answers.iter().map(|a| (a[0] as usize, a[1] as usize)).collect(),
        }
    }

    /// Mean logit difference at the last position, from full logits [B, S, V].
    pub fn mean_ld(&self, logits: &ArrayD<f32>) -> f64 {
        let last = self.clean.ncols() - 1;
        let sum: f64 = self
            .answers
            .iter()
            .enumerate()
            .map(|(i, &(c, w))| (logits[[i, last, c]] - logits[[i, last, w]]) as f64)
            .sum();
        sum / self.answers.len() as f64
    }
}

/// The plain model on ONNX Runtime, with chosen tensors fed instead of computed.
pub struct Plain {
    rt: Box<dyn Runtime>,
    inputs: Vec<String>,
}

impl Plain {
    /// The model with the `fed` tensors (name, rank) cut from their producers and taken as
    /// inputs, and `exposed` as outputs.
    pub fn new(model: &OnnxModel, fed: &[(String, usize)], exposed: &[String]) -> Self {
        let mut proto = model.proto.clone();
        let g = proto.graph.as_mut().unwrap();
        for o in g.node.iter_mut().flat_map(|n| n.output.iter_mut()) {
            if fed.iter().any(|(t, _)| t == o) {
                *o = format!("{o}.cut");
            }
        }
        let inputs = g.input.iter().map(|i| i.name.clone()).collect();
        g.input.extend(
            fed.iter().map(|(t, rank)| attrpatch::onnx::graph::value_info(t, FLOAT, &vec![Dim::Unknown; *rank])),
        );
        g.output.extend(exposed.iter().map(|t| attrpatch::onnx::graph::value_info_unshaped(t, FLOAT)));
        let opts = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
        Plain { rt: runtime::create(&proto.encode_to_vec(), &opts).unwrap(), inputs }
    }

    /// Runs `ids` (full-length rows) with the `fed` tensors' values.
    pub fn run(&mut self, ids: &Array2<i64>, fed: Vec<(String, ArrayD<f32>)>) -> HashMap<String, ArrayD<f32>> {
        let mut inputs = vec![];
        for name in &self.inputs {
            let v = match name.as_str() {
                "attention_mask" => Array2::<i64>::ones(ids.dim()),
                "position_ids" => Array2::from_shape_fn(ids.dim(), |(_, c)| c as i64),
                _ => ids.clone(),
            };
            inputs.push((name.clone(), Value::I64(v.into_dyn())));
        }
        inputs.extend(fed.into_iter().map(|(n, v)| (n, Value::F32(v))));
        self.rt.run(inputs).unwrap()
    }
}

/// The plain model's clean and corrupted runs, with every attention hook exposed.
struct Unpatched {
    model: OnnxModel,
    logits: String,
    /// The hook tensors, in layer order.
    tensors: Vec<String>,
    clean: HashMap<String, ArrayD<f32>>,
    corrupted: HashMap<String, ArrayD<f32>>,
    clean_ld: f64,
    corr_ld: f64,
}

impl Unpatched {
    fn run(model_path: &Path, p: &Pairs) -> Self {
        let model = OnnxModel::load(model_path).unwrap();
        let logits = model.graph().output[0].name.clone();
        let tensors: Vec<String> =
            find_hooks(&model, &HookKind::AttnOut).unwrap().iter().map(|h| h.tensor.clone()).collect();
        let mut plain = Plain::new(&model, &[], &tensors);
        let clean = plain.run(&p.clean, vec![]);
        let corrupted = plain.run(&p.corrupted, vec![]);
        let (clean_ld, corr_ld) = (p.mean_ld(&clean[&logits]), p.mean_ld(&corrupted[&logits]));
        Unpatched { model, logits, tensors, clean, corrupted, clean_ld, corr_ld }
    }
}

/// The exact heads grid (each head at the last position) and positions grid
/// (the whole hook at each position), normalised like the tutorial's metric.
pub fn exact_grids(model_path: &Path, p: &Pairs, heads: usize) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let Unpatched { model, logits, tensors, clean, corrupted, clean_ld, corr_ld } = Unpatched::run(model_path, p);
    let (b, s) = p.clean.dim();
    let last = s - 1;
    let (mut grid_heads, mut grid_positions) = (vec![], vec![]);
    for t in &tensors {
        let shape = corrupted[t].shape().to_vec();
        let d = corrupted[t].len() / (b * s);
        let view = |a: &ArrayD<f32>| a.clone().into_shape_with_order(IxDyn(&[b, s, d])).unwrap();
        let (c, x) = (view(&clean[t]), view(&corrupted[t]));
        let mut cut = Plain::new(&model, &[(t.clone(), shape.len())], &[]);
        let mut effect = |patched: ArrayD<f32>| {
            let fed = patched.into_shape_with_order(IxDyn(&shape)).unwrap();
            let out = cut.run(&p.corrupted, vec![(t.clone(), fed)]);
            (p.mean_ld(&out[&logits]) - corr_ld) / (clean_ld - corr_ld)
        };
        let dh = d / heads;
        let mut row = vec![];
        for h in 0..heads {
            let mut a = x.clone();
            for i in 0..b {
                for k in h * dh..(h + 1) * dh {
                    a[[i, last, k]] = c[[i, last, k]];
                }
            }
            row.push(effect(a));
        }
        grid_heads.push(row);
        let mut row = vec![];
        for pos in 0..s {
            let mut a = x.clone();
            a.index_axis_mut(Axis(1), pos).assign(&c.index_axis(Axis(1), pos));
            row.push(effect(a));
        }
        grid_positions.push(row);
    }
    (grid_heads, grid_positions)
}

/// The normalised effect of patching several heads together, each
/// (hook index, head) at every pair's last position, by hand: layer by layer
/// upwards, run the model with the lower layers' patched hooks fed, take this
/// layer's hook as that run computes it, and move the chosen heads to their
/// clean values; the last run feeds every patched hook and gives the metric.
pub fn joint_heads_effect(model_path: &Path, p: &Pairs, heads: usize, set: &[[usize; 2]]) -> f64 {
    let Unpatched { model, logits, tensors, clean, clean_ld, corr_ld, .. } = Unpatched::run(model_path, p);
    let (b, s) = p.clean.dim();
    let last = s - 1;
    let mut layers: Vec<usize> = set.iter().map(|c| c[0]).collect();
    layers.sort_unstable();
    layers.dedup();
    let mut fed: Vec<(String, ArrayD<f32>)> = vec![];
    let ranks = |fed: &[(String, ArrayD<f32>)]| fed.iter().map(|(t, a)| (t.clone(), a.ndim())).collect::<Vec<_>>();
    for &l in &layers {
        let t = &tensors[l];
        let mut run = Plain::new(&model, &ranks(&fed), std::slice::from_ref(t));
        let now = run.run(&p.corrupted, fed.clone()).remove(t).unwrap();
        let shape = now.shape().to_vec();
        let d = now.len() / (b * s);
        let dh = d / heads;
        let mut a = now.into_shape_with_order(IxDyn(&[b, s, d])).unwrap();
        let c = clean[t].clone().into_shape_with_order(IxDyn(&[b, s, d])).unwrap();
        for &[_, h] in set.iter().filter(|c| c[0] == l) {
            for i in 0..b {
                for k in h * dh..(h + 1) * dh {
                    a[[i, last, k]] = c[[i, last, k]];
                }
            }
        }
        fed.push((t.clone(), a.into_shape_with_order(IxDyn(&shape)).unwrap()));
    }
    let mut run = Plain::new(&model, &ranks(&fed), &[]);
    let out = run.run(&p.corrupted, fed);
    (p.mean_ld(&out[&logits]) - corr_ld) / (clean_ld - corr_ld)
}

/// Asserts |got - want| <= tol cell by cell; returns the largest difference.
pub fn assert_abs_close(what: &str, got: &[Vec<f64>], want: &[Vec<f64>], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    let mut worst = 0f64;
    for (l, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: width of row {l}");
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert!((a - b).abs() <= tol, "{what}[{l}][{i}]: got {a}, want {b} (tolerance {tol})");
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

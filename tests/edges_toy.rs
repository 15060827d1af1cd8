//! A linear toy transformer, built by hand as ONNX: "layer-norms" that only
//! scale (Mul by a constant), attention whose query and key weights are zero
//! (so the attention is a fixed causal average and the q/k readers read
//! nothing), a linear MLP. Everything downstream of a reader is linear in its
//! input, so EAP is exact: every edge score equals exact edge patching,
//! computed here by a forward pass in plain Rust (f64) that adds the writer's
//! clean - corrupted difference to that one reader's input.

use crate::common::rng::Rng;
use crate::common::*;
use attrpatch::edges::{run_edges_detailed, Qkv, Reader, Topology, Writer};
use attrpatch::job::JobOptions;
use attrpatch::onnx::consts::{float_tensor, i64_tensor, FLOAT, INT64};
use attrpatch::onnx::facts::Dim;
use attrpatch::onnx::graph::value_info;
use attrpatch::onnx::pb::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};
use std::collections::HashMap;

const D: usize = 4;
const H: usize = 2;
const DH: usize = 2;
const FF: usize = 6;
const V: usize = 7;
const L: usize = 2;

/// The toy's weights (row-major), shared by the ONNX graph and the Rust forward.
struct Toy {
    wte: Vec<f64>,     // [V, D]
    g1: Vec<Vec<f64>>, // per layer [D]
    wv: Vec<Vec<f64>>, // per layer [D, H*DH]
    wo: Vec<Vec<f64>>, // per layer [H*DH, D]
    g2: Vec<Vec<f64>>, // per layer [D]
    w1: Vec<Vec<f64>>, // per layer [D, FF]
    w2: Vec<Vec<f64>>, // per layer [FF, D]
    gf: Vec<f64>,      // [D]
    wu: Vec<f64>,      // [D, V]
}

impl Toy {
    fn new() -> Self {
        let mut r = Rng::seeded("edges linear toy");
        let mut m = |n: usize| r.vec(n, -1.0, 1.0);
        Toy {
            wte: m(V * D),
            g1: (0..L).map(|_| m(D)).collect(),
            wv: (0..L).map(|_| m(D * H * DH)).collect(),
            wo: (0..L).map(|_| m(H * DH * D)).collect(),
            g2: (0..L).map(|_| m(D)).collect(),
            w1: (0..L).map(|_| m(D * FF)).collect(),
            w2: (0..L).map(|_| m(FF * D)).collect(),
            gf: m(D),
            wu: m(D * V),
        }
    }

    fn onnx(&self) -> ModelProto {
        let mut nodes = vec![];
        let mut inits = vec![];
        let mut n = |op: &str, name: &str, ins: &[&str], out: &str, attrs: Vec<AttributeProto>| {
            nodes.push(NodeProto {
                op_type: op.into(),
                name: name.into(),
                input: ins.iter().map(|s| s.to_string()).collect(),
                output: vec![out.into()],
                attribute: attrs,
                ..Default::default()
            })
        };
        let perm = |p: &[i64]| AttributeProto {
            name: "perm".into(),
            r#type: AttributeType::Ints as i32,
            ints: p.to_vec(),
            ..Default::default()
        };
        let mut f = |name: &str, dims: &[i64], v: &[f64]| inits.push(float_tensor(name, FLOAT, dims, v));
        f("wte", &[V as i64, D as i64], &self.wte);
        f("gf", &[D as i64], &self.gf);
        f("wu", &[D as i64, V as i64], &self.wu);
        let zeros = vec![0.0; D * H * DH];
        for l in 0..L {
            f(&format!("g1.{l}"), &[D as i64], &self.g1[l]);
            f(&format!("wq.{l}"), &[D as i64, (H * DH) as i64], &zeros);
            f(&format!("wk.{l}"), &[D as i64, (H * DH) as i64], &zeros);
            f(&format!("wv.{l}"), &[D as i64, (H * DH) as i64], &self.wv[l]);
            f(&format!("wo.{l}"), &[(H * DH) as i64, D as i64], &self.wo[l]);
            f(&format!("g2.{l}"), &[D as i64], &self.g2[l]);
            f(&format!("w1.{l}"), &[D as i64, FF as i64], &self.w1[l]);
            f(&format!("w2.{l}"), &[FF as i64, D as i64], &self.w2[l]);
        }
        // A causal mask for up to 8 positions, sliced to the sequence by broadcasting a [S, S] slice.
        let big: Vec<f64> = (0..64).map(|k| if k % 8 > k / 8 { -1e4 } else { 0.0 }).collect();
        f("mask8", &[8, 8], &big);
        let mut inits_i = vec![
            i64_tensor("heads_shape", &[4], &[0, 0, H as i64, DH as i64]),
            i64_tensor("merge_shape", &[3], &[0, 0, (H * DH) as i64]),
            i64_tensor("zero1", &[1], &[0]),
            i64_tensor("one1", &[1], &[1]),
        ];
        n("Gather", "/model/embed_tokens/Gather", &["wte", "input_ids"], "x.0", vec![]);
        n("Shape", "seq_shape", &["input_ids"], "ids_shape", vec![]);
        n("Slice", "seq_len", &["ids_shape", "one1", "merge_shape_end", "zero1"], "seq", vec![]);
        inits_i.push(i64_tensor("merge_shape_end", &[1], &[2]));
        n(
            "Concat",
            "mask_ends",
            &["seq", "seq"],
            "mask_ends",
            vec![AttributeProto { name: "axis".into(), r#type: AttributeType::Int as i32, i: 0, ..Default::default() }],
        );
        inits_i.push(i64_tensor("zero2", &[2], &[0, 0]));
        inits_i.push(i64_tensor("axes01", &[2], &[0, 1]));
        n("Slice", "mask_slice", &["mask8", "zero2", "mask_ends", "axes01"], "mask", vec![]);
        for l in 0..L {
            let p = |s: &str| format!("/model/layers.{l}/{s}");
            let x = format!("x.{l}");
            n("Mul", &p("input_layernorm/Mul"), &[&x, &format!("g1.{l}")], &p("y"), vec![]);
            for (w, t) in [("q", "q"), ("k", "k"), ("v", "v")] {
                n("MatMul", &p(&format!("self_attn/{w}_proj/MatMul")), &[&p("y"), &format!("w{w}.{l}")], &p(t), vec![]);
                n(
                    "Reshape",
                    &p(&format!("self_attn/{w}_reshape")),
                    &[&p(t), "heads_shape"],
                    &p(&format!("{t}4")),
                    vec![],
                );
            }
            n("Transpose", &p("self_attn/qT"), &[&p("q4")], &p("qh"), vec![perm(&[0, 2, 1, 3])]);
            n("Transpose", &p("self_attn/kT"), &[&p("k4")], &p("kh"), vec![perm(&[0, 2, 3, 1])]);
            n("Transpose", &p("self_attn/vT"), &[&p("v4")], &p("vh"), vec![perm(&[0, 2, 1, 3])]);
            n("MatMul", &p("self_attn/MatMul"), &[&p("qh"), &p("kh")], &p("scores"), vec![]);
            n("Add", &p("self_attn/Add"), &[&p("scores"), "mask"], &p("masked"), vec![]);
            n(
                "Softmax",
                &p("self_attn/Softmax"),
                &[&p("masked")],
                &p("probs"),
                vec![AttributeProto {
                    name: "axis".into(),
                    r#type: AttributeType::Int as i32,
                    i: -1,
                    ..Default::default()
                }],
            );
            n("MatMul", &p("self_attn/MatMul_1"), &[&p("probs"), &p("vh")], &p("pv"), vec![]);
            n("Transpose", &p("self_attn/merge"), &[&p("pv")], &p("pvT"), vec![perm(&[0, 2, 1, 3])]);
            n("Reshape", &p("self_attn/Reshape"), &[&p("pvT"), "merge_shape"], &p("z"), vec![]);
            n("MatMul", &p("self_attn/o_proj/MatMul"), &[&p("z"), &format!("wo.{l}")], &p("o"), vec![]);
            n("Add", &p("Add"), &[&x, &p("o")], &p("mid"), vec![]);
            n("Mul", &p("post_attention_layernorm/Mul"), &[&p("mid"), &format!("g2.{l}")], &p("y2"), vec![]);
            n("MatMul", &p("mlp/up_proj/MatMul"), &[&p("y2"), &format!("w1.{l}")], &p("h"), vec![]);
            n("MatMul", &p("mlp/down_proj/MatMul"), &[&p("h"), &format!("w2.{l}")], &p("m"), vec![]);
            n("Add", &p("Add_1"), &[&p("mid"), &p("m")], &format!("x.{}", l + 1), vec![]);
        }
        n("Mul", "/model/norm/Mul", &[&format!("x.{L}"), "gf"], "yf", vec![]);
        n("MatMul", "/lm_head/MatMul", &["yf", "wu"], "logits", vec![]);
        inits.extend(inits_i);
        let bs = || vec![Dim::Sym("batch".into()), Dim::Sym("sequence".into())];
        let graph = GraphProto {
            name: "linear toy".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("input_ids", INT64, &bs())],
            output: vec![value_info(
                "logits",
                FLOAT,
                &[Dim::Sym("batch".into()), Dim::Sym("sequence".into()), Dim::Known(V as i64)],
            )],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    /// The forward pass in f64: each pair's logit difference, and every writer's output [B*S*D].
    /// `patch`: add this [B*S*D] difference to one reader's input only.
    fn forward(
        &self,
        ids: &[Vec<i64>],
        answers: &[Vec<i64>],
        patch: Option<(Reader, &[f64])>,
    ) -> (Vec<f64>, HashMap<Writer, Vec<f64>>) {
        let (b, s) = (ids.len(), ids[0].len());
        let at = |bi: usize, t: usize, k: usize| (bi * s + t) * D + k;
        let read = |x: &[f64], r: Reader| -> Vec<f64> {
            match patch {
                Some((p, d)) if p == r => x.iter().zip(d).map(|(a, b)| a + b).collect(),
                _ => x.to_vec(),
            }
        };
        let mut writers = HashMap::new();
        let mut x = vec![0.0; b * s * D];
        for bi in 0..b {
            for t in 0..s {
                for k in 0..D {
                    x[at(bi, t, k)] = self.wte[ids[bi][t] as usize * D + k];
                }
            }
        }
        writers.insert(Writer::Input, x.clone());
        for l in 0..L {
            let mut attn = vec![0.0; b * s * D];
            for h in 0..H {
                // Only the value reader matters: q and k weights are zero.
                let xin = read(&x, Reader::Head(l, h, Qkv::V));
                let mut v = vec![0.0; b * s * DH];
                for i in 0..b * s {
                    for c in 0..DH {
                        v[i * DH + c] =
                            (0..D).map(|k| xin[i * D + k] * self.g1[l][k] * self.wv[l][k * H * DH + h * DH + c]).sum();
                    }
                }
                let mut out = vec![0.0; b * s * D];
                for bi in 0..b {
                    for t in 0..s {
                        let pv: Vec<f64> = (0..DH)
                            .map(|c| (0..=t).map(|u| v[(bi * s + u) * DH + c]).sum::<f64>() / (t + 1) as f64)
                            .collect();
                        for k in 0..D {
                            out[at(bi, t, k)] = (0..DH).map(|c| pv[c] * self.wo[l][(h * DH + c) * D + k]).sum();
                        }
                    }
                }
                for (a, o) in attn.iter_mut().zip(&out) {
                    *a += o;
                }
                writers.insert(Writer::Head(l, h), out);
            }
            let mid: Vec<f64> = x.iter().zip(&attn).map(|(a, b)| a + b).collect();
            let xin = read(&mid, Reader::Mlp(l));
            let mut m = vec![0.0; b * s * D];
            for i in 0..b * s {
                let hid: Vec<f64> = (0..FF)
                    .map(|j| (0..D).map(|k| xin[i * D + k] * self.g2[l][k] * self.w1[l][k * FF + j]).sum())
                    .collect();
                for k in 0..D {
                    m[i * D + k] = (0..FF).map(|j| hid[j] * self.w2[l][j * D + k]).sum();
                }
            }
            x = mid.iter().zip(&m).map(|(a, b)| a + b).collect();
            writers.insert(Writer::Mlp(l), m);
        }
        let xin = read(&x, Reader::Logits);
        let ld = (0..b)
            .map(|bi| {
                let (c, w) = (answers[bi][0] as usize, answers[bi][1] as usize);
                (0..D).map(|k| xin[at(bi, s - 1, k)] * self.gf[k] * (self.wu[k * V + c] - self.wu[k * V + w])).sum()
            })
            .collect();
        (ld, writers)
    }
}

#[test]
fn eap_equals_exact_edge_patching_on_a_linear_toy() {
    let toy = Toy::new();
    let dir = fresh_dir("edges-toy");
    let path = dir.join("toy.onnx");
    std::fs::write(&path, prost::Message::encode_to_vec(&toy.onnx())).unwrap();
    let clean = vec![vec![1i64, 2, 3, 4], vec![5, 6, 0, 1]];
    let corrupted = vec![vec![1i64, 6, 3, 0], vec![2, 6, 4, 1]];
    let answers = vec![vec![2i64, 5], vec![3, 0]];
    let mut o = JobOptions::new(path);
    o.with_token_ids(clean.clone(), corrupted.clone(), &answers);
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    let r = run_edges_detailed(&o, 1).unwrap();
    assert_eq!((r.scores.layers, r.scores.heads, r.scores.kv_heads), (L, H, H));

    let (ld_clean, w_clean) = toy.forward(&clean, &answers, None);
    let (ld_corr, w_corr) = toy.forward(&corrupted, &answers, None);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (clean_m, corr_m) = (mean(&ld_clean), mean(&ld_corr));
    let t = Topology { layers: L, heads: H, kv_heads: H, parallel: false };
    let edges = t.edges();
    assert_eq!(edges.len(), r.scores.edges.len());
    let mut exact = vec![];
    for (w, rd) in &edges {
        let delta: Vec<f64> = w_clean[w].iter().zip(&w_corr[w]).map(|(a, b)| a - b).collect();
        let (ld, _) = toy.forward(&corrupted, &answers, Some((*rd, &delta)));
        exact.push((mean(&ld) - corr_m) / (clean_m - corr_m));
    }
    let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "the toy's edges all patch to nothing");
    let nonzero = exact.iter().filter(|v| v.abs() > 1e-3 * scale).count();
    assert!(nonzero > edges.len() / 3, "only {nonzero} of {} edges matter", edges.len());
    for ((e, want), (w, rd)) in r.scores.edges.iter().zip(&exact).zip(&edges) {
        assert_eq!((e.from.as_str(), e.to.as_str()), (w.to_string().as_str(), rd.to_string().as_str()));
        assert!(
            (e.score - want).abs() <= 1e-4 * scale,
            "{} -> {}: EAP {} vs exact edge patching {want}",
            e.from,
            e.to,
            e.score
        );
    }
    // The gradients of a linear model do not depend on where the input writer
    // stands: EAP-IG (input interpolated over 3 steps, gradients averaged) is exact too.
    let ig = run_edges_detailed(&o, 3).unwrap();
    assert_eq!(ig.scores.method, "EAP-IG-inputs");
    for (e, want) in ig.scores.edges.iter().zip(&exact) {
        assert!((e.score - want).abs() <= 1e-4 * scale, "{} -> {}: EAP-IG {} vs exact {want}", e.from, e.to, e.score);
    }
}

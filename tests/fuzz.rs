//! Fuzzing the loader, the analysis and the rewriter with mutated models and
//! arbitrary bytes: every input must give Ok or an Err, never a panic.
//! `ATTRPATCH_FUZZ_ITERS=N cargo test --test main fuzz:: -- --nocapture` runs longer
//! (docs/src/errors.md: "Fuzzing" gives the documented run).

use crate::common::*;
use attrpatch::onnx::pb::{ModelProto, NodeProto};
use attrpatch::onnx::OnnxModel;
use prost::Message;
use std::path::Path;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("ATTRPATCH_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Load, analyse (inspect) and rewrite; Err is fine, a panic is not.
fn exercise(bytes: &[u8], what: &str) {
    let result = std::panic::catch_unwind(|| {
        if let Ok(m) = OnnxModel::from_bytes(bytes, Path::new("fuzz.onnx")) {
            let _ = attrpatch::inspect::inspect(&m, None);
            let _ = attrpatch::augment::augment(m);
        }
    });
    assert!(result.is_ok(), "panic on {what}");
}

const OPS: &[&str] = &[
    "Add",
    "Mul",
    "MatMul",
    "Gemm",
    "Reshape",
    "Transpose",
    "Softmax",
    "Split",
    "Concat",
    "Cos",
    "Where",
    "LayerNormalization",
    "ReduceMean",
    "Gather",
    "Identity",
];

/// One structural mutation of the graph.
fn mutate(m: &mut ModelProto, r: &mut Rng) {
    let g = m.graph.as_mut().unwrap();
    let n = g.node.len();
    let i = r.below(n);
    match r.below(9) {
        0 => {
            g.node.remove(i);
        }
        1 => g.node[i].op_type = OPS[r.below(OPS.len())].to_string(),
        2 => {
            let j = r.below(n);
            if let (Some(a), Some(b)) = (g.node[j].output.first().cloned(), g.node[i].input.first_mut()) {
                *b = a; // may create a cycle or use a tensor before it exists
            }
        }
        3 => {
            if let Some(a) = g.node[i].attribute.first_mut() {
                a.i = [-3, -1, 0, 1, 7, i64::MAX][r.below(6)];
                a.ints.iter_mut().for_each(|v| *v = -(*v) - 1);
            }
        }
        4 => g.node[i].input.push(format!("missing_{}", r.next())),
        5 => {
            g.node[i].input.clear();
        }
        6 => {
            let k = r.below(g.initializer.len());
            if let Some(t) = g.initializer.get_mut(k) {
                if let Some(d) = t.dims.first_mut() {
                    *d = [0, -1, 1 << 40, 3][r.below(4)];
                }
            }
        }
        7 => {
            let k = r.below(n);
            g.node.swap(i, k);
        }
        _ => g.node.push(NodeProto {
            op_type: OPS[r.below(OPS.len())].into(),
            input: vec!["logits".into()],
            output: vec!["logits".into()],
            ..Default::default()
        }),
    }
}

#[test]
fn mutated_models_never_panic() {
    let originals: Vec<Vec<u8>> = [dynamo_op18(), legacy_op14()].iter().map(|p| std::fs::read(p).unwrap()).collect();
    let n = iterations(60);
    let mut r = Rng(0x5eed);
    for it in 0..n {
        let src = &originals[it % originals.len()];
        let mut m = ModelProto::decode(src.as_slice()).unwrap();
        for _ in 0..1 + r.below(3) {
            mutate(&mut m, &mut r);
        }
        exercise(&m.encode_to_vec(), &format!("structural mutation, iteration {it}"));
    }
    eprintln!("{n} structural mutations, no panic");
}

#[test]
fn flipped_bytes_never_panic() {
    let src = std::fs::read(dynamo_op18()).unwrap();
    let n = iterations(60);
    let mut r = Rng(0xb17e);
    for it in 0..n {
        let mut b = src.clone();
        // The graph's structure is encoded before its weights: aim there.
        let span = if r.below(2) == 0 { 65536.min(b.len()) } else { b.len() };
        for _ in 0..1 + r.below(8) {
            let i = r.below(span);
            b[i] ^= 1 << r.below(8);
        }
        if r.below(4) == 0 {
            b.truncate(r.below(b.len()));
        }
        exercise(&b, &format!("byte mutation, iteration {it}"));
    }
    eprintln!("{n} byte mutations, no panic");
}

#[test]
fn arbitrary_bytes_never_panic() {
    let n = iterations(200);
    let mut r = Rng(0xa4b1);
    for it in 0..n {
        let len = r.below(4096);
        let b: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        exercise(&b, &format!("random bytes, iteration {it}"));
    }
    eprintln!("{n} arbitrary inputs, no panic");
}

/// Found by `mutated_models_never_panic` (2000 iterations): a ReduceMean axis
/// beyond its input's rank made tract's analysis panic (tract-hir
/// ops/nn/reduce.rs unwrap). It must be an error naming the model.
#[test]
fn regression_reduce_axis_beyond_rank_panicked_in_tract() {
    let src = std::fs::read(legacy_op14()).unwrap();
    let mut m = ModelProto::decode(src.as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.op_type == "ReduceMean").unwrap();
    n.attribute.iter_mut().find(|a| a.name == "axes").unwrap().ints = vec![7];
    let bytes = m.encode_to_vec();
    let model = OnnxModel::from_bytes(&bytes, Path::new("bad-axis.onnx")).unwrap();
    let e = attrpatch::inspect::inspect(&model, None).expect_err("an error, not a panic");
    assert!(e.to_string().contains("bad-axis.onnx"), "{e}");
    eprintln!("{e}");
}

/// A tract panic on a bad model comes back as an error through the facade,
/// and the library leaves the process's panic hook alone: a hook installed
/// here sees the panic (the library used to wrap the hook and swallow it) and
/// is still the one installed afterwards.
#[test]
fn a_tract_panic_is_an_error_and_the_panic_hook_is_left_alone() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let src = std::fs::read(legacy_op14()).unwrap();
    let mut m = ModelProto::decode(src.as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.op_type == "ReduceMean").unwrap();
    n.attribute.iter_mut().find(|a| a.name == "axes").unwrap().ints = vec![7];

    // Counts the panics of this test's thread; other threads' go to the previous hook.
    let me = std::thread::current().id();
    let seen = Arc::new(AtomicUsize::new(0));
    let previous: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> = Arc::from(std::panic::take_hook());
    let (count, prev) = (seen.clone(), previous.clone());
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == me {
            count.fetch_add(1, Ordering::SeqCst);
        } else {
            prev(info);
        }
    }));

    let e = attrpatch::inspect(m.encode_to_vec(), None).err().map(|e| e.to_string());
    let during = seen.load(Ordering::SeqCst);
    let probe = std::panic::catch_unwind(|| panic!("probe"));
    let after = seen.load(Ordering::SeqCst);
    let prev = previous.clone();
    std::panic::set_hook(Box::new(move |info| prev(info)));

    let e = e.expect("an error, not a result");
    assert!(e.contains("tract failed while analysing"), "{e}");
    assert!(probe.is_err());
    assert_eq!(during, 1, "the installed hook must see tract's panic (the library must not replace it)");
    assert_eq!(after, 2, "the installed hook must still be installed after the guarded call");
    assert!(!attrpatch::in_guarded_call());
}

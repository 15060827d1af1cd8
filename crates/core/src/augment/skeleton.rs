//! The steps the attribution graph (`augment_with`) and the patching graph
//! (`patch::graph::build`) share: the token and selector inputs they declare,
//! the probe shapes their rules are analysed at, and the finishing step. Each
//! builder adds its own inputs and probes after these.

use super::anatomy::Anatomy;
use super::names;
use attrpatch_onnx::error::Result;
use attrpatch_onnx::facts::{analyse_with_probe, Dim, Facts};
use attrpatch_onnx::graph::value_info;
use attrpatch_onnx::pb::{GraphProto, ModelProto, ValueInfoProto};
use std::path::Path;

/// Probe sizes for shape analysis: pairs and positions, neither 1, so that
/// broadcasting dims are told apart from real ones.
pub const PROBE_PAIRS: usize = 3;
pub const PROBE_SEQ: usize = 7;

/// Replaces the model's token inputs with their clean and corrupted copies
/// (first, in the model's order), then declares the metric's selector inputs
/// (last-position one-hot, answer one-hot, pair weights) at the end.
pub fn declare_inputs(g: &mut GraphProto, anat: &Anatomy) {
    let token_inputs = anat.token_inputs();
    let mut inputs = vec![];
    for t in &token_inputs {
        let vi = g.input.iter().find(|i| i.name == t.model_name).unwrap().clone();
        inputs.push(ValueInfoProto { name: t.clean.clone(), ..vi.clone() });
        inputs.push(ValueInfoProto { name: t.corrupted.clone(), ..vi });
    }
    g.input.retain(|i| !token_inputs.iter().any(|t| t.model_name == i.name));
    g.input.splice(0..0, inputs);
    declare_selector_inputs(g, anat);
}

/// The per-pair metric selectors every attribution graph takes: the last
/// position's one-hot, the answers' one-hot and the pair weights.
pub(crate) fn declare_selector_inputs(g: &mut GraphProto, anat: &Anatomy) {
    let (batch, seq, dtype) = (&anat.batch, &anat.seq, anat.dtype);
    let vocab = Dim::Known(anat.vocab as i64);
    g.input.push(value_info(names::POSITION_ONEHOT, dtype, &[batch.clone(), Dim::Known(1), seq.clone()]));
    g.input.push(value_info(names::ANSWER_ONEHOT, dtype, &[batch.clone(), vocab, Dim::Known(1)]));
    g.input.push(value_info(names::PAIR_WEIGHTS, dtype, &[batch.clone(), Dim::Known(1)]));
}

/// The probe shapes of the inputs `declare_inputs` declares, in its order.
pub fn probe_inputs(anat: &Anatomy) -> Vec<(String, Vec<usize>)> {
    let (pp, ps) = (PROBE_PAIRS, PROBE_SEQ);
    let mut probe = vec![];
    for t in anat.token_inputs() {
        probe.push((t.clean.clone(), vec![pp, ps]));
        probe.push((t.corrupted.clone(), vec![pp, ps]));
    }
    probe.extend([
        (names::POSITION_ONEHOT.to_string(), vec![pp, 1, ps]),
        (names::ANSWER_ONEHOT.to_string(), vec![pp, anat.vocab, 1]),
        (names::PAIR_WEIGHTS.to_string(), vec![pp, 1]),
    ]);
    probe
}

/// Tract's facts of `proto` with its inputs fed at the `probe` shapes.
pub fn analyse_probed(proto: &ModelProto, path: &Path, probe: &[(String, Vec<usize>)]) -> Result<Facts> {
    let probe: Vec<(&str, Vec<usize>)> = probe.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
    analyse_with_probe(proto, path, &probe)
}

/// The last step of both builders: stale intermediate value_info dropped (it
/// may disagree with the new uses; runtimes re-infer), nodes nothing reads
/// pruned, and the producer stamped.
pub fn finish(proto: &mut ModelProto) {
    let g = proto.graph.as_mut().unwrap();
    g.value_info.clear();
    attrpatch_onnx::prune::prune_dead(g);
    proto.producer_name = "attrpatch".into();
    proto.producer_version = env!("CARGO_PKG_VERSION").into();
}

"""Independent PyTorch float64 reference of edge attribution patching (EAP, EAP-IG-inputs), issue 14.

For a fixture of tests/fixtures/arch/ it rebuilds the fixture's PyTorch model (tools/fixtures/models.py,
fixed seeds), checks its float32 logits against the .onnx through ONNX Runtime, converts it to
float64 and scores every edge with its own forward (tools/fixtures/edge_forward.py), in which each
reader gets its own copy of its residual input. No attrpatch code is used.

  ld       = mean over the batch of logits[b, -1, correct] - logits[b, -1, incorrect]
  M        = (ld - CORR) / (CLEAN - CORR), CLEAN and CORR the clean and corrupted ld (constants)
  g_v      = dM / d(copy of reader v), by autograd on the corrupted run
  score    = sum over pairs and positions of (a_clean[u] - a_corr[u]) . g_v
  EAP-IG   = the same with g_v averaged over x(alpha) = corr + alpha (clean - corr) at `input`,
             alpha = k/N, k = 0..N-1 (N = 1 is EAP)

The noising convention (the EAP-IG codebase's get_scores_eap / get_scores_eap_ig, written here
from its definitions, not its code), keys "noising" and "noising_eap_ig":
  h_v      = d ld / d(copy of reader v), by autograd on the clean run (ld raw, not normalised)
  score    = sum over positions of (a_cf[u] - a_clean[u]) . h_v, ld the mean over the pairs
             (so: the mean over pairs of each pair's sum over positions)
  a_cf     = patching: a_corr[u]; zero: 0; mean: the mean of a_corr[u] over pairs and positions;
             mean-positional: the mean of a_corr[u] over pairs, per position
  EAP-IG   = patching only: h_v averaged over the same x(alpha), delta = a_corr - a_clean

EAP-IG-activations (get_scores_ig_activations, written from its definition), keys
"ig_activations" {"steps", "denoising": edges, "noising": {ablation: edges}}:
  components c: input, each layer's attention (all heads' out-projection input z at once), each MLP
  point    = cf_c + alpha (clean_c - cf_c), held constant (no gradient through c), every other
             component computed by the run: denoising on the corrupted run, alpha = k/N, k = 0..N-1,
             the normalised metric; noising on the clean run, alpha = k/N, k = 1..N, the raw ld
  G_v      = the gradient at v's copy averaged over the C N runs
  score    = sum over positions of delta[u] . G_v, delta as EAP's (denoising: a_clean - a_corr;
             noising: a_cf - a_clean, cf of z the mean of z for mean ablations)
clean-corrupted (get_scores_clean_corrupted), keys "clean_corrupted" {"denoising", "noising"}:
  G_v      = (g_v on the corrupted run + g_v on the clean run) / 2 (denoising: M; noising: raw ld)
  score    = sum over positions of delta[u] . G_v (patching only)

Self-checks (any failure exits non-zero and writes nothing):
  - the hand-written forward's logits equal the Hugging Face model's (float64);
  - the identity: per head, the sum of its outgoing edge scores equals its node attribution summed
    over positions, by ordinary autograd on the Hugging Face model's out-projection input;
  - every edge's score against a central finite difference of M along (a_clean[u] - a_corr[u])
    through reader v's copy alone, and every reader's g_v against a central finite difference
    along a random direction through its copy alone;
  - EAP-IG with N = 1 equals EAP;
  - noising: every edge against a central finite difference of ld on the clean run along
    (a_cf[u] - a_clean[u]) through v's copy alone, per ablation; noising EAP-IG equals
    -(CLEAN - CORR) times denoising EAP-IG (the same gradients, the other sign and scale).
  - EAP-IG-activations: on one run per component (the middle step), every reader's gradient along a
    random direction against a central finite difference with the component held; the held
    component's own readers get exactly zero gradient (an MLP's input, an attention's q/k/v);
  - clean-corrupted: noising equals -(CLEAN - CORR) times denoising.

Usage:
  /work/venv-torch/bin/python tools/edge_reference.py                       # the default fixtures
  /work/venv-torch/bin/python tools/edge_reference.py --only llama-legacy-op14 --steps 4
Writes tests/fixtures/edges/<fixture>.json.
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from fixtures import models as M  # noqa: E402
from fixtures.edge_forward import Family  # noqa: E402

ARCH_DIR = os.path.join(ROOT, "tests", "fixtures", "arch")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "edges")
DEFAULT_FIXTURES = ["gpt2-legacy-op14", "llama-legacy-op14", "gptneox-legacy-op14", "gemma-legacy-op14",
                    "gptbigcode-legacy-op14", "falcon-legacy-op14"]

# Tolerances of the self-checks (float64 throughout).
HF_LOGITS_TOL = 1e-10      # hand-written forward vs Hugging Face, max abs over logits
ONNX_LOGITS_TOL = 1e-4     # float32 PyTorch vs ONNX Runtime, max abs over logits
IDENTITY_REL = 1e-9        # per head, relative to the largest |node attribution|
FD_EPS = 1e-6              # finite-difference step (direction scaled to unit RMS; error ~ step^2)
FD_REL = 1e-6              # |fd - autograd| <= FD_REL * |autograd| + FD_FLOOR * scale
FD_FLOOR = 1e-7


# The noising convention's counterfactuals (the EAP-IG codebase's `intervention`).
ABLATIONS = ["patching", "zero", "mean", "mean-positional"]


class CheckFailed(Exception):
    pass


def logit_diff(logits, answers):
    last = logits[:, -1, :]
    return (last.gather(1, answers[:, 0:1]) - last.gather(1, answers[:, 1:2])).mean()


def load_fixture(name):
    path = os.path.join(ARCH_DIR, f"{name}.json")
    with open(path) as f:
        fx = json.load(f)
    ids = {k: torch.tensor(fx[k], dtype=torch.int64) for k in ("input_ids", "corrupted_ids", "answer_ids")}
    return fx, ids


def arch_of(fx):
    # models.py names the family as transformers does ("gpt_neox"); the fixture JSON says the same
    return fx["arch"]


def check_onnx(name, model32, clean):
    """Max abs difference of the float32 model's logits and the .onnx's through ONNX Runtime."""
    import onnxruntime as ort
    sess = ort.InferenceSession(os.path.join(ARCH_DIR, f"{name}.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": clean.numpy(), "attention_mask": np.ones_like(clean.numpy())}
    onnx_logits = sess.run(["logits"], feed)[0]
    with torch.no_grad():
        torch_logits = model32(input_ids=clean, attention_mask=torch.ones_like(clean),
                               use_cache=False, return_dict=False)[0].numpy()
    err = float(np.abs(onnx_logits - torch_logits).max())
    if err > ONNX_LOGITS_TOL:
        raise CheckFailed(f"{name}: the rebuilt PyTorch model's logits differ from {name}.onnx "
                          f"by {err:.3e} (> {ONNX_LOGITS_TOL}): models.py no longer builds the exported weights")
    return err


def hf_logits64(model64, ids, embeds=None):
    with M.exact_float64():
        kw = dict(inputs_embeds=embeds) if embeds is not None else dict(input_ids=ids)
        return model64(attention_mask=torch.ones_like(ids), use_cache=False, return_dict=False, **kw)[0]


def node_attribution_hf(model64, arch, fam, clean, corrupted, answers, CLEAN, CORR):
    """{(layer, head): sum over pairs and positions of dM/dz . (z_clean - z_corr)}, z the input of
    the Hugging Face model's attention out-projection, by ordinary autograd (no edge copies)."""
    modules = [m for _i, _n, m in M.hook_modules(model64, arch)]
    acts = {}

    def save(layer):
        def hook(_m, inputs):
            x = inputs[0]
            if x.requires_grad:
                x.retain_grad()
            acts[layer] = x
        return hook
    handles = [m.register_forward_pre_hook(save(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            hf_logits64(model64, clean)
            z_clean = {i: a.detach().clone() for i, a in acts.items()}
        emb = model64.get_input_embeddings()(corrupted).detach().requires_grad_(True)  # embedding scale included
        metric = (logit_diff(hf_logits64(model64, corrupted, embeds=emb), answers) - CORR) / (CLEAN - CORR)
        metric.backward()
    finally:
        for h in handles:
            h.remove()
    out = {}
    for l in range(fam.n_layers):
        p = (acts[l].grad * (z_clean[l] - acts[l].detach()))
        p = p.reshape(p.shape[0], p.shape[1], fam.n_heads, -1)
        for h in range(fam.n_heads):
            out[(l, h)] = p[:, :, h].sum().item()
    return out


class Scorer:
    """The edge scores of one fixture by the per-reader-copy forward."""

    def __init__(self, fam, clean, corrupted, answers):
        self.fam, self.answers = fam, answers
        with torch.no_grad():
            self.x_clean, self.x_corr = fam.embed(clean), fam.embed(corrupted)
            rc, rr = {}, {}
            self.CLEAN = logit_diff(fam.forward(self.x_clean, record=rc), answers).item()
            self.CORR = logit_diff(fam.forward(self.x_corr, record=rr), answers).item()
        self.clean_parts, self.corr_parts = self.parts(rc), self.parts(rr)
        self.delta = {u: (rc["writers"][u] - rr["writers"][u]).detach() for u in rc["writers"]}
        self.clean_writers = {u: t.detach() for u, t in rc["writers"].items()}
        self.corr_writers = {u: t.detach() for u, t in rr["writers"].items()}
        self.feeds = rr["feeds"]
        self.edges = [(u, v) for u in fam.writers() for v in fam.readers() if u in self.feeds[v]]

    def metric(self, logits):
        return (logit_diff(logits, self.answers) - self.CORR) / (self.CLEAN - self.CORR)

    def grads(self, x0):
        """{reader: dM/d(copy)} on the run from x0, and the run's record."""
        probe = {v: torch.zeros_like(x0, requires_grad=True) for v in self.fam.readers()}
        rec = {}
        m = self.metric(self.fam.forward(x0, probe=probe, record=rec))
        m.backward()
        return {v: p.grad.detach() for v, p in probe.items()}

    def scores(self, steps):
        """[(u, v, score)] of EAP-IG-inputs with `steps` steps (1: EAP)."""
        mean = None
        for k in range(steps):
            alpha = k / steps
            g = self.grads(self.x_corr + alpha * (self.x_clean - self.x_corr))
            mean = g if mean is None else {v: mean[v] + g[v] for v in g}
        mean = {v: t / steps for v, t in mean.items()}
        return [(u, v, (self.delta[u] * mean[v]).sum().item()) for u, v in self.edges]

    def raw_grads(self, x0):
        """{reader: d ld / d(copy)} on the run from x0 (the raw metric)."""
        probe = {v: torch.zeros_like(x0, requires_grad=True) for v in self.fam.readers()}
        logit_diff(self.fam.forward(x0, probe=probe), self.answers).backward()
        return {v: p.grad.detach() for v, p in probe.items()}

    def counterfactual(self, ablation):
        """{writer: a_cf - a_clean} of an ablation (module doc)."""
        out = {}
        for u, corr in self.corr_writers.items():
            if ablation == "patching":
                cf = corr
            elif ablation == "zero":
                cf = torch.zeros_like(corr)
            elif ablation == "mean":
                cf = corr.mean(dim=(0, 1), keepdim=True).expand_as(corr)
            elif ablation == "mean-positional":
                cf = corr.mean(dim=0, keepdim=True).expand_as(corr)
            else:
                raise ValueError(ablation)
            out[u] = cf - self.clean_writers[u]
        return out

    def noising(self, ablation, steps=1):
        """[(u, v, score)] of the noising convention (steps > 1: EAP-IG-inputs, patching only)."""
        delta = self.counterfactual(ablation)
        if steps == 1:
            g = self.raw_grads(self.x_clean)
        else:
            g = None
            for k in range(steps):
                gk = self.raw_grads(self.x_corr + k / steps * (self.x_clean - self.x_corr))
                g = gk if g is None else {v: g[v] + gk[v] for v in gk}
            g = {v: t / steps for v, t in g.items()}
        return [(u, v, (delta[u] * g[v]).sum().item()) for u, v in self.edges], delta

    def parts(self, rec):
        """{component: its output} of a run's record: `input`, `a{l}` (z of every head,
        [B, S, heads, hd]), `m{l}`."""
        out = {"input": rec["writers"]["input"].detach()}
        for l in range(self.fam.n_layers):
            out[f"a{l}"] = torch.stack([rec["z"][(l, h)] for h in range(self.fam.n_heads)], dim=2).detach()
            out[f"m{l}"] = rec["writers"][f"m{l}"].detach()
        return out

    def components(self):
        return ["input"] + [c for l in range(self.fam.n_layers) for c in (f"a{l}", f"m{l}")]

    def held_grads(self, base, component, point, raw):
        """{reader: gradient at its copy} on the run from `base` with `component` held at `point`."""
        x0 = point if component == "input" else base
        override = {} if component == "input" else {component: point}
        probe = {v: torch.zeros_like(base, requires_grad=True) for v in self.fam.readers()}
        logits = self.fam.forward(x0, probe=probe, override=override)
        (logit_diff(logits, self.answers) if raw else self.metric(logits)).backward()
        # A held component's own readers reach nothing: autograd leaves their grad None.
        return {v: torch.zeros_like(base) if p.grad is None else p.grad.detach() for v, p in probe.items()}

    def ig_activations_runs(self, convention, ablation, steps):
        """[(component, base, point, raw)] of EAP-IG-activations' C N runs (module doc)."""
        runs = []
        for c in self.components():
            corr = self.corr_parts[c]
            cf = mean_like(corr, ablation) if ablation != "zero" else torch.zeros_like(corr)
            clean = self.clean_parts[c]
            ks = range(steps) if convention == "denoising" else range(1, steps + 1)
            base = self.x_corr if convention == "denoising" else self.x_clean
            for k in ks:
                runs.append((c, base, cf + k / steps * (clean - cf), convention == "noising"))
        return runs

    def ig_activations(self, convention, ablation, steps):
        """[(u, v, score)] of EAP-IG-activations."""
        total, runs = None, self.ig_activations_runs(convention, ablation, steps)
        for c, base, point, raw in runs:
            g = self.held_grads(base, c, point, raw)
            total = g if total is None else {v: total[v] + g[v] for v in g}
        G = {v: t / len(runs) for v, t in total.items()}
        delta = self.delta if convention == "denoising" else self.counterfactual(ablation)
        return [(u, v, (delta[u] * G[v]).sum().item()) for u, v in self.edges]

    def clean_corrupted(self, convention):
        """[(u, v, score)] of clean-corrupted."""
        if convention == "denoising":
            a, b, delta = self.grads(self.x_corr), self.grads(self.x_clean), self.delta
        else:
            a, b = self.raw_grads(self.x_clean), self.raw_grads(self.x_corr)
            delta = self.counterfactual("patching")
        return [(u, v, (delta[u] * (a[v] + b[v]) / 2).sum().item()) for u, v in self.edges]

    def fd_held(self, base, component, point, raw, reader, direction):
        """`fd` with `component` held at `point` on the run from `base`."""
        rms = direction.pow(2).mean().sqrt().item()
        step = FD_EPS / rms
        x0 = point if component == "input" else base
        override = {} if component == "input" else {component: point}
        vals = []
        with torch.no_grad():
            for sgn in (1, -1):
                logits = self.fam.forward(x0, probe={reader: sgn * step * direction}, override=override)
                vals.append((logit_diff(logits, self.answers) if raw else self.metric(logits)).item())
        return (vals[0] - vals[1]) / (2 * step)

    def fd_clean(self, reader, direction):
        """`fd` of the raw ld on the clean run."""
        rms = direction.pow(2).mean().sqrt().item()
        if rms == 0.0:
            return 0.0
        step = FD_EPS / rms
        with torch.no_grad():
            up = logit_diff(self.fam.forward(self.x_clean, probe={reader: step * direction}), self.answers).item()
            down = logit_diff(self.fam.forward(self.x_clean, probe={reader: -step * direction}), self.answers).item()
        return (up - down) / (2 * step)

    def fd(self, reader, direction):
        """Central finite difference of M on the corrupted run along `direction`, added to
        `reader`'s copy alone (step FD_EPS / RMS of the direction), per unit of `direction`."""
        rms = direction.pow(2).mean().sqrt().item()
        if rms == 0.0:
            return 0.0
        step = FD_EPS / rms
        with torch.no_grad():
            up = self.metric(self.fam.forward(self.x_corr, probe={reader: step * direction})).item()
            down = self.metric(self.fam.forward(self.x_corr, probe={reader: -step * direction})).item()
        return (up - down) / (2 * step)


def mean_like(corr, ablation):
    """The counterfactual of a corrupted activation [B, S, ...] (`Scorer.counterfactual`'s)."""
    if ablation == "patching":
        return corr
    if ablation == "mean":
        return corr.mean(dim=(0, 1), keepdim=True).expand_as(corr)
    if ablation == "mean-positional":
        return corr.mean(dim=0, keepdim=True).expand_as(corr)
    raise ValueError(ablation)


def check_ig_activations(name, sc, fam, steps, gen):
    """EAP-IG-activations' self-checks (module doc); returns the worst share of the fd tolerance."""
    worst = 0.0
    for convention, ablation in (("denoising", "patching"), ("noising", "patching"), ("noising", "mean")):
        runs = sc.ig_activations_runs(convention, ablation, steps)
        for i, c in enumerate(sc.components()):
            comp, base, point, raw = runs[i * steps + steps // 2]
            g = sc.held_grads(base, comp, point, raw)
            own = [] if comp == "input" else ([comp] if comp[0] == "m" else
                                               [v for v in fam.readers() if v.startswith(comp + ".")])
            for v in own:
                if float(g[v].abs().max()) != 0.0:
                    raise CheckFailed(f"{name}: EAP-IG-activations held {comp}, yet its reader {v} has a gradient")
            g_scale = max(float(t.norm()) for t in g.values())
            for v in fam.readers():
                d = torch.randn(base.shape, generator=gen, dtype=torch.float64)
                fd = sc.fd_held(base, comp, point, raw, v, d)
                worst = max(worst, check_close(
                    f"{name}: EAP-IG-activations ({convention}, {ablation}) held {comp}: reader {v} vs finite difference",
                    float((g[v] * d).sum()), fd, g_scale, FD_REL, FD_FLOOR))
    return worst


def check_close(what, got, want, scale, rel, floor):
    """Fail unless |got - want| <= rel * |want| + floor * scale; return the share of that
    tolerance used (at most 1)."""
    err, tol = abs(got - want), rel * abs(want) + floor * scale
    if err > tol:
        raise CheckFailed(f"{what}: {got!r} vs {want!r} (|diff| {err:.3e} > {rel} * |want| + {floor} * {scale:.3e})")
    return err / tol


def reference(name, steps, seed=0):
    fx, ids = load_fixture(name)
    arch = arch_of(fx)
    clean, corrupted, answers = ids["input_ids"], ids["corrupted_ids"], ids["answer_ids"]
    model32 = M.build_model(arch)
    onnx_err = check_onnx(name, model32, clean)
    model64 = model32.to(torch.float64)
    for p in model64.parameters():
        p.requires_grad_(False)
    fam = Family(arch, model64)
    if (fam.n_layers, fam.n_heads, fam.n_kv) != (fx["n_layers"], fx["n_heads"], fx["n_kv_heads"]):
        raise CheckFailed(f"{name}: shape {(fam.n_layers, fam.n_heads, fam.n_kv)} differs from the "
                          f"fixture's (n_layers, n_heads, n_kv_heads)")

    # The hand-written forward against the Hugging Face model, float64.
    with torch.no_grad():
        ours = fam.forward(fam.embed(clean))
        hf = hf_logits64(model64, clean)
    hf_err = float((ours - hf).abs().max())
    if hf_err > HF_LOGITS_TOL:
        raise CheckFailed(f"{name}: hand-written {arch} forward differs from the Hugging Face model "
                          f"by {hf_err:.3e} (> {HF_LOGITS_TOL})")

    sc = Scorer(fam, clean, corrupted, answers)
    if abs(sc.CLEAN - fx["clean_logit_diff"]) > 1e-9 or abs(sc.CORR - fx["corrupted_logit_diff"]) > 1e-9:
        raise CheckFailed(f"{name}: CLEAN/CORR {sc.CLEAN}, {sc.CORR} differ from the fixture's "
                          f"{fx['clean_logit_diff']}, {fx['corrupted_logit_diff']}")
    eap = sc.scores(1)
    eap_ig = sc.scores(steps)
    ig1 = sc.scores(1) if steps != 1 else eap
    scale = max(abs(s) for _u, _v, s in eap)

    # N = 1 EAP-IG is EAP (the alpha = 0 run is the corrupted run).
    ig1_err = max(abs(a[2] - b[2]) for a, b in zip(ig1, eap))
    if ig1_err > 1e-12 * scale:
        raise CheckFailed(f"{name}: EAP-IG with 1 step differs from EAP by {ig1_err:.3e}")

    # The identity, per head, against the Hugging Face model's node attribution.
    nodes = node_attribution_hf(model64, arch, fam, clean, corrupted, answers, sc.CLEAN, sc.CORR)
    node_scale = max(abs(x) for x in nodes.values())
    identity_worst = 0.0
    out_sum = {}
    for u, _v, s in eap:
        out_sum[u] = out_sum.get(u, 0.0) + s
    for (l, h), want in nodes.items():
        err = abs(out_sum[f"a{l}.h{h}"] - want)
        identity_worst = max(identity_worst, err / node_scale)
        if err > IDENTITY_REL * node_scale:
            raise CheckFailed(f"{name}: identity fails for a{l}.h{h}: sum of outgoing edges "
                              f"{out_sum[f'a{l}.h{h}']!r} vs node attribution {want!r}")
    # The node grid of the fixture (heads summed): the positions grid summed over positions.
    grid_worst = 0.0
    for l, row in enumerate(fx["positions"]):
        got = sum(out_sum[f"a{l}.h{h}"] for h in range(fam.n_heads))
        grid_worst = max(grid_worst, abs(got - sum(row)) / node_scale)
        check_close(f"{name}: layer {l} edges out of heads vs the fixture's positions grid",
                    got, sum(row), node_scale, 1e-8, 1e-9)

    # Every edge against a finite difference along a_clean[u] - a_corr[u] through v's copy alone.
    edge_fd_worst, edge_fd_abs = 0.0, 0.0
    for u, v, s in eap:
        fd = sc.fd(v, sc.delta[u])
        edge_fd_abs = max(edge_fd_abs, abs(s - fd) / scale)
        edge_fd_worst = max(edge_fd_worst, check_close(f"{name}: edge {u} -> {v} vs finite difference",
                                                       s, fd, scale, FD_REL, FD_FLOOR))
    # Every reader's gradient along a random direction through its copy alone.
    gen = torch.Generator().manual_seed(seed)
    g = sc.grads(sc.x_corr)
    reader_fd_worst = 0.0
    g_scale = max(float(t.norm()) for t in g.values())  # the size of <g_v, d> for a unit-variance d
    for v in fam.readers():
        d = torch.randn(sc.x_corr.shape, generator=gen, dtype=torch.float64)
        fd = sc.fd(v, d)
        reader_fd_worst = max(reader_fd_worst, check_close(
            f"{name}: reader {v}'s gradient along a random direction vs finite difference",
            float((g[v] * d).sum()), fd, g_scale, FD_REL, FD_FLOOR))

    # Noising, per ablation: every edge against a finite difference of ld on the clean run.
    noising, noising_fd = {}, {}
    for ablation in ABLATIONS:
        rows, delta = sc.noising(ablation)
        n_scale = max(abs(x) for _u, _v, x in rows)
        worst = 0.0
        for u, v, x in rows:
            worst = max(worst, check_close(f"{name}: noising ({ablation}) edge {u} -> {v} vs finite difference",
                                           x, sc.fd_clean(v, delta[u]), n_scale, FD_REL, FD_FLOOR))
        noising[ablation], noising_fd[ablation] = rows, worst
    noising_ig, _ = sc.noising("patching", steps)
    rel_err = max(abs(a[2] + (sc.CLEAN - sc.CORR) * b[2]) for a, b in zip(noising_ig, eap_ig))
    if rel_err > 1e-12 * max(abs(a[2]) for a in noising_ig):
        raise CheckFailed(f"{name}: noising EAP-IG differs from -(CLEAN - CORR) x denoising EAP-IG by {rel_err:.3e}")

    # EAP-IG-activations and clean-corrupted.
    ig_act_fd = check_ig_activations(name, sc, fam, steps, gen)
    ig_act = {"steps": steps, "denoising": sc.ig_activations("denoising", "patching", steps),
              "noising": {a: sc.ig_activations("noising", a, steps) for a in ABLATIONS}}
    cc = {c: sc.clean_corrupted(c) for c in ("denoising", "noising")}
    cc_err = max(abs(a[2] + (sc.CLEAN - sc.CORR) * b[2]) for a, b in zip(cc["noising"], cc["denoising"]))
    if cc_err > 1e-12 * max(abs(a[2]) for a in cc["noising"]):
        raise CheckFailed(f"{name}: noising clean-corrupted differs from -(CLEAN - CORR) x denoising by {cc_err:.3e}")

    def edge_list(rows):
        return [{"from": u, "to": v, "score": s} for u, v, s in rows]
    return {
        "fixture": name,
        "arch": arch,
        "model_class": fx["model_class"],
        "reference": "tools/edge_reference.py: PyTorch float64, hand-written forward with one input "
                     "copy per reader (tools/fixtures/edge_forward.py)",
        "metric": "(logit_diff - CORR) / (CLEAN - CORR), logit_diff = mean over pairs of "
                  "logits[b,-1,correct] - logits[b,-1,incorrect]",
        "input_ids": clean.tolist(),
        "corrupted_ids": corrupted.tolist(),
        "answer_ids": answers.tolist(),
        "clean_logit_diff": sc.CLEAN,
        "corrupted_logit_diff": sc.CORR,
        "topology": {"layers": fam.n_layers, "heads": fam.n_heads, "kv_heads": fam.n_kv,
                     "parallel": fam.parallel},
        "node_attribution": {f"a{l}.h{h}": s for (l, h), s in nodes.items()},
        "eap": edge_list(eap),
        "eap_ig": {"steps": steps, "edges": edge_list(eap_ig)},
        "noising_metric": "logit_diff (raw, mean over pairs), gradient on the clean run",
        "noising": {a: edge_list(noising[a]) for a in ABLATIONS},
        "noising_eap_ig": {"steps": steps, "edges": edge_list(noising_ig)},
        "ig_activations": {"steps": steps, "denoising": edge_list(ig_act["denoising"]),
                           "noising": {a: edge_list(ig_act["noising"][a]) for a in ABLATIONS}},
        "clean_corrupted": {c: edge_list(rows) for c, rows in cc.items()},
        "checks": {
            "onnx_logits_max_abs": onnx_err,
            "hf_logits_max_abs": hf_err,
            "identity_max_abs_over_max_node": identity_worst,
            "identity_tol_over_max_node": IDENTITY_REL,
            "positions_grid_max_abs_over_max_node": grid_worst,
            "edge_fd_edges": len(eap),
            "edge_fd_max_abs_over_max_score": edge_fd_abs,
            "edge_fd_worst_share_of_tol": edge_fd_worst,
            "reader_fd_readers": len(fam.readers()),
            "reader_fd_worst_share_of_tol": reader_fd_worst,
            "fd_eps": FD_EPS,
            "fd_tol": {"rel": FD_REL, "floor_times_max": FD_FLOOR},
            "ig1_equals_eap_max_abs": ig1_err,
            "max_abs_score": scale,
            "noising_edge_fd_worst_share_of_tol": noising_fd,
            "noising_ig_vs_denoising_max_abs": rel_err,
            "ig_activations_reader_fd_worst_share_of_tol": ig_act_fd,
            "clean_corrupted_noising_vs_denoising_max_abs": cc_err,
            "passed": ["onnx_logits", "hf_logits", "clean_corr", "identity", "positions_grid",
                       "edge_fd", "reader_fd", "ig1_equals_eap", "noising_edge_fd", "noising_ig_vs_denoising",
                       "ig_activations_held", "ig_activations_reader_fd", "clean_corrupted_noising_vs_denoising"],
        },
    }


def dump(ref):
    """JSON with one edge per line (small diffs when regenerated)."""
    edges_key = {"eap", "eap_ig", "noising", "noising_eap_ig", "ig_activations", "clean_corrupted"}
    head = {k: v for k, v in ref.items() if k not in edges_key}
    # token id rows on one line each
    text = re.sub(r"\[\s+([-0-9][-0-9,\s]*?)\s+\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  json.dumps(head, indent=1))[:-2]

    def rows(edges):
        return ",\n".join("  " + json.dumps(e) for e in edges)
    text += (f',\n "eap": [\n{rows(ref["eap"])}\n ],\n "eap_ig": {{"steps": {ref["eap_ig"]["steps"]}, '
             f'"edges": [\n{rows(ref["eap_ig"]["edges"])}\n ]}}')
    if "noising" in ref:
        parts = ",\n".join(f'  {json.dumps(a)}: [\n{rows(e)}\n  ]' for a, e in ref["noising"].items())
        text += (f',\n "noising": {{\n{parts}\n }},\n "noising_eap_ig": {{"steps": {ref["noising_eap_ig"]["steps"]}, '
                 f'"edges": [\n{rows(ref["noising_eap_ig"]["edges"])}\n ]}}')
    if "ig_activations" in ref:
        ia = ref["ig_activations"]
        parts = ",\n".join(f'   {json.dumps(a)}: [\n{rows(e)}\n   ]' for a, e in ia["noising"].items())
        text += (f',\n "ig_activations": {{"steps": {ia["steps"]}, "denoising": [\n{rows(ia["denoising"])}\n ], '
                 f'"noising": {{\n{parts}\n }}}}')
        cc = ref["clean_corrupted"]
        text += (f',\n "clean_corrupted": {{"denoising": [\n{rows(cc["denoising"])}\n ], '
                 f'"noising": [\n{rows(cc["noising"])}\n ]}}')
    text += "\n}\n"
    json.loads(text)  # well-formed
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", help="fixture name (repeatable); default: "
                    + ", ".join(DEFAULT_FIXTURES))
    ap.add_argument("--steps", type=int, default=4, help="EAP-IG steps (default 4)")
    ap.add_argument("--out", default=OUT_DIR)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    failed = False
    for name in args.only or DEFAULT_FIXTURES:
        try:
            ref = reference(name, args.steps)
        except CheckFailed as e:
            print(f"FAILED {e}", file=sys.stderr)
            failed = True
            continue
        path = os.path.join(args.out, f"{name}.json")
        with open(path, "w") as f:
            f.write(dump(ref))
        c = ref["checks"]
        print(f"{name}: {len(ref['eap'])} edges, max |score| {c['max_abs_score']:.4g}; onnx {c['onnx_logits_max_abs']:.1e}, "
              f"hf {c['hf_logits_max_abs']:.1e}, identity {c['identity_max_abs_over_max_node']:.1e}, "
              f"edge fd {c['edge_fd_max_abs_over_max_score']:.1e} (share of tol {c['edge_fd_worst_share_of_tol']:.2f}), "
              f"reader fd share of tol {c['reader_fd_worst_share_of_tol']:.2f} -> {path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

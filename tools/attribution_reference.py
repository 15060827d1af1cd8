"""The one PyTorch reference of attribution patching the tools share: the fixture references
(tools/fixtures/reference.py), the bundled IOI model's reference (tools/train_ioi/reference.py)
and the benchmark's metric and grids (tools/bench/pytorch_bench.py).

  ld      = mean over the batch of logits[b, -1, correct] - logits[b, -1, incorrect]
  metric  = (ld - CORR) / (CLEAN - CORR) on the corrupted run (CLEAN, CORR: Python floats)
  a       = input of each layer's attention out-projection module, [batch, seq, hidden]
  p       = d metric / d a_corrupted * (a_clean - a_corrupted)
  heads[layer][head]    = p at the last position as [batch, n_heads, head_dim], summed over batch, head_dim
  positions[layer][pos] = p summed over batch and hidden
"""
import torch


def logit_diff(logits, answers):
    """Mean over the batch of logits[b, -1, answers[b, 0]] - logits[b, -1, answers[b, 1]]."""
    last = logits[:, -1, :]
    correct = last.gather(1, answers[:, 0:1])
    incorrect = last.gather(1, answers[:, 1:2])
    return (correct - incorrect).mean()


def grids(grads, clean_acts, corr_acts, n_heads):
    """heads [layer, head] and positions [layer, position] tensors from each layer's gradient and
    clean and corrupted activations (any shape [batch, seq, ...])."""
    heads, positions = [], []
    for g, c, k in zip(grads, clean_acts, corr_acts):
        p = g * (c - k)
        p = p.reshape(p.shape[0], p.shape[1], -1)
        heads.append(p[:, -1, :].reshape(p.shape[0], n_heads, -1).sum(dim=(0, 2)))
        positions.append(p.sum(dim=(0, 2)))
    return torch.stack(heads), torch.stack(positions)


def attribution(model, modules, n_heads, run, clean, corrupted, answers):
    """(CLEAN, CORR, heads, positions, clean logits) by autograd, heads and positions as lists.

    `modules`: each layer's attention out-projection module (its input is the hooked activation);
    `run(ids)`: the model's logits for a batch of token ids. The model's parameters do not get
    gradients (their requires_grad flags are restored afterwards)."""
    acts = {}

    def save(layer):
        def hook(_module, inputs):
            acts[layer] = inputs[0]
        return hook

    # The first hooked tensor that does not require a gradient becomes a leaf; the later ones
    # depend on it and keep their gradient (retain_grad), so every path from an earlier layer
    # through a later one stays in the backward sweep.
    def leaf(layer):
        def hook(_module, inputs):
            x = inputs[0]
            if x.requires_grad:
                x.retain_grad()
                acts[layer] = x
                return None
            x = x.detach().requires_grad_(True)
            acts[layer] = x
            return (x,) + tuple(inputs[1:])
        return hook

    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    handles = [m.register_forward_pre_hook(save(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            clean_logits = run(clean)
            clean_acts = [acts[i].detach().clone() for i in range(len(modules))]
            corr_logits = run(corrupted)
        CLEAN = logit_diff(clean_logits, answers).item()
        CORR = logit_diff(corr_logits, answers).item()
        for h in handles:
            h.remove()
        acts.clear()
        handles = [m.register_forward_pre_hook(leaf(i)) for i, m in enumerate(modules)]
        metric = (logit_diff(run(corrupted), answers) - CORR) / (CLEAN - CORR)
        metric.backward()
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    corr_acts = [acts[i].detach() for i in range(len(modules))]
    heads, positions = grids([acts[i].grad for i in range(len(modules))], clean_acts, corr_acts, n_heads)
    return CLEAN, CORR, heads.tolist(), positions.tolist(), clean_logits.detach()


def max_rel_err(a, b):
    """max |a - b| / max |b| over a grid (relative to the grid's scale)."""
    import numpy as np
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))

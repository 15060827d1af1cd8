"""Shared helpers for tools/train_ioi: tokenizer, model construction, the tutorial prompts.

Run with the venv made by tools/train_ioi/setup-venv.sh (/work/venv-torch/bin/python).
"""
import json
import os
import re

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENIZER_PATH = os.path.join(REPO, "models", "tokenizer.json")
OUT_DIR = os.path.join(REPO, "models", "ioi-gpt2")
BOS_ID = 50256

# The nnsight attribution patching tutorial's eight prompts and (correct, incorrect) answers.
TUTORIAL_PROMPTS = [
    "When John and Mary went to the shops, John gave the bag to",
    "When John and Mary went to the shops, Mary gave the bag to",
    "When Tom and James went to the park, James gave the ball to",
    "When Tom and James went to the park, Tom gave the ball to",
    "When Dan and Sid went to the shops, Sid gave an apple to",
    "When Dan and Sid went to the shops, Dan gave an apple to",
    "After Martin and Amy went to the park, Amy gave a drink to",
    "After Martin and Amy went to the park, Martin gave a drink to",
]
TUTORIAL_ANSWERS = [
    (" Mary", " John"),
    (" John", " Mary"),
    (" Tom", " James"),
    (" James", " Tom"),
    (" Dan", " Sid"),
    (" Sid", " Dan"),
    (" Martin", " Amy"),
    (" Amy", " Martin"),
]


def load_tokenizer(path=TOKENIZER_PATH):
    return Tokenizer.from_file(path)


def encode(tok, text):
    """GPT-2 ids of text, no BOS (the tokenizer.json has no post-processor adding one)."""
    return tok.encode(text, add_special_tokens=False).ids


def single_token_id(tok, text):
    ids = encode(tok, text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is not one GPT-2 token: {ids}")
    return ids[0]


def make_config(n_layer, n_head, n_embd, n_positions=64, n_inner=None, vocab_size=50257):
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=n_inner,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=BOS_ID,
        attn_implementation="eager",
    )
    cfg._attn_implementation = "eager"
    return cfg


def build_model(cfg):
    model = GPT2LMHeadModel(cfg)
    model.config._attn_implementation = "eager"
    return model


def config_from_json(path):
    with open(path) as f:
        c = json.load(f)
    return make_config(c["n_layer"], c["n_head"], c["n_embd"], c["n_positions"], c.get("n_inner"),
                       c.get("vocab_size", 50257))


def state_dict_from_onnx(onnx_path):
    """GPT-2 parameters from a legacy/dynamo ONNX export's initializers (names are kept by
    the exporters for GPT-2). Returns (state_dict, n_layer, n_embd, n_positions, n_inner)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(onnx_path)
    sd = {}
    extra = {}
    for init in m.graph.initializer:
        arr = numpy_helper.to_array(init)
        if init.name.startswith("transformer."):
            sd[init.name] = torch.from_numpy(arr.copy())
        else:
            extra[init.name] = arr
    wte = sd["transformer.wte.weight"]
    # The legacy exporter stores the tied lm_head as a transposed copy of wte: check it.
    for name, arr in extra.items():
        if arr.shape == tuple(wte.shape[::-1]):
            if not np.array_equal(arr.T, wte.numpy()):
                raise ValueError(f"{name} looks like lm_head but is not wte^T")
    layers = sorted({int(mm.group(1)) for k in sd for mm in [re.match(r"transformer\.h\.(\d+)\.", k)] if mm})
    n_layer = len(layers)
    n_embd = wte.shape[1]
    n_positions = sd["transformer.wpe.weight"].shape[0]
    n_inner = sd["transformer.h.0.mlp.c_fc.weight"].shape[1]
    sd["lm_head.weight"] = wte
    return sd, n_layer, n_embd, n_positions, n_inner


def load_state_dict_into(model, sd):
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Causal-mask buffers (attn.bias / masked_bias) are not parameters; anything else is an error.
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model


def logit_diff(logits, answer_ids):
    """mean over batch of logits[b, -1, correct] - logits[b, -1, incorrect]."""
    last = logits[:, -1, :]
    c = last.gather(1, answer_ids[:, 0:1])
    i = last.gather(1, answer_ids[:, 1:2])
    return (c - i).mean()


def tutorial_batch(tok, bos=False):
    clean = [encode(tok, p) for p in TUTORIAL_PROMPTS]
    if bos:
        clean = [[BOS_ID] + ids for ids in clean]
    assert len({len(x) for x in clean}) == 1, "tutorial prompts must have equal length"
    clean = torch.tensor(clean, dtype=torch.long)
    corrupted = clean[[(i + 1 if i % 2 == 0 else i - 1) for i in range(len(clean))]]
    answers = torch.tensor([[single_token_id(tok, a) for a in pair] for pair in TUTORIAL_ANSWERS],
                           dtype=torch.long)
    return clean, corrupted, answers

#!/usr/bin/env python3
"""Writes Tests/Fixtures/tiny-mixtral-router: tiny-mixtral with Flux Attention router weights in every layer.

The weights are random (seeded), under the names Flux's code gives them
(model.layers.N.self_attn.mask_allocator.cls_feat_extractor.{0,2}, cls_router_head_agnostic.{0,2,4}, weight and
bias). They are drawn wider than PyTorch's default so that the decision depends on the prompt, and the last bias
of layer 0 is set so that layer 0's two logits tie at the median over random prompts (computed here from the
queries of layer 0, which need only the embedding, the input norm and q_proj). The engine's decisions are then
checked in the tests against a plain-loop reference of the same MLP, not against numbers written here.

Usage: Scripts/make_router_fixture.py [Tests/Fixtures]
"""
import json
import os
import shutil
import struct
import sys

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", name
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(meta["shape"])
    return out


def save_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-(8 + len(h)) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h)))
        fh.write(h)
        for b in blobs:
            fh.write(b)


def silu(x):
    return x / (1 + np.exp(-x))


def router_logits(parts, pooled):
    x = pooled
    for i, (w, b) in enumerate(parts):
        x = x @ w.T + b
        if i in (0, 2, 3):
            x = silu(x)
    return x


def pooled_layer0(w, cfg, ids, pool=100):
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    d = h // heads
    x = w["model.embed_tokens.weight"][ids].astype(np.float64)
    xn = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["rms_norm_eps"]) * w["model.layers.0.input_layernorm.weight"]
    q = xn @ w["model.layers.0.self_attn.q_proj.weight"].T
    rows = q if len(ids) < 2 * pool else np.concatenate([q[:pool], q[-pool:]])
    return rows.reshape(len(rows), heads, d).mean(0).mean(0)


def main(root):
    src, out = os.path.join(root, "tiny-mixtral"), os.path.join(root, "tiny-mixtral-router")
    os.makedirs(out, exist_ok=True)
    cfg = json.load(open(os.path.join(src, "config.json")))
    w = dict(load_safetensors(os.path.join(src, "model.safetensors")))
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    rng = np.random.default_rng(31)
    shapes = [("cls_feat_extractor.0", 8 * d, d), ("cls_feat_extractor.2", 2 * d, 8 * d),
              ("cls_router_head_agnostic.0", 4 * d, 2 * d), ("cls_router_head_agnostic.2", d, 4 * d),
              ("cls_router_head_agnostic.4", 2, d)]
    prompts = [rng.integers(0, cfg["vocab_size"], size=int(n)) for n in rng.integers(3, 40, size=64)]
    for layer in range(cfg["num_hidden_layers"]):
        parts = []
        for name, rows, cols in shapes:
            bound = 3 / np.sqrt(cols)
            parts.append((rng.uniform(-bound, bound, (rows, cols)).astype(np.float32),
                          rng.uniform(-bound, bound, rows).astype(np.float32)))
        if layer == 0:
            margins = [np.diff(router_logits(parts, pooled_layer0(w, cfg, p)))[0] for p in prompts]
            w_last, b_last = parts[-1]
            b_last = b_last.copy()
            b_last[1] -= np.float32(np.median(margins))
            parts[-1] = (w_last, b_last)
        prefix = f"model.layers.{layer}.self_attn.mask_allocator."
        for (name, _, _), (weight, bias) in zip(shapes, parts):
            w[prefix + name + ".weight"] = weight
            w[prefix + name + ".bias"] = bias
    save_safetensors(os.path.join(out, "model.safetensors"), w)
    shutil.copy(os.path.join(src, "config.json"), os.path.join(out, "config.json"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "Tests", "Fixtures"))

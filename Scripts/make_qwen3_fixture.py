"""Make a tiny Qwen3-MoE checkpoint and its expected outputs with an independent NumPy implementation.

transformers (and torch) cannot be installed on the development machine, so this script re-implements
Qwen3MoeForCausalLM's forward pass from transformers' modeling code in float64 NumPy: per-head q/k RMSNorm before
rotate-half RoPE, GQA, softmax router then top-k renormalised (norm_topk_prob), SiLU-GLU experts, a dense MLP on
the layers in mlp_only_layers, an explicit head_dim that differs from hidden/heads. Output layout as
../shared/fixtures (expected.safetensors with a/b/c cases and greedy generation).

Run: python3 Scripts/make_qwen3_fixture.py Tests/Fixtures/tiny-qwen3moe   (needs numpy only)
"""
import json, os, struct, sys
import numpy as np

CFG = dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", vocab_size=200, hidden_size=64,
           intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
           num_key_value_heads=2, head_dim=24, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
           decoder_sparse_step=1, mlp_only_layers=[1], rms_norm_eps=1e-6, rope_theta=1000000.0,
           max_position_embeddings=256, tie_word_embeddings=False, attention_bias=False, hidden_act="silu",
           use_sliding_window=False, sliding_window=None, dtype="float32")


def make_weights(rng):
    c = CFG; h, hd, H, KV = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    w = {"model.embed_tokens.weight": rng.normal(0, 0.5, (c["vocab_size"], h)),
         "lm_head.weight": rng.normal(0, 0.15, (c["vocab_size"], h)),
         "model.norm.weight": 1 + 0.25 * rng.normal(size=h)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = 1 + 0.25 * rng.normal(size=h)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.25 * rng.normal(size=h)
        w[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.15, (H * hd, h))
        w[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.15, (KV * hd, h))
        w[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.15, (KV * hd, h))
        w[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.15, (h, H * hd))
        w[p + "self_attn.q_norm.weight"] = 1 + 0.25 * rng.normal(size=hd)
        w[p + "self_attn.k_norm.weight"] = 1 + 0.25 * rng.normal(size=hd)
        if l in c["mlp_only_layers"]:
            i = c["intermediate_size"]
            for n, shape in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
                w[p + f"mlp.{n}.weight"] = rng.normal(0, 0.15, shape)
        else:
            i = c["moe_intermediate_size"]
            w[p + "mlp.gate.weight"] = rng.normal(0, 0.5, (c["num_experts"], h))
            for e in range(c["num_experts"]):
                for n, shape in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
                    w[p + f"mlp.experts.{e}.{n}.weight"] = rng.normal(0, 0.15, shape)
    # Stored as float32: the reference computes on exactly the stored values.
    return {k: v.astype(np.float32) for k, v in w.items()}


def rms(x, w, eps):
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def silu(x):
    return x / (1 + np.exp(-x))


def forward(w, ids):
    c = CFG; h, hd, H, KV, k = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"], c["num_experts_per_tok"]
    f = {n: v.astype(np.float64) for n, v in w.items()}
    T = len(ids); eps = c["rms_norm_eps"]
    x = f["model.embed_tokens.weight"][ids]
    inv = 1.0 / (np.float32(c["rope_theta"]) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)))
    ang = (np.arange(T, dtype=np.float32)[:, None] * inv[None, :].astype(np.float32)).astype(np.float64)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = lambda v: np.concatenate([-v[..., hd // 2:], v[..., :hd // 2]], -1)
    ids_out, wts_out = [], []
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = rms(x, f[p + "input_layernorm.weight"], eps)
        q = (a @ f[p + "self_attn.q_proj.weight"].T).reshape(T, H, hd)
        kk = (a @ f[p + "self_attn.k_proj.weight"].T).reshape(T, KV, hd)
        v = (a @ f[p + "self_attn.v_proj.weight"].T).reshape(T, KV, hd)
        q, kk = rms(q, f[p + "self_attn.q_norm.weight"], eps), rms(kk, f[p + "self_attn.k_norm.weight"], eps)
        q = q * cos[:, None] + rot(q) * sin[:, None]
        kk = kk * cos[:, None] + rot(kk) * sin[:, None]
        out = np.zeros((T, H, hd))
        for hh in range(H):
            g = hh // (H // KV)
            s = q[:, hh] @ kk[:, g].T * hd ** -0.5
            s = np.where(np.tril(np.ones((T, T))) > 0, s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
            out[:, hh] = s @ v[:, g]
        x = x + out.reshape(T, H * hd) @ f[p + "self_attn.o_proj.weight"].T
        a = rms(x, f[p + "post_attention_layernorm.weight"], eps)
        if l in c["mlp_only_layers"]:
            x = x + (silu(a @ f[p + "mlp.gate_proj.weight"].T) * (a @ f[p + "mlp.up_proj.weight"].T)) @ f[p + "mlp.down_proj.weight"].T
            continue
        logits = a @ f[p + "mlp.gate.weight"].T
        prob = np.exp(logits - logits.max(-1, keepdims=True)); prob /= prob.sum(-1, keepdims=True)
        top = np.argsort(-prob, -1, kind="stable")[:, :k]
        tw = np.take_along_axis(prob, top, -1)
        gap = (np.sort(prob, -1)[:, ::-1][:, k - 1] - np.sort(prob, -1)[:, ::-1][:, k]).min()
        if c["norm_topk_prob"]:
            tw = tw / tw.sum(-1, keepdims=True)
        y = np.zeros_like(x)
        for t in range(T):
            for j in range(k):
                e = top[t, j]; q2 = f"{p}mlp.experts.{e}."
                y[t] += tw[t, j] * ((silu(a[t] @ f[q2 + "gate_proj.weight"].T) * (a[t] @ f[q2 + "up_proj.weight"].T)) @ f[q2 + "down_proj.weight"].T)
        x = x + y
        ids_out.append(top); wts_out.append(tw)
        forward.min_gap = min(forward.min_gap, gap)
    x = rms(x, f["model.norm.weight"], eps)
    return x @ f["lm_head.weight"].T, np.stack(ids_out), np.stack(wts_out)


def save_safetensors(path, tensors):
    """tensors: name -> an f32 or i64 array, or (safetensors dtype, array of the stored bits)."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        dt, a = tensors[name] if isinstance(tensors[name], tuple) else (None, tensors[name])
        a = np.ascontiguousarray(a)
        dt = dt or {np.float32: "F32", np.int64: "I64"}[a.dtype.type]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes()); offset += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-(8 + len(h)) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h))); fh.write(h)
        for b in blobs: fh.write(b)


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(14)
    w = make_weights(rng)
    save_safetensors(os.path.join(out, "model.safetensors"), w)
    json.dump(CFG, open(os.path.join(out, "config.json"), "w"), indent=2)
    exp, meta = {}, {"name": os.path.basename(out), "arch": "qwen3_moe", "reference": "numpy float64 (Scripts/make_qwen3_fixture.py)", "cases": {}}
    for case, n in (("a", 1), ("b", 6), ("c", 40)):
        ids = []
        while len(ids) < n:  # keep a token only if every router decision has a margin fp32 order cannot flip
            t = int(rng.integers(3, CFG["vocab_size"]))
            forward.min_gap = 1.0
            forward(w, ids + [t])
            if forward.min_gap >= 3e-3: ids.append(t)
        forward.min_gap = 1.0
        lg, top, tw = forward(w, ids)
        exp.update({f"{case}.input_ids": np.array(ids, np.int64), f"{case}.logits": lg.astype(np.float32),
                    f"{case}.topk_ids": top.astype(np.int64), f"{case}.topk_weights": tw.astype(np.float32)})
        meta["cases"][case] = {"len": n, "min_router_gap": forward.min_gap}
    prompt = exp["b.input_ids"].tolist(); cur = list(prompt); steps = []
    for _ in range(12):
        lg, _, _ = forward(w, cur); steps.append(lg[-1]); cur.append(int(np.argmax(lg[-1])))
    exp["gen.prompt"] = np.array(prompt, np.int64); exp["gen.tokens"] = np.array(cur[len(prompt):], np.int64)
    exp["gen.step_logits"] = np.array(steps, np.float32)
    meta["gen"] = {"prompt": prompt, "tokens": cur[len(prompt):]}
    save_safetensors(os.path.join(out, "expected.safetensors"), exp)
    json.dump(meta, open(os.path.join(out, "expected.json"), "w"), indent=1)
    print(json.dumps(meta["cases"]))


if __name__ == "__main__":
    main(sys.argv[1])

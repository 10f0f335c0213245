"""Make a tiny Qwen3-MoE FP8 checkpoint, as Qwen3-FP8 and DeepSeek-V3 ship them, and its expected outputs.

The linear layers (attention projections, experts, the dense MLP) are stored as float8_e4m3fn codes with a
`weight_scale_inv` per 128 x 128 block (the weight is code x scale), and config.json has a quantization_config
with quant_method fp8; embeddings, norms, routers and the LM head stay in bf16, as in the real checkpoints. The
shapes are larger than tiny-qwen3moe's so that every projection spans several blocks with partial ones at the
edges (hidden 160, 4 heads of 40, experts of 144, a dense MLP of 272). Layer 2 stores its scales in bf16, the
others in f32. The expected logits come from make_qwen3_fixture's float64 NumPy forward pass on the dequantized
weights (no activation quantization: the engine computes FP8 weights in f32, W8A16).

Run: python3 Scripts/make_fp8_fixture.py Tests/Fixtures/tiny-qwen3moe-fp8   (needs numpy only)
"""
import json, os, sys
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_qwen3_fixture as q3

q3.CFG = dict(q3.CFG, hidden_size=160, num_attention_heads=4, num_key_value_heads=2, head_dim=40,
              moe_intermediate_size=144, intermediate_size=272, dtype="bfloat16",
              quantization_config=dict(quant_method="fp8", fmt="e4m3", activation_scheme="dynamic",
                                       weight_block_size=[128, 128]))
BLOCK = 128
FP8_MAX = 448.0


def e4m3_values():
    """Values of the 256 e4m3fn codes (NaN for 0x7F and 0xFF), from the format's definition."""
    v = np.empty(256)
    for c in range(256):
        s, e, m = c >> 7, (c >> 3) & 15, c & 7
        if e == 15 and m == 7:
            v[c] = np.nan
        elif e == 0:
            v[c] = (-1) ** s * m / 8 * 2.0 ** -6
        else:
            v[c] = (-1) ** s * (1 + m / 8) * 2.0 ** (e - 7)
    return v


VALUES = e4m3_values()
POSITIVE = VALUES[:127]  # codes 0..126, increasing


def to_e4m3(x):
    """Codes nearest to x (|x| <= 448), ties to the even code."""
    a = np.abs(x)
    hi = np.clip(np.searchsorted(POSITIVE, a), 1, 126)
    lo = hi - 1
    dlo, dhi = a - POSITIVE[lo], POSITIVE[hi] - a
    code = np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(lo % 2 == 0, lo, hi)))
    return (code | np.where(np.signbit(x), 128, 0)).astype(np.uint8)


def to_bf16_bits(x):
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def quantize(w):
    """(codes, f32 scales, dequantized float64 weights) of w in 128 x 128 blocks."""
    r, c = w.shape
    gr, gc = -(-r // BLOCK), -(-c // BLOCK)
    scales = np.zeros((gr, gc), np.float32)
    codes = np.zeros((r, c), np.uint8)
    for i in range(gr):
        for j in range(gc):
            b = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK].astype(np.float64)
            s = np.float32(np.abs(b).max() / FP8_MAX)
            scales[i, j] = s
            codes[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = to_e4m3(b / np.float64(s))
    return codes, scales


def dequantize(codes, scales):
    s = np.repeat(np.repeat(scales.astype(np.float64), BLOCK, 0), BLOCK, 1)[:codes.shape[0], :codes.shape[1]]
    return VALUES[codes] * s


def quantized(name):
    return name.endswith("_proj.weight")  # q/k/v/o, experts' and the dense MLP's gate/up/down


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(8)
    w = q3.make_weights(rng)
    stored, ref = {}, {}
    for name, v in w.items():
        if quantized(name):
            codes, scales = quantize(v)
            stored[name] = ("F8_E4M3", codes)
            stored[name + "_scale_inv"] = (("BF16", to_bf16_bits(scales)) if name.startswith("model.layers.2.")
                                          else ("F32", scales))
            if name.startswith("model.layers.2."):
                scales = bf16_value(to_bf16_bits(scales))
            ref[name] = dequantize(codes, scales)
        else:
            bits = to_bf16_bits(v)
            stored[name] = ("BF16", bits)
            ref[name] = bf16_value(bits).astype(np.float64)
    q3.save_safetensors(os.path.join(out, "model.safetensors"), stored)
    json.dump(q3.CFG, open(os.path.join(out, "config.json"), "w"), indent=2)

    exp = {}
    meta = {"name": os.path.basename(out), "arch": "qwen3_moe",
            "reference": "numpy float64 on the dequantized weights (Scripts/make_fp8_fixture.py)", "cases": {}}
    for case, n in (("a", 1), ("b", 6), ("c", 40)):
        ids = []
        while len(ids) < n:  # keep a token only if every router decision has a margin fp32 order cannot flip
            t = int(rng.integers(3, q3.CFG["vocab_size"]))
            q3.forward.min_gap = 1.0
            q3.forward(ref, ids + [t])
            if q3.forward.min_gap >= 3e-3: ids.append(t)
        q3.forward.min_gap = 1.0
        lg, top, tw = q3.forward(ref, ids)
        exp.update({f"{case}.input_ids": ("I64", np.array(ids, np.int64)), f"{case}.logits": ("F32", lg.astype(np.float32)),
                    f"{case}.topk_ids": ("I64", top.astype(np.int64)), f"{case}.topk_weights": ("F32", tw.astype(np.float32))})
        meta["cases"][case] = {"len": n, "min_router_gap": q3.forward.min_gap}
    prompt = exp["b.input_ids"][1].tolist(); cur = list(prompt); steps = []
    for _ in range(12):
        lg, _, _ = q3.forward(ref, cur); steps.append(lg[-1]); cur.append(int(np.argmax(lg[-1])))
    exp["gen.prompt"] = ("I64", np.array(prompt, np.int64)); exp["gen.tokens"] = ("I64", np.array(cur[len(prompt):], np.int64))
    exp["gen.step_logits"] = ("F32", np.array(steps, np.float32))
    meta["gen"] = {"prompt": prompt, "tokens": cur[len(prompt):]}
    q3.save_safetensors(os.path.join(out, "expected.safetensors"), exp)
    json.dump(meta, open(os.path.join(out, "expected.json"), "w"), indent=1)
    print(json.dumps(meta["cases"]))


if __name__ == "__main__":
    main(sys.argv[1])

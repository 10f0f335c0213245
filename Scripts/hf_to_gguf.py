#!/usr/bin/env python3
"""Writes a Mixtral-shaped Hugging Face folder (`moe init-model`'s, f32 or f16 safetensors) as a GGUF file for
llama.cpp, to measure llama.cpp on the same weights (its own converter needs torch, transformers and a
SentencePiece `tokenizer.model`; this needs only numpy and the `gguf` package: `pip install gguf`).

Usage: hf_to_gguf.py MODEL_DIR TOKENIZER_DIR OUT.gguf [--outtype f32|f16]

Weights keep their values (f16 rounds f32 to nearest). q_proj and k_proj rows are reordered per head from
Hugging Face's rotate-half layout to the interleaved pairs llama.cpp's rope reads. The vocabulary comes from the
tokenizer's tokenizer.json (SentencePiece-style BPE with byte fallback, as Mixtral's): pieces by id, a score of
-id (SentencePiece numbers BPE pieces in merge order), byte pieces typed as bytes and special tokens as control.
"""
import argparse
import json
import os
import struct

import numpy as np


def tensors(model_dir):
    """Every tensor of the folder's safetensors files, as numpy arrays (memory-mapped)."""
    out = {}
    for name in sorted(os.listdir(model_dir)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(model_dir, name)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            dtype = {"F32": np.float32, "F16": np.float16}.get(info["dtype"])
            if dtype is None:
                raise SystemExit(f"{path}: {key} is {info['dtype']}; write the model as f32 or f16")
            lo, hi = info["data_offsets"]
            out[key] = data[lo:hi].view(dtype).reshape(info["shape"])
    return out


def interleave_heads(w, heads):
    """Rows of each head from [first halves, second halves] (rotate-half) to pairs (2i, 2i+1)."""
    d = w.shape[0] // heads
    w = w.reshape(heads, 2, d // 2, -1)
    return np.ascontiguousarray(w.transpose(0, 2, 1, 3)).reshape(heads * d, -1)


def main():
    import gguf

    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("tokenizer_dir")
    p.add_argument("out")
    p.add_argument("--outtype", choices=["f32", "f16"], default="f32")
    a = p.parse_args()
    config = json.load(open(os.path.join(a.model_dir, "config.json")))
    if config.get("model_type") != "mixtral":
        raise SystemExit(f"model_type {config.get('model_type')!r}: this writes Mixtral-shaped models only")
    t = tensors(a.model_dir)
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    experts = config["num_local_experts"]
    dtype = np.float32 if a.outtype == "f32" else np.float16

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(os.path.basename(os.path.normpath(a.model_dir)))
    w.add_context_length(config.get("max_position_embeddings", 32768))
    w.add_embedding_length(h)
    w.add_block_count(layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(h // heads)
    w.add_rope_freq_base(float(config.get("rope_theta", 1e6)))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    w.add_expert_count(experts)
    w.add_expert_used_count(config["num_experts_per_tok"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if a.outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)

    tok = json.load(open(os.path.join(a.tokenizer_dir, "tokenizer.json")))
    vocab = tok["model"]["vocab"]
    n = config["vocab_size"]
    pieces = [f"[PAD{i}]" for i in range(n)]
    for piece, i in vocab.items():
        if i < n:
            pieces[i] = piece
    special = {x["id"]: x["content"] for x in tok.get("added_tokens", []) if x.get("special")}
    types = []
    for i, piece in enumerate(pieces):
        if i in special:
            pieces[i] = special[i]
            types.append(gguf.TokenType.UNKNOWN if special[i] == "<unk>" else gguf.TokenType.CONTROL)
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores([-float(i) for i in range(n)])
    w.add_token_types(types)
    config_path = os.path.join(a.tokenizer_dir, "tokenizer_config.json")
    names = json.load(open(config_path)) if os.path.exists(config_path) else {}
    ids = {c: i for i, c in special.items()}
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id), ("unk_token", w.add_unk_token_id)):
        value = names.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value in ids:
            add(ids[value])

    def put(name, array):
        w.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32 if array.ndim == 1 else dtype))

    put("token_embd.weight", t["model.embed_tokens.weight"])
    put("output_norm.weight", t["model.norm.weight"])
    put("output.weight", t.get("lm_head.weight", t["model.embed_tokens.weight"]))
    for l in range(layers):
        pre = f"model.layers.{l}."
        put(f"blk.{l}.attn_norm.weight", t[pre + "input_layernorm.weight"])
        put(f"blk.{l}.ffn_norm.weight", t[pre + "post_attention_layernorm.weight"])
        put(f"blk.{l}.attn_q.weight", interleave_heads(np.asarray(t[pre + "self_attn.q_proj.weight"]), heads))
        put(f"blk.{l}.attn_k.weight", interleave_heads(np.asarray(t[pre + "self_attn.k_proj.weight"]), kv_heads))
        put(f"blk.{l}.attn_v.weight", t[pre + "self_attn.v_proj.weight"])
        put(f"blk.{l}.attn_output.weight", t[pre + "self_attn.o_proj.weight"])
        put(f"blk.{l}.ffn_gate_inp.weight", t[pre + "block_sparse_moe.gate.weight"])
        for ours, theirs in (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")):
            stack = np.stack([t[f"{pre}block_sparse_moe.experts.{e}.{ours}.weight"] for e in range(experts)])
            put(f"blk.{l}.{theirs}.weight", stack)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

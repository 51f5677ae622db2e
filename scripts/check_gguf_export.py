#!/usr/bin/env python3
"""Independent check of `lors export --gguf` with clients no one here wrote (not part of the tests).

    python scripts/check_gguf_export.py --gguf FILE --hf MERGED_DIR --type T \
        [--lors-logprobs REPORT.json] [--tolerance REL] [--json OUT]

1. The `gguf` package (llama.cpp's own gguf-py) reads every tensor back. Each 2-D weight is
   compared with the merged Hugging Face weight laid out as llama.cpp's converter lays it
   (q/k rows permuted): every weight that is zero in the merged model must read back as zero,
   as +0.0 bit for bit in the float types, and as the block's zero code in Q8_0 (q = 0) and
   Q4_0 (nibble 8). gguf-py's own quantiser is run on the same weights and its bytes compared.
2. llama.cpp (llama-cpp-python) loads the file, is fed the tokens `lors eval --token-logprobs`
   used, and its per-token log-probabilities (KV cache in f32) are compared with lors's (max
   relative difference against --tolerance). Its own tokenisation of the text is compared too.
"""
import argparse
import json
import math
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as Q
from gguf import quants
from safetensors.numpy import load_file

BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
GGML_F32 = 0  # ggml's type id of f32, for the KV cache

TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
       "output.weight": "lm_head.weight"}


def hf_name(name):
    if name in TOP:
        return TOP[name]
    _, layer, module, kind = name.split(".")
    return f"model.layers.{layer}.{BLOCK[module]}.{kind}"


def permute(w, heads):
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def zero_codes(raw, qtype, shape):
    """Whether each weight holds its block's zero code (Q8_0: q = 0; Q4_0: nibble 8)."""
    rows, cols = shape
    blocks = raw.reshape(rows, cols // 32, -1)
    if qtype == Q.Q8_0:
        q = blocks[:, :, 2:].view(np.int8).reshape(rows, cols)
        return q == 0
    nib = blocks[:, :, 2:]
    q = np.concatenate([nib & 0x0F, nib >> 4], axis=2).reshape(rows, cols)
    return q == 8


def check_tensors(path, hf, config):
    reader = GGUFReader(path)
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    out = {"tensors": 0, "zeros": 0, "zeros_not_exact": 0, "kept_read_as_zero": 0,
           "quantiser_bytes_differ": 0, "quantiser_tensors_compared": 0, "max_f32_diff": 0.0}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        name = hf_name(t.name)
        ref = hf[name].astype(np.float32)
        if name.endswith("q_proj.weight"):
            ref = permute(ref, heads)
        elif name.endswith("k_proj.weight"):
            ref = permute(ref, kv)
        got = quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)
        out["tensors"] += 1
        if t.tensor_type == Q.F32:
            out["max_f32_diff"] = max(out["max_f32_diff"], float(np.max(np.abs(got - ref))))
        if ref.ndim != 2:
            continue
        zero = ref == 0
        out["zeros"] += int(zero.sum())
        if t.tensor_type in (Q.Q8_0, Q.Q4_0):
            exact = zero_codes(np.asarray(t.data), t.tensor_type, ref.shape) & (got == 0)
            mine = np.asarray(t.data).reshape(-1)
            theirs = quants.quantize(ref, t.tensor_type).reshape(-1)
            out["quantiser_tensors_compared"] += 1
            out["quantiser_bytes_differ"] += int((mine != theirs).sum())
        else:
            exact = (got == 0) & ~np.signbit(got)
        out["zeros_not_exact"] += int((zero & ~exact).sum())
        out["kept_read_as_zero"] += int((~zero & (got == 0)).sum())
    return out


def check_llama_cpp(path, lors_report):
    from llama_cpp import Llama

    ours = json.load(open(lors_report))["token_logprobs"]
    tokens, want = ours["tokens"], np.array(ours["logprobs"])
    n_ctx = -(-len(tokens) // 32) * 32
    # An f32 KV cache (llama.cpp's default is f16, which alone moves log-probabilities by
    # ~1e-2), so that only the weights' type differs between the two sides.
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                n_threads=2, verbose=False, type_k=GGML_F32, type_v=GGML_F32)
    llm.reset()
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    m = logits.max(axis=1, keepdims=True)
    logp = logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))
    got = logp[np.arange(len(tokens) - 1), tokens[1:]]
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-6)
    text = open(ours["text"], encoding="utf-8").read()
    theirs = llm.tokenize(text.encode("utf-8"), add_bos=tokens[0] == llm.token_bos(), special=False)
    return {
        "tokens": len(tokens),
        "max_abs_diff": float(np.max(np.abs(got - want))),
        "max_rel_diff": float(np.max(rel)),
        "mean_abs_diff": float(np.mean(np.abs(got - want))),
        "mean_logprob_lors": float(want.mean()),
        "mean_logprob_llama_cpp": float(got.mean()),
        "tokenisation_equal": theirs[: len(tokens)] == tokens,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--hf", required=True, help="the merged Hugging Face directory the export came from")
    p.add_argument("--type", required=True)
    p.add_argument("--lors-logprobs", help="`lors eval --token-logprobs ... --out` report")
    p.add_argument("--tolerance", type=float, help="max relative difference of the log-probabilities")
    p.add_argument("--json", help="append the result as a JSON line here")
    a = p.parse_args()
    config = json.load(open(f"{a.hf}/config.json"))
    result = {"gguf": a.gguf, "type": a.type,
              "gguf_py": check_tensors(a.gguf, load_file(f"{a.hf}/model.safetensors"), config)}
    ok = result["gguf_py"]["zeros_not_exact"] == 0
    if a.lors_logprobs:
        result["llama_cpp"] = check_llama_cpp(a.gguf, a.lors_logprobs)
        result["llama_cpp"]["tolerance"] = a.tolerance
        if a.tolerance is not None:
            ok &= result["llama_cpp"]["max_rel_diff"] <= a.tolerance
    result["ok"] = bool(ok)
    line = json.dumps(result)
    print(line)
    if a.json:
        with open(a.json, "a") as f:
            f.write(line + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

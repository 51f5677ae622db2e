#!/usr/bin/env python3
"""Raw-bit check of a merged export against its sparse base (not part of the tests).

    python scripts/check_zero_bits.py MERGED_DIR BASE_DIR [--name NAME]

Prints one JSON line: over the tensors the merge changed (any tensor whose bytes differ from
the base's), the pruned positions (zero in the base, either sign), how many of them are not
+0.0 (all bits clear) in the export, how many differ in bits from the base, and how many
the base itself holds as -0.0; whether every other tensor is byte-identical to the base's;
and whether transformers loads the export and runs a forward pass (when installed).
"""
import argparse
import json

import numpy as np
from safetensors.numpy import load_file

UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits(a):
    return a.view(UINT[a.dtype.itemsize])


def transformers_loads(path):
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return "not installed"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(torch.tensor([[1, 2, 3]])).logits
        return "yes" if torch.isfinite(logits).all() else "non-finite logits"
    except Exception as e:  # the verdict is the output, whatever failed
        return f"no: {type(e).__name__}: {e}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("merged")
    p.add_argument("base")
    p.add_argument("--name", default="")
    a = p.parse_args()
    merged = load_file(f"{a.merged}/model.safetensors")
    base = load_file(f"{a.base}/model.safetensors")
    row = {"name": a.name or a.merged, "pruned": 0, "not_positive_zero": 0, "differ_from_base": 0,
           "base_negative_zero": 0, "changed_tensors": 0, "untouched_identical": True}
    for name, b in base.items():
        m = merged[name]
        if m.tobytes() == b.tobytes():
            continue
        if not name.endswith("_proj.weight") or m.dtype != b.dtype or m.shape != b.shape:
            row["untouched_identical"] = False
            continue
        row["changed_tensors"] += 1
        zero = b == 0
        mb, bb = bits(m)[zero], bits(b)[zero]
        row["pruned"] += int(zero.sum())
        row["not_positive_zero"] += int((mb != 0).sum())
        row["differ_from_base"] += int((mb != bb).sum())
        row["base_negative_zero"] += int((bb != 0).sum())
    row["tensors"] = len(base)
    row["transformers"] = transformers_loads(a.merged)
    print(json.dumps(row))


if __name__ == "__main__":
    main()

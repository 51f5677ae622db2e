"""PEFT reads lors' folded SoRA adapter as trained: loads `<run>/adapter/` (gates folded into
B, zeroed components dropped, lowered ranks in `rank_pattern`) with PEFT onto the run's base
model and compares each layer's `get_delta_weight` with the gated update `s·(B⊙g)·A` computed
from the run's last checkpoint (lora_A, lora_B, lora_gate).

Usage: python scripts/check_sora_peft.py RUN_DIR   (transformers, peft, safetensors, torch)
"""
import glob
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel

run = sys.argv[1]
cfg = json.load(open(f"{run}/adapter/adapter_config.json"))
base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"], torch_dtype=torch.float32)
model = PeftModel.from_pretrained(base, f"{run}/adapter")
ckpts = sorted(glob.glob(f"{run}/checkpoints/step-*"))
t = load_file(f"{ckpts[-1]}/adapter_model.safetensors")
alpha, r = cfg["lora_alpha"], cfg["r"]
s = alpha / r ** 0.5
worst, lowered, n = 0.0, 0, 0
for name, mod in model.named_modules():
    if not hasattr(mod, "get_delta_weight") or "default" not in getattr(mod, "lora_A", {}):
        continue
    key = name.replace("base_model.model.", "")
    p = f"base_model.model.{key}"
    g = t[f"{p}.lora_gate.weight"]
    want = s * (t[f"{p}.lora_B.weight"] * g[None, :]) @ t[f"{p}.lora_A.weight"]
    got = mod.get_delta_weight("default")
    rank = mod.r["default"]
    lowered += rank < r
    n += 1
    worst = max(worst, (got - want).abs().max().item() / max(want.abs().max().item(), 1e-30))
print(f"{n} layers, {lowered} with a lowered rank in rank_pattern; "
      f"max |PEFT delta - lors gated delta| / max|delta| = {worst:.2e}")

#!/usr/bin/env python3
"""PyTorch CPU reference for `lors bench layer`: the same math, shapes and thread count.

Usage: python scripts/torch_layer_bench.py [--in 2048 --out 2048 --tokens 2048 --rank 16
       --threads 2 --runs 5]. Needs torch (`pip install torch`); not part of the test suite.

Methods, as in the Rust benchmark:
- lora: frozen base linear + PEFT-style side path through ordinary autograd.
- lors: a torch.autograd.Function that keeps only x, A, B; the merged weight
  (W + s·B·A) ⊙ M is rebuilt in backward; adapter gradients through the rank-r path.
- lors-exact: the same with G = (gᵀ·x) ⊙ M formed inside backward.
- sqft: x·(W + (s·B·A) ⊙ M)ᵀ through ordinary autograd.
"""
import argparse
import statistics
import time

import torch


class Lors(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, w, mask, s, exact):
        merged = (w + s * (b @ a)) * mask
        ctx.save_for_backward(x, a, b)
        ctx.w, ctx.mask, ctx.s, ctx.exact = w, mask, s, exact
        return x @ merged.t()

    @staticmethod
    def backward(ctx, g):
        x, a, b = ctx.saved_tensors
        s, mask = ctx.s, ctx.mask
        merged = (ctx.w + s * (b @ a)) * mask
        gx = g @ merged
        del merged
        if ctx.exact:
            dense = (g.t() @ x) * mask
            ga, gb = s * (b.t() @ dense), s * (dense @ a.t())
        else:
            ga = s * ((g @ b).t() @ x)
            gb = s * (g.t() @ (x @ a.t()))
        return gx, ga, gb, None, None, None, None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--in", dest="in_f", type=int, default=2048)
    p.add_argument("--out", dest="out_f", type=int, default=2048)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    o, i, t, r = args.out_f, args.in_f, args.tokens, args.rank
    dense = torch.randn(o, i) / i**0.5
    thresh = dense.abs().kthvalue(i // 2, dim=1, keepdim=True).values
    mask = (dense.abs() > thresh).float()
    w = dense * mask
    s = 16.0 / r**0.5
    x = torch.randn(t, i, requires_grad=True)
    g = torch.randn(t, o)
    a = (torch.rand(r, i) * 2 - 1).div(i**0.5).requires_grad_()
    b = (torch.randn(o, r) * 0.01).requires_grad_()

    methods = {
        "lors": lambda: Lors.apply(x, a, b, w, mask, s, False),
        "lors-exact": lambda: Lors.apply(x, a, b, w, mask, s, True),
        "sqft": lambda: x @ (w + (s * (b @ a)) * mask).t(),
        "lora": lambda: x @ w.t() + s * ((x @ a.t()) @ b.t()),
    }
    times = {m: [] for m in methods}
    for round_ in range(args.runs + 1):
        for m, f in methods.items():
            x.grad = a.grad = b.grad = None
            start = time.perf_counter()
            y = f()
            y.backward(g)  # the gradient of (y * g).sum(), without forming that sum
            elapsed = (time.perf_counter() - start) * 1e3
            if round_ > 0:
                times[m].append(elapsed)
    lora = statistics.median(times["lora"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{o}x{i}, {t} tokens, rank {r}, median of {args.runs}")
    for m, ts in times.items():
        med = statistics.median(ts)
        print(f"{m:<11} {med:>10.1f} ms  x lora {med / lora:5.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The crate's import structure: arrows that run up the layers, and import circles.

Reads every `crate::…` and `super::…` path in `src/` (test modules excluded), resolves each to
the file that defines the item (following `pub use` re-exports), and reports
  - every file-to-file arrow from a lower layer to a higher one (LAYERS, lowest first), and
  - every circle between files (strongly connected components of the file graph).
Exit status 1 when there is an upward arrow or more circles than ALLOWED_CIRCLES.

    python3 scripts/layers.py            # the report; `-v` also lists every arrow
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Modules by layer, lowest first (docs/architecture.md): a top-level module, or a file of one
# (`gguf/export`) where a module spans layers.
LAYERS = [
    ["error", "names"],
    ["cpu", "memory", "io", "device", "gpu_monitor", "slurm", "dist"],
    ["sparsity"],
    ["sources", "gguf/mod", "gguf/import", "data"],
    ["adapters"],
    ["model"],
    ["gguf/export", "gguf/vocab", "train", "prune", "eval", "bench"],
    ["sweep", "report", "bundled"],
    ["tui"],
    ["cli", "main"],
]
# A dispatcher and its kernel may import each other (file pairs, either order).
ALLOWED_CIRCLES = {frozenset({"model/attention.rs", "model/attention_cpu.rs"})}

ITEM = re.compile(r"^\s*pub(?:\([^)]*\))?\s+(?:unsafe\s+)?(?:async\s+)?"
                  r"(?:struct|enum|fn|trait|type|const|static|mod|union)\s+(\w+)", re.M)
MACRO = re.compile(r"macro_rules!\s*(\w+)")


def module_file(parts):
    """The file of module `parts` (e.g. ["model", "llama"]), or None."""
    if not parts:
        return SRC / "lib.rs"
    base = SRC.joinpath(*parts)
    for cand in (base.with_suffix(".rs"), base / "mod.rs"):
        if cand.exists():
            return cand
    return None


def module_of(path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    if parts == ["main"]:
        return []  # the binary's crate root: `crate::` means the binary
    return parts


def code_of(path):
    text = path.read_text()
    m = re.search(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+\w+\s*\{", text)
    text = text[: m.start()] if m else text
    text = re.sub(r"//[^\n]*", "", text)
    return text


def use_trees(code):
    """Paths named in `use` trees and inline `crate::`/`super::` paths."""
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super)(?:::\w+)*::)?(\{[^;]*\}|[\w:]+)(?:\s+as\s+\w+)?\s*;", code):
        prefix = m.group(1) or ""
        expand(prefix, m.group(2), paths)
    for m in re.finditer(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", code):
        paths.append(m.group(1))
    for m in re.finditer(r"(?<![\w:])lors((?:::\w+)+)", code):
        paths.append("crate" + m.group(1))
    for m in re.finditer(r"\buse\s+lors::(\{[^;]*\}|[\w:]+)(?:\s+as\s+\w+)?\s*;", code):
        expand("crate::", m.group(1), paths)
    return [p for p in paths if p.startswith(("crate::", "super::"))]


def expand(prefix, tree, out):
    tree = tree.strip()
    if tree.startswith("{"):
        depth, start, items = 0, 1, []
        for i, ch in enumerate(tree):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 1:
                items.append(tree[start:i])
                start = i + 1
        items.append(tree[start:-1])
        for item in items:
            if item.strip():
                expand(prefix, item, out)
        return
    m = re.match(r"([\w:]+?)(::)?(\{.*\})?(\s+as\s+\w+)?$", tree, re.S)
    if not m:
        return
    if m.group(3):
        expand(prefix + m.group(1) + "::", m.group(3), out)
    else:
        out.append(prefix + m.group(1))


def absolute(path, here):
    segs = path.split("::")
    if segs[0] == "crate":
        return segs[1:]
    base = list(here)
    while segs and segs[0] == "super":
        base = base[:-1]
        segs = segs[1:]
    return base + segs


def resolve(parts, seen=None):
    """The file defining crate path `parts`: its deepest module file, then re-exports."""
    seen = seen or set()
    key = tuple(parts)
    if key in seen:
        return None
    seen.add(key)
    depth = 0
    for i in range(len(parts), -1, -1):
        if module_file(parts[:i]):
            depth = i
            break
    mod = parts[:depth]
    file = module_file(mod)
    if depth == len(parts):
        return file
    name = parts[depth]
    text = code_of(file)
    if name in ITEM.findall(text) or name in MACRO.findall(text) or name == "self":
        return file
    for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
        found = []
        expand("", m.group(1), found)
        for p in found:
            tail = p.split("::")[-1]
            if tail == name or tail == "*":
                target = absolute(p if p.startswith(("crate", "super")) else "self::" + p, mod)
                target = [s for s in target if s != "self"]
                if tail == "*":
                    target = target[:-1] + [name]
                got = resolve(target, seen)
                if got:
                    return got
    return file


def layer_of(file):
    rel = str(file.relative_to(SRC).with_suffix(""))
    top = rel.split("/")[0]
    for key in (rel, top):
        for i, layer in enumerate(LAYERS):
            if key in layer:
                return i
    return None


def graph():
    edges = defaultdict(set)
    files = sorted(p for p in SRC.rglob("*.rs"))
    for f in files:
        here = module_of(f)
        for p in use_trees(code_of(f)):
            target = resolve(absolute(p, here))
            if target and target != f and target.name != "lib.rs":
                edges[f].add(target)
    return files, edges


def circles(files, edges):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for f in files:
        if f not in index:
            visit(f)
    return out


def main():
    verbose = "-v" in sys.argv
    files, edges = graph()
    rel = lambda p: str(p.relative_to(SRC))
    upward = []
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            la, lb = layer_of(a), layer_of(b)
            if verbose:
                print(f"{rel(a)} -> {rel(b)}")
            if la is not None and lb is not None and lb > la:
                upward.append((rel(a), rel(b)))
    comps = circles(files, edges)
    bad = [c for c in comps if frozenset(rel(f) for f in c) not in ALLOWED_CIRCLES]
    print(f"files: {len(files)}, arrows: {sum(len(t) for t in edges.values())}")
    print(f"upward arrows: {len(upward)}")
    for a, b in upward:
        print(f"  {a} -> {b}")
    print(f"circles: {len(comps)} ({len(comps) - len(bad)} allowed)")
    for c in comps:
        print("  " + " <-> ".join(rel(f) for f in c))
    sys.exit(1 if upward or bad else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The longest functions in `src/` (test modules left out), by lines from `fn` to its closing
brace at the same indentation, and how many pass 80 lines (the guide's limit).

    python3 scripts/long_fns.py [N]      # the N longest (default 8); exit 1 when any pass 80
"""
import re,sys,pathlib
root=pathlib.Path(__file__).resolve().parent.parent/"src"
out=[]
for f in root.rglob("*.rs"):
    lines=f.read_text().split("\n")
    # cut tests
    for i,l in enumerate(lines):
        if re.match(r"\s*#\[cfg\(test\)\]",l): lines=lines[:i]; break
    i=0
    while i<len(lines):
        m=re.match(r"(\s*)(pub(\([^)]*\))? )?(async )?fn (\w+)",lines[i])
        if m:
            ind=len(m.group(1)); j=i
            # find body end: line that is ind spaces + "}"
            while j<len(lines) and not re.match(r"^"+" "*ind+r"\}\s*$",lines[j]):
                if j>i and re.match(r"^"+" "*ind+r"\S",lines[j]) and not lines[j].strip().startswith(("}","->","where",")")):
                    break
                j+=1
            out.append((j-i+1,str(f.relative_to(root)),m.group(5)))
            i=j
        i+=1
out.sort(reverse=True)
for n, f, name in out[: int(sys.argv[1]) if len(sys.argv) > 1 else 8]:
    print(n, f, name)
over = sum(1 for o in out if o[0] > 80)
print("functions over 80 lines:", over)
sys.exit(1 if over else 0)

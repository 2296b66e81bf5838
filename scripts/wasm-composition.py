#!/usr/bin/env python3
"""What a WebAssembly module is made of: section sizes, the custom sections (names,
producers), the data segments and the largest functions by their own code size, named from
the names section of the symbolized build, and code size per crate.

Usage: scripts/wasm-composition.py DEPLOYED.wasm SYMBOLIZED.wasm OUT.json

Sizes are a function's own body bytes, not its retained size (no dominator analysis as in
twiggy): a generic inlined into a large async state machine is counted in that machine.
"""
import gzip
import json
import re
import sys

SECTION_NAMES = {0: "custom", 1: "type", 2: "import", 3: "function", 4: "table", 5: "memory",
                 6: "global", 7: "export", 8: "start", 9: "element", 10: "code", 11: "data",
                 12: "data count", 13: "tag"}


class Reader:
    def __init__(self, data, pos=0):
        self.data, self.pos = data, pos

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def leb(self):
        result, shift = 0, 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def name(self):
        n = self.leb()
        s = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return s

    def limits(self):
        flags = self.byte()
        self.leb()
        if flags & 1:
            self.leb()


def sections(data):
    if data[:4] != b"\0asm":
        raise SystemExit("not a wasm module")
    r = Reader(data, 8)
    while r.pos < len(data):
        sid = r.byte()
        size = r.leb()
        start = r.pos
        yield sid, start, size
        r.pos = start + size


def imported_functions(data, start):
    r = Reader(data, start)
    n, funcs = r.leb(), 0
    for _ in range(n):
        r.name()
        r.name()
        kind = r.byte()
        if kind == 0:
            r.leb()
            funcs += 1
        elif kind == 1:
            r.byte()
            r.limits()
        elif kind == 2:
            r.limits()
        elif kind == 3:
            r.byte()
            r.byte()
        elif kind == 4:
            r.byte()
            r.leb()
    return funcs


def skip_const_expr(r):
    while True:
        op = r.byte()
        if op == 0x0B:
            return
        if op in (0x41, 0x42, 0x23):  # i32.const, i64.const, global.get
            r.leb()


def data_segments(data, start):
    r = Reader(data, start)
    out = []
    for _ in range(r.leb()):
        flag = r.leb()
        if flag == 2:
            r.leb()
        if flag in (0, 2):
            skip_const_expr(r)
        n = r.leb()
        out.append(n)
        r.pos += n
    return out


def function_names(data, start, size):
    r = Reader(data, start)
    if r.name() != "name":
        return {}
    names, end = {}, start + size
    while r.pos < end:
        sub, n = r.byte(), r.leb()
        sub_end = r.pos + n
        if sub == 1:
            for _ in range(r.leb()):
                idx = r.leb()
                names[idx] = r.name()
        r.pos = sub_end
    return names


def describe(path):
    data = open(path, "rb").read()
    secs, customs, segs, bodies, n_imported, names = [], {}, [], [], 0, {}
    for sid, start, size in sections(data):
        label = SECTION_NAMES.get(sid, str(sid))
        if sid == 0:
            cname = Reader(data, start).name()
            customs[cname] = customs.get(cname, 0) + size
            label = f"custom:{cname}"
            if cname == "name":
                names = function_names(data, start, size)
        elif sid == 2:
            n_imported = imported_functions(data, start)
        elif sid == 10:
            r = Reader(data, start)
            for _ in range(r.leb()):
                n = r.leb()
                bodies.append(n)
                r.pos += n
        elif sid == 11:
            segs = data_segments(data, start)
        secs.append({"section": label, "bytes": size})
    return {"path": path, "raw_bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9)),
            "sections": secs, "custom_sections": customs, "data_segments": sorted(segs, reverse=True),
            "bodies": bodies, "imported_functions": n_imported, "names": names}


def crate_of(name):
    """The crate a function's code belongs to: its path's first segment, or for a trait
    method of another type (`<T as crate::Trait>::f`) the type's own crate."""
    n = re.sub(r"\[[0-9a-f]+\]", "", name).lstrip("<&*( ")
    n = re.sub(r"^(impl |dyn |mut |const )+", "", n)
    first = re.split(r"::| as |<", n, maxsplit=1)[0]
    if "::" not in n or not first:
        return "(other)"
    if re.fullmatch(r"[iu](8|16|32|64|128|size)|f32|f64|bool|char|str", first):
        return "core"
    return first


deployed, symbolized, out = sys.argv[1:4]
d, s = describe(deployed), describe(symbolized)
named = [(s["names"].get(s["imported_functions"] + i, f"func[{s['imported_functions'] + i}]"), n)
         for i, n in enumerate(s["bodies"])]
by_crate = {}
for name, n in named:
    c = crate_of(name)
    by_crate[c] = by_crate.get(c, 0) + n
code_total = sum(s["bodies"])
res = {
    "deployed": {"raw_bytes": d["raw_bytes"], "gzip_bytes": d["gzip_bytes"], "sections": d["sections"],
                 "custom_sections": d["custom_sections"]},
    "symbolized": {"raw_bytes": s["raw_bytes"], "gzip_bytes": s["gzip_bytes"],
                   "names_section_bytes": s["custom_sections"].get("name", 0),
                   "producers_section_bytes": s["custom_sections"].get("producers", 0)},
    "code_bytes": code_total,
    "functions": len(s["bodies"]),
    "data_segments": {"count": len(d["data_segments"]), "bytes": sum(d["data_segments"]),
                      "largest": d["data_segments"][:5]},
    "top_functions_by_own_size": [{"name": n[:160], "bytes": b} for n, b in sorted(named, key=lambda x: -x[1])[:20]],
    "code_by_crate": dict(sorted(by_crate.items(), key=lambda x: -x[1])[:15]),
    "note": "own body bytes per function, not retained size (no dominator analysis)",
}
json.dump(res, open(out, "w"), indent=2)
print(f"    wasm composition: {res['functions']} functions, {code_total:,} B code, "
      f"{res['data_segments']['bytes']:,} B data in {res['data_segments']['count']} segments; "
      f"names section {res['symbolized']['names_section_bytes']:,} B stripped from the deployed module", file=sys.stderr)

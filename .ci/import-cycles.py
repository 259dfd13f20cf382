#!/usr/bin/env python3
"""Fails when the files of a crate import each other in a circle.

For every crate named on the command line (a directory holding src/lib.rs or src/main.rs),
this reads each .rs file's paths into the crate (`use crate::..`, `use super::..`, `use
self::..`, a child module's name in a `use`, and `crate::..`/`super::..` paths in code),
resolves each to the file that defines the module it names (following `pub use`
re-exports, so `crate::Thing` re-exported by lib.rs counts as the file that defines it),
and looks for strongly connected components in the file graph. `mod x;` declarations are
not edges: a parent that declares a child does not depend on it. Any component of two or
more files is printed with the edges that make it, and the script exits 1.

Run it as `python3 .ci/import-cycles.py actors jobs cli runtime`.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(text):
    """Blank out comments, strings and chars, keeping line breaks and offsets."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not re.match(r"\w", text[i - 1])):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_tree(tree):
    """`a::{b, c::{d, e}}` -> [[a, b], [a, c, d], [a, c, e]] (aliases dropped)."""
    tree = re.sub(r"\s+", "", tree)

    def parse(s, pos):
        # returns (list of paths, new pos)
        prefix = []
        paths = []
        while pos < len(s):
            m = re.match(IDENT + "|\\*", s[pos:])
            if s[pos] == "{":
                pos += 1
                while True:
                    sub, pos = parse(s, pos)
                    paths.extend(prefix + p for p in sub)
                    if pos < len(s) and s[pos] == ",":
                        pos += 1
                        continue
                    if pos < len(s) and s[pos] == "}":
                        pos += 1
                    break
                return paths, pos
            elif m:
                prefix.append(m.group(0))
                pos += len(m.group(0))
                if s.startswith("as", pos) and prefix:
                    am = re.match("as" + IDENT, s[pos:]) or re.match("as_", s[pos:])
                    if am:
                        pos += len(am.group(0))
                if s.startswith("::", pos):
                    pos += 2
                    continue
                return [prefix], pos
            else:
                return ([prefix] if prefix else []), pos
        return ([prefix] if prefix else []), pos

    paths, _ = parse(tree, 0)
    return paths


class Crate:
    def __init__(self, root):
        self.root = root
        src = os.path.join(root, "src")
        self.files = {}  # module path tuple -> file
        for dirpath, _, names in os.walk(src):
            for name in names:
                if not name.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, src)[:-3].split(os.sep)
                if rel in (["lib"], ["main"]):
                    mod = ()
                elif rel[-1] == "mod":
                    mod = tuple(rel[:-1])
                else:
                    mod = tuple(rel)
                # a binary's other roots (src/bin/*) are left out
                if rel[0] == "bin":
                    continue
                self.files[mod] = path
        self.text = {m: strip(open(p, encoding="utf-8").read()) for m, p in self.files.items()}
        self.reexports = {m: {} for m in self.files}
        self.uses = {m: [] for m in self.files}
        for mod, text in self.text.items():
            self.scan(mod, text)

    def children(self, mod):
        return {m[-1] for m in self.files if len(m) == len(mod) + 1 and m[: len(mod)] == mod}

    def scan(self, mod, text):
        # inline modules: (start offset, end offset, name)
        inline = []
        for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", text):
            depth, j = 1, m.end()
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            inline.append((m.start(), j, m.group(1)))

        def scope(offset):
            path = list(mod)
            for start, end, name in inline:
                if start <= offset < end:
                    path.append("#" + name)  # an inline module: not a file of its own
            return path

        def absolute(path, offset, in_use):
            here = scope(offset)
            if path[0] == "crate":
                return path[1:]
            if path[0] == "self":
                return here + path[1:]
            if path[0] == "super":
                base = here
                while path and path[0] == "super":
                    base = base[:-1]
                    path = path[1:]
                return base + path
            if in_use:
                real = [p for p in here if not p.startswith("#")]
                if path[0] in self.children(tuple(real)):
                    return real + path
            return None

        for m in re.finditer(r"(?:\bpub(?:\([^)]*\))?\s+)?\buse\s+([^;]+);", text):
            public = m.group(0).lstrip().startswith("pub")
            for p in expand_tree(m.group(1)):
                if not p:
                    continue
                a = absolute(p, m.start(), True)
                if a is None:
                    continue
                a = [x for x in a if not x.startswith("#")]
                if public and p[-1] != "*" and not scope(m.start())[len(mod):]:
                    self.reexports[mod][p[-1]] = a
                self.uses[mod].append(a)
        uses_spans = [(m.start(), m.end()) for m in re.finditer(r"\buse\s+[^;]+;", text)]
        for m in re.finditer(r"(?<![\w:])((?:crate|super)(?:::" + IDENT + r")+)", text):
            if any(s <= m.start() < e for s, e in uses_spans):
                continue
            a = absolute(m.group(1).split("::"), m.start(), False)
            if a is not None:
                self.uses[mod].append([x for x in a if not x.startswith("#")])

    def resolve(self, path, seen=None):
        """The file module a path lands in, following re-exports."""
        seen = seen or set()
        best = ()
        for k in range(len(path), -1, -1):
            if tuple(path[:k]) in self.files:
                best = tuple(path[:k])
                break
        rest = path[len(best):]
        if rest and rest[0] in self.reexports.get(best, {}) and (best, rest[0]) not in seen:
            seen.add((best, rest[0]))
            return self.resolve(self.reexports[best][rest[0]] + rest[1:], seen)
        return best

    def graph(self):
        edges = {m: set() for m in self.files}
        for mod, uses in self.uses.items():
            for p in uses:
                target = self.resolve(p)
                if target != mod:
                    edges[mod].add(target)
        return edges


def sccs(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(roots):
    bad = 0
    for root in roots:
        crate = Crate(root)
        edges = crate.graph()
        for comp in sccs(edges):
            if len(comp) < 2:
                continue
            bad += 1
            members = set(comp)
            print(f"{root}: import circle between {len(comp)} files:")
            for m in sorted(comp):
                for t in sorted(edges[m] & members):
                    print(f"  {crate.files[m]} -> {crate.files[t]}")
        n = sum(len(v) for v in edges.values())
        print(f"{root}: {len(crate.files)} files, {n} imports between them")
    if bad:
        print(f"{bad} import circle(s): break them (move the shared item down a layer)")
        return 1
    print("no import circles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["runtime", "jobs", "actors", "cli"]))

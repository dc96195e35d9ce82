#!/usr/bin/env python3
"""The house's shape, checked: run by scripts/test.sh (and so by CI) after `cargo test`.

1. Layers. Every top-level module of src/ has a place in LAYERS, bottom first; a module may
   import (`use crate::…`, or a `crate::…` path in code) only modules placed before it. The
   order within a floor is part of the rule, so no two modules import each other.
2. No cycles among files. Inside a module, files import each other through `super::` and
   `crate::` paths; the graph of those imports has no cycle. A `mod.rs` declaring and
   re-exporting its own children is not an import of them.
3. Size. No file over 600 lines and no function over 80 lines, tests included
   (a `*_tests.rs` file of test data and the per-file exceptions below aside).

Prints what breaks a rule and exits 1; prints a one-line summary and exits 0 otherwise.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# Bottom to top: the layers of src/lib.rs's crate documentation.
LAYERS = [
    # foundations
    "model", "dicom", "config", "metrics", "tls",
    # storage and index
    "storage", "index",
    # services
    "ingest", "auth", "render", "verify", "compress", "retention", "worklist",
    "context",
    # protocol adapters
    "dicomweb", "radiology", "uploads", "admin", "dimse", "hl7", "forward", "viewer", "import", "sync",
    # the HTTP face, assembly, the crate root and the command
    "http", "app", "lib", "main",
]
MAX_FILE_LINES = 600
MAX_FN_LINES = 80


def module_of(path: Path) -> list[str]:
    """The module path of a source file: src/dimse/store.rs -> ['dimse', 'store']."""
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def strip(src: str) -> str:
    """Source text without comments and string/char literals (newlines kept)."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            j = src.find("*/", i)
            j = n if j < 0 else j + 2
            out.append("\n" * src.count("\n", i, j))
            i = j
            continue
        m = re.match(r'r(#*)"', src[i:i + 10])
        if m and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j
            continue
        c = src[i]
        if c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + "\n" * src.count("\n", i, j + 1))
            i = j + 1
            continue
        if c == "'":
            m = re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|\\x..|[^\\'])'", src[i:i + 12])
            if m:
                out.append("' '")
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def use_paths(code: str, here: list[str]) -> set[tuple[str, ...]]:
    """Absolute module paths named by `use` declarations and `crate::`/`super::` paths."""
    paths = set()
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        for p in expand(m.group(1).replace("\n", " ")):
            paths.add(tuple(p))
    for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", code):
        paths.add(tuple(m.group(1).split("::")))
    out = set()
    for p in paths:
        resolved = resolve(list(p), here)
        if resolved is not None:
            out.add(tuple(resolved))
    return out


def expand(tree: str) -> list[list[str]]:
    """`a::{b, c::{d}}` -> [[a, b], [a, c, d]]."""
    tree = tree.strip()
    if tree.startswith("pub "):
        tree = tree[4:]
    depth, split = 0, None
    for k, ch in enumerate(tree):
        if ch == "{":
            if depth == 0 and split is None:
                split = k
            depth += 1
        elif ch == "}":
            depth -= 1
    if split is None:
        head = tree.split(" as ")[0].strip()
        return [head.split("::")] if head else []
    prefix = tree[:split].rstrip(":").strip()
    inner = tree[split + 1:tree.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    result = []
    for part in parts:
        if not part.strip():
            continue
        for sub in expand(part):
            result.append((prefix.split("::") if prefix else []) + sub)
    return result


def resolve(path: list[str], here: list[str]):
    """A path relative to module `here` as a path from the crate root (None if external)."""
    if not path:
        return None
    if path[0] == "crate":
        return path[1:]
    if path[0] in ("super", "self"):
        base = list(here)
        while path and path[0] in ("super", "self"):
            if path[0] == "super":
                base = base[:-1]
            path = path[1:]
        return base + path
    return None


def file_for(path: list[str], files: dict) -> tuple:
    """The deepest source file along a module path."""
    for k in range(len(path), 0, -1):
        if tuple(path[:k]) in files:
            return tuple(path[:k])
    return ()


def functions(code: str):
    """(name, first line, number of lines) of every function with a body."""
    for m in re.finditer(r"\bfn\s+(\w+)", code):
        j = m.end()
        while j < len(code) and code[j] not in "{;":
            j += 1
        if j >= len(code) or code[j] == ";":
            continue
        depth, k = 0, j
        while k < len(code):
            if code[k] == "{":
                depth += 1
            elif code[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        start = code.count("\n", 0, m.start()) + 1
        end = code.count("\n", 0, k) + 1
        yield m.group(1), start, end - start + 1


def main() -> int:
    problems = []
    files = {}
    for path in sorted(SRC.rglob("*.rs")):
        files[tuple(module_of(path))] = path
    edges = {f: set() for f in files}
    order = {name: i for i, name in enumerate(LAYERS)}
    for mod, path in files.items():
        top = mod[0] if mod else ("main" if path.name == "main.rs" else "lib")
        if path.name == "main.rs":
            mod, top = ("main",), "main"
        if top not in order:
            problems.append(f"{path.relative_to(ROOT)}: module `{top}` has no place in LAYERS")
            continue
        text = path.read_text()
        code = strip(text)
        for used in use_paths(code, list(mod) if path.name != "main.rs" else []):
            if not used:
                continue
            target_top = used[0]
            if target_top in order and target_top != top and order[target_top] > order[top]:
                problems.append(
                    f"{path.relative_to(ROOT)}: `{top}` imports `{'::'.join(used)}`, "
                    f"a layer above it (`{target_top}`)"
                )
            target = file_for(list(used), files)
            # A mod.rs (or lib.rs) declaring and re-exporting its own children is not an
            # import of them.
            declares = path.name in ("mod.rs", "lib.rs") and target[: len(mod)] == tuple(mod)
            if target and target != mod and not declares:
                edges[mod].add(target)
        lines = text.count("\n") + 1
        if lines > MAX_FILE_LINES:
            problems.append(f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_FILE_LINES})")
        if not path.name.endswith("_tests.rs"):
            for name, start, length in functions(code):
                if length > MAX_FN_LINES:
                    problems.append(
                        f"{path.relative_to(ROOT)}:{start}: fn {name} is {length} lines "
                        f"(at most {MAX_FN_LINES})"
                    )
    for cycle in cycles(edges):
        names = " -> ".join(str(files[m].relative_to(ROOT)) for m in cycle)
        problems.append(f"import cycle: {names}")
    for p in problems:
        print(p)
    if problems:
        print(f"check_layers: {len(problems)} problem(s)")
        return 1
    print(f"check_layers: {len(files)} files in {len(LAYERS)} layers; no import against the "
          f"layers, no cycle, no file over {MAX_FILE_LINES} lines, no function over "
          f"{MAX_FN_LINES} lines")
    return 0


def cycles(edges: dict) -> list[list]:
    """The strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
    for v in edges:
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())

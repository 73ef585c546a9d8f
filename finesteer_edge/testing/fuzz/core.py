"""What every fuzzed format shares: byte and JSON edits, value tables, the pickle payload, hypothesis strategies.

A mutation is a small printable tuple (``("flip", pos, bit)``, ``("replace", path, value)``...), so a failing
case shrinks to a readable example; integer parameters are taken modulo what they index, so any tuple
applies to any input. Hypothesis is imported lazily (:func:`strategies`): it is a dev dependency.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np


def apply_byte_mutations(data: bytes, muts: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """``("flip", pos, bit)``, ``("set", pos, byte)``, ``("truncate", n)``, ``("insert", pos, bytes)``,
    ``("delete", pos, n)``, ``("dup", pos, n)``; positions wrap around the current length."""
    buf = bytearray(data)
    for m in muts:
        kind = m[0]
        n = len(buf)
        if kind == "truncate":
            del buf[m[1] % (n + 1):]
        elif n == 0:
            continue
        elif kind == "flip":
            buf[m[1] % n] ^= 1 << (m[2] % 8)
        elif kind == "set":
            buf[m[1] % n] = m[2] & 0xFF
        elif kind == "insert":
            p = m[1] % (n + 1)
            buf[p:p] = m[2]
        elif kind == "delete":
            p = m[1] % n
            del buf[p : p + m[2]]
        elif kind == "dup":
            p = m[1] % n
            buf[p:p] = buf[p : p + m[2]]
    return bytes(buf)


class RawJSON:
    """A manifest value written verbatim (huge integers, NaN, deep nesting: things json.dumps refuses)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"RawJSON({self.text[:40]!r}{'...' if len(self.text) > 40 else ''})"


def dump_manifest(doc: Any, indent: int | None = 1) -> bytes:
    """``doc`` as JSON with :class:`RawJSON` values spliced in verbatim (``indent=None``: one line, for JSONL)."""
    raws: list[str] = []

    def swap(x: Any) -> Any:
        if isinstance(x, RawJSON):
            raws.append(x.text)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(x, dict):
            return {k: swap(v) for k, v in x.items()}
        if isinstance(x, list):
            return [swap(v) for v in x]
        return x

    text = json.dumps(swap(doc), indent=indent)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', raw)
    return text.encode("utf-8", errors="surrogatepass")


def _walk(doc: Any, path: tuple) -> Any:  # type: ignore[type-arg]
    for k in path:
        doc = doc[k]
    return doc


def apply_manifest_mutations(doc: dict[str, Any], muts: list[tuple]) -> Any:  # type: ignore[type-arg]
    """``("delete", path)``, ``("replace", path, value)``, ``("add", path, key, value)``; path () is the root."""
    doc = copy.deepcopy(doc)
    for m in muts:
        kind, path = m[0], m[1]
        try:
            if kind == "replace" and not path:
                doc = m[2]
                continue
            if kind == "add":
                target = _walk(doc, path)
                if isinstance(target, dict):
                    target[m[2]] = m[3]
                continue
            parent = _walk(doc, path[:-1])
            if kind == "delete":
                del parent[path[-1]]
            elif kind == "replace":
                parent[path[-1]] = m[2]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the path: nothing to do
    return doc


INTERESTING_FLOATS = (float("nan"), float("inf"), float("-inf"), -1.0, 0.0, -0.0, 1e-45, 1e38, -1e-5, 1e30, 5e-324)


def strategies():  # type: ignore[no-untyped-def]
    """Hypothesis strategies (imported lazily: hypothesis is a dev dependency)."""
    from hypothesis import strategies as st

    ints = st.integers(min_value=0, max_value=1 << 20)
    byte_mut = st.one_of(
        st.tuples(st.just("flip"), ints, st.integers(0, 7)),
        st.tuples(st.just("set"), ints, st.sampled_from([0, 0xFF, 0x7F, 0x80, 0x01, 0x3F])),
        st.tuples(st.just("truncate"), ints),
        st.tuples(st.just("insert"), ints, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), ints, st.integers(1, 64)),
        st.tuples(st.just("dup"), ints, st.integers(1, 64)),
    )
    byte_muts = st.lists(byte_mut, min_size=1, max_size=4)
    json_leaf = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
        st.sampled_from([0, -1, 1, 2, 3, 4096, 65536, 1 << 31, 1 << 63, 1 << 64, 10**30, 1e308, -0.0, 0.5, "",
                         "../head.onnx", "/etc/passwd", "head.onnx", "x" * 5000, "\ud800", [], {}]),
        st.sampled_from([RawJSON("1" * 5000), RawJSON("1e999"), RawJSON("-1e999"), RawJSON("NaN"),
                         RawJSON("Infinity"), RawJSON("-Infinity"), RawJSON("[" * 5000 + "]" * 5000),
                         RawJSON('{"a":' * 3000 + "1" + "}" * 3000), RawJSON("1E400"), RawJSON('"\\ud800"'),
                         RawJSON("[" * 500 + "]" * 500), RawJSON("123456789012345678901234567890")]),
    )
    json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                               max_size=3),
                              max_leaves=6)
    return st, byte_muts, json_value


def tuple_muts(kinds: tuple[str, ...], max_size: int = 3, min_size: int = 1):  # type: ignore[no-untyped-def]
    """Lists of ``(kind, a, b)`` mutations drawn from ``kinds``, small integer parameters."""
    st = strategies()[0]
    small = st.integers(0, 1 << 16)
    return st.lists(st.tuples(st.sampled_from(kinds), small, small), min_size=min_size, max_size=max_size)


def json_mut(doc: Any):  # type: ignore[no-untyped-def]
    """One edit of the JSON document ``doc`` (see :func:`apply_manifest_mutations`) at one of its key paths."""
    st, _, json_value = strategies()
    paths = manifest_paths(doc)
    return st.one_of(
        st.tuples(st.just("delete"), st.sampled_from(paths)),
        st.tuples(st.just("replace"), st.sampled_from(paths), json_value),
        st.tuples(st.just("add"), st.sampled_from(paths), st.text(max_size=8), json_value),
    )


def manifest_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:  # type: ignore[type-arg]
    """Every key path of the base manifest (the root included)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += manifest_paths(v, (*prefix, k))
    return out


MARKER = "PAYLOAD-RAN"
"""File a malicious pickle in a generated case would create; its existence after a case is a failure."""
TENSOR_VALUES = INTERESTING_FLOATS + (3e38, -3e38, 1e20, 65504.0, 1e-30)


def odd_shape(arr: np.ndarray, choice: int, d: int) -> np.ndarray:
    """Shapes a loader must not take for granted (wrong rank, zero size, wrong width, huge-ish)."""
    s = arr.shape
    flat = arr.reshape(-1)
    opts = [
        lambda: arr.T if arr.ndim >= 2 else arr.reshape(1, -1),    # transposed
        lambda: arr.reshape((1, *s)),                              # extra leading dim
        lambda: flat,                                              # flattened
        lambda: arr[0] if arr.ndim >= 1 and s[0] > 0 else arr,     # one rank less
        lambda: np.zeros((0, *s[1:])),                             # zero rows
        lambda: flat[:1].reshape(()),                              # scalar
        lambda: np.concatenate([arr, arr]) if arr.ndim >= 1 else flat,  # twice the rows
        lambda: arr[: max(1, s[0] // 2)] if arr.ndim >= 1 else arr,    # half the rows
        lambda: np.pad(arr, [(0, 0)] * (arr.ndim - 1) + [(0, 1)]) if arr.ndim >= 1 else arr,  # one column more
        lambda: np.zeros((d, d, 2)),                               # rank 3
        lambda: np.zeros((s[0] if arr.ndim else 1, 1)),            # width 1
        lambda: np.zeros((4096, d)),                               # big but honest
    ]
    return opts[choice % len(opts)]()


class Payload:
    """Unpickling an instance calls ``open(path, "w")``: a marker file appearing means code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def fresh_dir(dest: Path) -> None:
    """Empty ``dest`` (a directory, a file or a symlink) and create it as a directory."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)

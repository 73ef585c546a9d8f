"""``.npy`` files with lying headers, object dtypes (a code-running pickle inside) and odd dtypes.

Official FineSteer bank files (prototypes, basis) may come as ``.npy``; the importer must read them with
``allow_pickle=False`` and check the header against the data.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from .core import TENSOR_VALUES, Payload, odd_shape

NPY_MUTATIONS = ("object", "header_shape", "header_descr", "fortran", "version", "header_text", "values",
                 "shape_real", "dtype_real", "truncate_data")
_NPY_SHAPES = ((1 << 40,), (1 << 28, 32), (), (0,), (-1, 32), (5, 32, 2), (1 << 62, 1 << 62), (3,), (32,))
_NPY_DESCR = ("<f8", "<f2", "|O", "<U4", "|S8", "<M8[s]", "<c16", ">f4", "|b1", [("a", "<f4")], "|V8", "<m8[s]",
              "foo", "<i8", "|u1")
_NPY_TEXT = ("{}", "{'descr': '<f4'}", "[]", "{'descr': '<f4', 'fortran_order': False, 'shape': (1 << 62,)}",
             "__import__('os').system('touch x')", "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 32)}"
             + " " * 70000, "{'descr': '<f4', 'fortran_order': 'yes', 'shape': (5, 32), }",
             "{'descr': '<f4', 'fortran_order': False, 'shape': [5, 32], }", "", "\x00")


def _npy_bytes(header: str | bytes, data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    raw = header.encode("latin1") if isinstance(header, str) else header
    pre = b"\x93NUMPY" + bytes(version)
    pad = -(len(pre) + (2 if version[0] == 1 else 4) + len(raw) + 1) % 64
    raw = raw + b" " * pad + b"\n"
    lenfield = struct.pack("<H", len(raw) & 0xFFFF) if version[0] == 1 else struct.pack("<I", len(raw))
    return pre + lenfield + raw + data


def build_npy_case(arr: np.ndarray, muts: list[tuple], marker: Path) -> bytes:  # type: ignore[type-arg]
    """An .npy file from ``arr`` with structural lies in its header or data (never an unpickle here)."""
    import io

    arr = np.asarray(arr, dtype="<f4")
    descr: Any = "<f4"
    shape: Any = arr.shape
    fortran: Any = False
    version = (1, 0)
    text: str | None = None
    data = arr.tobytes()
    for mut in muts:
        kind, a, b = (tuple(mut) + (0, 0))[:3]
        if kind == "object":
            obj = np.empty(3, dtype=object)
            obj[:] = [Payload(str(marker)), 1.0, "x"] if a % 2 == 0 else [1.0, 2.0, 3.0]
            buf = io.BytesIO()
            np.save(buf, obj, allow_pickle=True)
            return buf.getvalue()
        if kind == "header_shape":
            shape = _NPY_SHAPES[a % len(_NPY_SHAPES)]
        elif kind == "header_descr":
            descr = _NPY_DESCR[a % len(_NPY_DESCR)]
        elif kind == "fortran":
            fortran = True
        elif kind == "version":
            version = ((1, 0), (2, 0), (3, 0), (9, 9))[a % 4]
        elif kind == "header_text":
            text = _NPY_TEXT[a % len(_NPY_TEXT)]
        elif kind == "values":
            v = arr.copy()
            v.flat[b % max(v.size, 1)] = TENSOR_VALUES[a % len(TENSOR_VALUES)]
            data = v.tobytes()
        elif kind == "shape_real":
            v = odd_shape(arr.astype(np.float64), a, arr.shape[-1] if arr.ndim else 1).astype("<f4")
            shape, data = v.shape, v.tobytes()
        elif kind == "dtype_real":
            choice = ("<f8", "<i8", "|b1", "<c8", "<f2", "<U3", "<M8[s]")[a % 7]
            with np.errstate(all="ignore"):
                v = arr.astype(choice) if choice[1] not in "UM" else np.full(arr.shape, "1", dtype=choice)
            descr, shape, data = v.dtype.str, v.shape, v.tobytes()
        elif kind == "truncate_data":
            data = data[: (len(data) * (a % 4)) // 4]
    if text is None:
        text = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape) if isinstance(shape, tuple)
                     else shape})
    return _npy_bytes(text, data, version)

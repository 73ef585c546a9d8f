"""Symbols of the pinned llama.cpp that llama-cpp-python does not wrap (or wraps under moving names).

Everything version-dependent lives here, so a llama-cpp-python upgrade is one file to re-check:
- the control-vector setter (``llama_set_adapter_cvec``, formerly ``llama_apply_adapter_cvec`` and
  ``llama_control_vector_apply``);
- the experimental per-layer hidden-state taps ``llama_{set,get}_embeddings_layer_inp``, exported only
  under their C++ mangled names;
- ggml's tensor accessors for the ``cb_eval`` fallback tap.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import llama_cpp

PINNED_LLAMA_CPP_PYTHON = "0.3.36"

log = logging.getLogger("finesteer_edge.llama")

CvecSetter = Callable[..., int]


def llama_cpp_version() -> str:
    return str(getattr(llama_cpp, "__version__", "unknown"))


def _lib() -> ctypes.CDLL:
    return llama_cpp.llama_cpp._lib  # type: ignore[attr-defined,no-any-return]


@cache
def backend_init() -> None:
    """Initialise the ggml backend once per process and route llama.cpp's log to ``logging``."""
    llama_cpp.llama_backend_init()
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line).
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = [logging.DEBUG]


@llama_cpp.llama_log_callback
def _LOG_CALLBACK(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:  # noqa: N802
    # llama.cpp logs loudly at load; keep it in the logging tree (shown with -v), never on stdout.
    try:
        py_level = _last_level[0] if level == 5 else _GGML_LEVELS.get(level, logging.DEBUG)
        _last_level[0] = py_level
        msg = text.decode("utf-8", errors="replace").rstrip()
        if msg and log.isEnabledFor(py_level):
            log.log(py_level, msg)
    except Exception:  # pragma: no cover - a log line must never raise into C
        return


@cache
def cvec_setter() -> tuple[str, CvecSetter]:
    """The control-vector setter of this llama.cpp build and the name it goes by."""
    lib = _lib()
    for name in ("llama_set_adapter_cvec", "llama_apply_adapter_cvec", "llama_control_vector_apply"):
        try:
            fn = getattr(lib, name)
        except AttributeError:
            continue
        fn.argtypes = [
            llama_cpp.llama_context_p_ctypes, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
            ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
        ]
        fn.restype = ctypes.c_int32
        return name, fn
    raise RuntimeError("this llama.cpp build exports no control-vector setter")


@dataclass(frozen=True)
class LayerInpApi:
    set: Callable[..., None]
    get: Callable[..., ctypes._Pointer]  # type: ignore[type-arg]


_SET_LAYER_INP = ("llama_set_embeddings_layer_inp", "_Z30llama_set_embeddings_layer_inpP13llama_contextjb")
_GET_LAYER_INP = ("llama_get_embeddings_layer_inp", "_Z30llama_get_embeddings_layer_inpP13llama_contextj")


@cache
def layer_inp_api() -> LayerInpApi | None:
    """The experimental layer-input taps, or None when this build does not export them."""
    lib = _lib()

    def find(names: tuple[str, ...]):  # type: ignore[no-untyped-def]
        for n in names:
            try:
                return getattr(lib, n)
            except AttributeError:
                continue
        return None

    set_fn, get_fn = find(_SET_LAYER_INP), find(_GET_LAYER_INP)
    if set_fn is None or get_fn is None:
        return None
    set_fn.argtypes = [llama_cpp.llama_context_p_ctypes, ctypes.c_uint32, ctypes.c_bool]
    set_fn.restype = None
    get_fn.argtypes = [llama_cpp.llama_context_p_ctypes, ctypes.c_uint32]
    get_fn.restype = ctypes.POINTER(ctypes.c_float)
    return LayerInpApi(set=set_fn, get=get_fn)


@dataclass(frozen=True)
class GgmlApi:
    get_name: Callable[..., bytes]
    nbytes: Callable[..., int]
    nrows: Callable[..., int]
    get_type: Callable[..., int]
    tensor_get: Callable[..., None]


@cache
def ggml_api() -> GgmlApi | None:
    """ggml tensor accessors from ``libggml-base`` for the ``cb_eval`` tap (None if not found)."""
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("ggml-base.*"))
    for cand in candidates:
        try:
            g = ctypes.CDLL(str(cand))
        except OSError:
            continue
        try:
            g.ggml_get_name.argtypes = [ctypes.c_void_p]
            g.ggml_get_name.restype = ctypes.c_char_p
            g.ggml_nbytes.argtypes = [ctypes.c_void_p]
            g.ggml_nbytes.restype = ctypes.c_size_t
            g.ggml_nrows.argtypes = [ctypes.c_void_p]
            g.ggml_nrows.restype = ctypes.c_int64
            g.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
            g.ggml_backend_tensor_get.restype = None
            # ggml_tensor starts with `enum ggml_type type;`: read it through a pointer cast.
            def get_type(t: int) -> int:
                return ctypes.cast(t, ctypes.POINTER(ctypes.c_int32))[0]

            return GgmlApi(g.ggml_get_name, g.ggml_nbytes, g.ggml_nrows, get_type, g.ggml_backend_tensor_get)
        except AttributeError:
            continue
    return None

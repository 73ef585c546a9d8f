"""GGUF as editable data, and its mutations: control vectors (``control.gguf``) and model headers.

:class:`GGUFSpec` holds typed metadata and tensors and is written back byte by byte (:func:`encode_gguf`),
so a mutation can be semantic (a NaN epsilon, a wrong dtype, a lying count or offset) rather than only
random bits. The value-type numbers are the reader's own (``finesteer_edge/gguf_file.py``); the
encoder's struct formats differ on purpose for BOOL (``<B``: it must be able to write a 2).
"""

from __future__ import annotations

import copy
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...gguf_file import ARR, BOOL, F32, F64, I8, I16, I32, I64, STR, U8, U16, U32, U64, parse_gguf_bytes
from .core import INTERESTING_FLOATS, apply_byte_mutations, strategies, tuple_muts

# The reader's value-type numbers: one definition, in gguf_file.py.
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B", U64: "<Q",
        I64: "<q", F64: "<d"}


@dataclass
class KV:
    key: str
    vtype: int
    value: Any
    etype: int = -1
    """Element type when ``vtype`` is ARR (elements of an ARR-of-ARR are ``(etype, list)`` pairs)."""


@dataclass
class TensorSpec:
    name: str
    dims: tuple[int, ...]
    """GGUF order (ne0 first)."""
    ggml_type: int
    data: bytes


@dataclass
class GGUFSpec:
    kvs: list[KV]
    tensors: list[TensorSpec]
    version: int = 3
    alignment: int = 32

    def copy(self) -> GGUFSpec:
        return copy.deepcopy(self)

    def find(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def set(self, key: str, vtype: int, value: Any, etype: int = -1) -> None:
        kv = self.find(key)
        if kv is None:
            self.kvs.append(KV(key, vtype, value, etype))
        else:
            kv.vtype, kv.value, kv.etype = vtype, value, etype

    def remove(self, key: str) -> None:
        self.kvs = [kv for kv in self.kvs if kv.key != key]


def spec_from_file(path: str | Path) -> GGUFSpec:
    """Read a GGUF (small ones: uses gguf.GGUFReader) into an editable spec."""
    import gguf

    r = gguf.GGUFReader(str(path))
    kvs = []
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        types = [int(t) for t in f.types]
        value = f.contents()
        kvs.append(KV(key, types[0], value, types[1] if len(types) > 1 else -1))
    raw = Path(path).read_bytes()
    tensors = [TensorSpec(t.name, tuple(int(x) for x in t.shape), int(t.tensor_type),
                          raw[t.data_offset : t.data_offset + t.n_bytes]) for t in r.tensors]
    return GGUFSpec(kvs=kvs, tensors=tensors, version=3, alignment=int(r.alignment))


def _enc_str(s: Any) -> bytes:
    b = s if isinstance(s, bytes) else str(s).encode("utf-8", errors="surrogatepass")
    return struct.pack("<Q", len(b)) + b


def _enc_value(vtype: int, value: Any, etype: int = -1) -> bytes:
    if vtype == STR:
        return _enc_str(value)
    if vtype == ARR:
        items = list(value) if isinstance(value, (list, tuple, bytes)) else [value]
        out = [struct.pack("<IQ", etype, len(items))]
        for item in items:
            if etype == ARR:
                inner_type, inner = item if isinstance(item, tuple) and len(item) == 2 else (U8, [])
                out.append(_enc_value(ARR, inner, inner_type))
            else:
                out.append(_enc_value(etype, item))
        return b"".join(out)
    if vtype in _FMT:
        fmt = _FMT[vtype]
        if vtype in (F32, F64):
            try:
                return struct.pack(fmt, float(value))
            except (TypeError, ValueError, OverflowError):
                return struct.pack(fmt, 0.0)
        bits = struct.calcsize(fmt) * 8
        v = _coerce(value, vtype)
        v = v & ((1 << bits) - 1) if fmt[1].isupper() else ((v + (1 << (bits - 1))) % (1 << bits)) - (1 << (bits - 1))
        return struct.pack(fmt, v)
    return b""  # an unknown type: the reader must refuse it (no payload written)


def encode_gguf(spec: GGUFSpec, *, n_tensors: int | None = None, n_kv: int | None = None,
                offsets: dict[int, int] | None = None) -> bytes:
    """Serialise ``spec``; the keyword arguments let a mutation lie about counts and offsets."""
    align = spec.alignment if spec.alignment > 0 else 32
    out = [b"GGUF", struct.pack("<I", spec.version & 0xFFFFFFFF),
           struct.pack("<QQ", (len(spec.tensors) if n_tensors is None else n_tensors) & (2**64 - 1),
                       (len(spec.kvs) if n_kv is None else n_kv) & (2**64 - 1))]
    for kv in spec.kvs:
        out += [_enc_str(kv.key), struct.pack("<I", kv.vtype & 0xFFFFFFFF), _enc_value(kv.vtype, kv.value, kv.etype)]
    data_offsets = []
    pos = 0
    for t in spec.tensors:
        data_offsets.append(pos)
        pos += (len(t.data) + align - 1) // align * align
    for i, t in enumerate(spec.tensors):
        off = (offsets or {}).get(i, data_offsets[i])
        out += [_enc_str(t.name), struct.pack("<I", len(t.dims)),
                b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in t.dims),
                struct.pack("<IQ", t.ggml_type & 0xFFFFFFFF, off & (2**64 - 1))]
    head = b"".join(out)
    head += b"\0" * (-len(head) % align)
    body = b"".join(t.data + b"\0" * (-len(t.data) % align) for t in spec.tensors)
    return head + body


GGUF_MUTATIONS = ("kv_value", "kv_type", "kv_delete", "kv_add", "kv_str", "kv_dup", "tensor_type", "tensor_dims",
                  "tensor_name", "tensor_drop", "tensor_dup", "tensor_data", "tensor_values", "version",
                  "alignment", "lie_counts", "lie_offset", "tokens", "token_ids")
_INTERESTING_INTS = (0, 1, -1, 2, 3, 7, 255, 256, 65535, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 62, (1 << 64) - 1,
                     -(1 << 63), 100_000, 10**9)
_STRINGS = ("", "llama", "gpt2", "controlvector", "evil", "bert", "qwen3", "x" * 1000, "\udcff", "{{ 1/0 }}",
            "{% for x in range(10**9) %}x{% endfor %}", "{{ ''.__class__.__mro__ }}", "{% raw %}", "direction.1",
            "t5", "rwkv", "plamo2", "no_vocab", "llama3", "smollm")
_TENSOR_NAMES = ("direction.0", "direction.1", "direction.2", "direction.3", "direction.99", "direction.-1",
                 "direction.1x", "direction.00002", "foo", "", "direction." + "9" * 7, "token_embd.weight",
                 "blk.0.attn_q.weight", "output.weight", "x" * 70000)


def apply_gguf_mutations(data: bytes, muts: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """Semantic GGUF edits: ``(kind, a, b)`` tuples, integer parameters chosen modulo what they index."""
    spec = parse_spec_bytes(data)
    lie: dict[str, Any] = {}
    for mut in muts:
        try:
            _gguf_mutation(spec, lie, *mut)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError):
            continue  # an earlier mutation left nothing this one can apply to
    return encode_gguf(spec, n_tensors=lie.get("n_tensors"), n_kv=lie.get("n_kv"), offsets=lie.get("offsets"))


def _gguf_mutation(spec: GGUFSpec, lie: dict[str, Any], kind: str, a: int, b: int) -> None:
    kvs, tensors = spec.kvs, spec.tensors
    if kind == "kv_value" and kvs:
        kv = kvs[a % len(kvs)]
        if kv.vtype in (F32, F64):
            kv.value = INTERESTING_FLOATS[b % len(INTERESTING_FLOATS)]
        elif kv.vtype == STR:
            kv.value = _STRINGS[b % len(_STRINGS)]
        elif kv.vtype == BOOL:
            kv.value = b % 3
        elif kv.vtype == ARR:
            items = list(kv.value)
            kv.value = (items[: b % (len(items) + 1)], items + items[: b % 7 + 1], [], items[::-1])[b % 4]
        else:
            kv.value = _INTERESTING_INTS[b % len(_INTERESTING_INTS)]
    elif kind == "kv_type" and kvs:
        kv = kvs[a % len(kvs)]
        new = b % 14
        if new == ARR:
            kv.vtype, kv.etype, kv.value = ARR, (U32, STR, F32, ARR, 13)[b % 5], []
        elif new == STR:
            kv.vtype, kv.value = STR, str(kv.value)[:50]
        elif new == 13:
            kv.vtype = 13  # unknown value type
        else:
            kv.vtype = new
            kv.value = _coerce(kv.value, new)
    elif kind == "kv_delete" and kvs:
        del kvs[a % len(kvs)]
    elif kind == "kv_add":
        key = ("general.alignment", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
               "llama.expert_count", "llama.attention.key_length", "llama.rope.scaling.factor",
               "tokenizer.ggml.scores", "tokenizer.ggml.unknown_token_id", "llama.vocab_size",
               "controlvector.layer_count", "general.architecture", "llama.rope.scaling.type",
               "llama.attention.value_length", "llama.embedding_length_per_layer_input",
               "llama.expert_used_count", "llama.expert_group_count", "llama.expert_group_used_count",
               "llama.nextn_predict_layers", "llama.attention.sliding_window", "llama.logit_scale")[a % 20]
        value = (_INTERESTING_INTS + INTERESTING_FLOATS)[b % (len(_INTERESTING_INTS) + len(INTERESTING_FLOATS))]
        spec.set(key, F32 if isinstance(value, float) else U32, value)
    elif kind == "kv_str":
        key = ("llama.rope.scaling.type", "tokenizer.ggml.model", "tokenizer.ggml.pre", "general.architecture",
               "tokenizer.chat_template", "controlvector.model_hint", "general.name")[a % 7]
        spec.set(key, STR, _STRINGS[b % len(_STRINGS)])
    elif kind == "kv_dup" and kvs:
        kvs.append(copy.deepcopy(kvs[a % len(kvs)]))
    elif kind == "tensor_type" and tensors:
        tensors[a % len(tensors)].ggml_type = (1, 2, 8, 12, 30, 39, 40, 100, (1 << 32) - 1, 0)[b % 10]
    elif kind == "tensor_dims" and tensors:
        t = tensors[a % len(tensors)]
        d = list(t.dims) or [1]
        t.dims = tuple((d[::-1], d + [1], d + [2], [d[0] + 1, *d[1:]], [0], [], [1 << 40],
                        [(1 << 62), 4], [1] * 5, [d[0] // 2, *d[1:]])[b % 10])
    elif kind == "tensor_name" and tensors:
        tensors[a % len(tensors)].name = _TENSOR_NAMES[b % len(_TENSOR_NAMES)]
    elif kind == "tensor_drop" and tensors:
        del tensors[a % len(tensors)]
    elif kind == "tensor_dup" and tensors:
        tensors.append(copy.deepcopy(tensors[a % len(tensors)]))
    elif kind == "tensor_data" and tensors:
        t = tensors[a % len(tensors)]
        t.data = (t.data[: len(t.data) // 2], t.data + b"\0" * 64, b"", t.data[:3])[b % 4]
    elif kind == "tensor_values" and tensors:
        t = tensors[a % len(tensors)]
        if t.ggml_type == 0 and len(t.data) >= 4:
            val = struct.pack("<f", INTERESTING_FLOATS[b % len(INTERESTING_FLOATS)])
            buf = bytearray(t.data)
            if b % 2:
                buf[:] = val * (len(buf) // 4)
            else:
                p = (b * 4) % len(buf) // 4 * 4
                buf[p : p + 4] = val
            t.data = bytes(buf)
    elif kind == "version":
        spec.version = (0, 1, 2, 4, 0xFFFFFFFF, 0x03000000)[a % 6]
    elif kind == "alignment":
        val = (0, 1, 3, 8, 64, 1 << 20, 1 << 40, -1)[a % 8]
        spec.set("general.alignment", (U32, U64, STR, F32)[b % 4], val if b % 4 != 2 else str(val))
    elif kind == "lie_counts":
        target = ("n_tensors", "n_kv")[a % 2]
        base = len(tensors) if target == "n_tensors" else len(kvs)
        lie[target] = (base + 1, base - 1, 0, 1 << 40, (1 << 64) - 1, base * 2)[b % 6]
    elif kind == "lie_offset" and tensors:
        lie.setdefault("offsets", {})[a % len(tensors)] = (1, 31, 1 << 20, (1 << 64) - 32, 0, 4096)[b % 6]
    elif kind == "tokens":
        kv = spec.find("tokenizer.ggml.tokens")
        if kv is not None:
            toks = list(kv.value)
            bad = [(t if isinstance(t, bytes) else str(t).encode()) + b"\xff" for t in toks[:5]]
            kv.value = (toks[:1], toks + ["<|extra|>"], [], toks[:-1], bad, toks[: len(toks) // 2],
                        ["" for _ in toks], toks[:-1] + toks[:1])[b % 8]
    elif kind == "token_ids":
        key = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
               "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id")[a % 5]
        spec.set(key, (U32, I32, U64, STR)[b % 4], (1 << 31, -1, 100_000, 269, 268, 0)[b % 6]
                 if b % 4 != 3 else "1")


def _coerce(value: Any, vtype: int) -> Any:
    if vtype in (F32, F64):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            return 0.0
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 1


def parse_spec_bytes(data: bytes) -> GGUFSpec:
    """A spec from a well-formed GGUF in memory (the base files, never mutated bytes)."""
    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        return spec_from_file(f.name)


@dataclass
class ModelCase:
    gguf_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    header_only: bool = True
    """Byte mutations hit the header (metadata and tensor directory), where parsers live."""


def model_cases():  # type: ignore[no-untyped-def]
    """Strategy of :class:`ModelCase`: semantic edits or byte edits (mostly of the header)."""
    st, byte_muts, _ = strategies()
    return st.one_of(
        st.builds(ModelCase, gguf_muts=tuple_muts(GGUF_MUTATIONS)),
        st.builds(ModelCase, bytes_muts=byte_muts, header_only=st.booleans()),
    )


def control_cases():  # type: ignore[no-untyped-def]
    """Strategy of control-vector cases: ``(gguf_muts, byte_muts)`` pairs."""
    st, byte_muts, _ = strategies()
    return st.one_of(st.tuples(tuple_muts(GGUF_MUTATIONS), st.just([])),
                     st.tuples(st.just([]), byte_muts),
                     st.tuples(tuple_muts(GGUF_MUTATIONS, 2, 0), byte_muts))


def build_model_case(base: bytes, header_len: int, case: ModelCase) -> bytes:
    data = apply_gguf_mutations(base, case.gguf_muts) if case.gguf_muts else base
    if case.bytes_muts:
        if case.header_only:
            head = apply_byte_mutations(data[:header_len], case.bytes_muts)
            data = head + data[header_len:]
        else:
            data = apply_byte_mutations(data, case.bytes_muts)
    return data


def gguf_header_len(data: bytes) -> int:
    """Where tensor data starts (end of the tensor directory, aligned), via our own reader."""
    g = parse_gguf_bytes(data)
    return min((t.offset for t in g.tensors), default=len(data))

"""The bounded GGUF reader: agrees with the gguf package, refuses broken files with one error type."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from finesteer_edge.errors import ModelFileError
from finesteer_edge.gguf_file import GGUFFormatError, parse_gguf_bytes, read_gguf
from finesteer_edge.model_info import read_model_info


def test_reader_matches_gguf_package(tiny_model: Path) -> None:
    ours = read_gguf(tiny_model)
    ref = gguf.GGUFReader(tiny_model)
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    assert ours.metadata["llama.block_count"] == 4
    assert ours.metadata["tokenizer.ggml.tokens"] == list(ref.fields["tokenizer.ggml.tokens"].contents())
    norm = next(t for t in ours.tensors if t.name == "output_norm.weight")
    ref_norm = next(t for t in ref.tensors if t.name == "output_norm.weight")
    np.testing.assert_array_equal(ours.read_f32(norm), np.asarray(ref_norm.data))


def test_fingerprint(tiny_model: Path, tiny_model_other: Path) -> None:
    a, b = read_model_info(tiny_model), read_model_info(tiny_model_other)
    assert (a.n_layer, a.n_embd, a.fingerprint.architecture) == (4, 256, "llama")
    assert a.fingerprint.mismatches(b.fingerprint) == ["n_embd 256 != 128"]
    assert a.chat_template and "<|im_start|>" in a.chat_template


@pytest.mark.parametrize("cut", [3, 20, 100, 5000])
def test_truncated_file_is_a_format_error(tiny_model: Path, cut: int) -> None:
    data = tiny_model.read_bytes()[:cut]
    with pytest.raises(GGUFFormatError):
        g = parse_gguf_bytes(data)
        for t in g.tensors:
            g.read_f32(t)


def test_not_gguf_is_a_model_file_error(tmp_path: Path) -> None:
    p = tmp_path / "model.gguf"
    p.write_text("this is not a model")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        read_model_info(p)
    with pytest.raises(ModelFileError, match="not found"):
        read_model_info(tmp_path / "missing.gguf")


def test_huge_counts_are_refused_before_allocation() -> None:
    import struct

    data = b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60) + b"\0" * 64
    with pytest.raises(GGUFFormatError, match="more than the file holds"):
        parse_gguf_bytes(data)

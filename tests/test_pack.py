"""Pack format: round trip, checksums, fingerprints, layers, path safety, control.gguf rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from finesteer_edge import SteeringPack
from finesteer_edge.converters.onnx_head import build_head_onnx
from finesteer_edge.errors import ChecksumError, LayerError, ModelMismatchError, PackFormatError
from finesteer_edge.model_info import read_model_info
from finesteer_edge.pack.control_vector import read_control_vector, write_control_vector
from finesteer_edge.testing.packs import make_random_pack, random_head


@pytest.fixture()
def pack_dir(tiny_model: Path, tmp_path: Path) -> Path:
    return make_random_pack(tiny_model, tmp_path / "pack", gate_layer=1, steer_layer=2, tau=0.3)


def rewrite_manifest(pack: Path, **changes: object) -> None:
    m = json.loads((pack / "manifest.json").read_text())
    for key, value in changes.items():
        target = m
        *path, last = key.split("__")
        for p in path:
            target = target[p]
        target[last] = value
    (pack / "manifest.json").write_text(json.dumps(m))


def test_round_trip_and_head_matches_numpy(pack_dir: Path, tiny_model: Path) -> None:
    pack = SteeringPack.load(pack_dir)
    pack.check_model(read_model_info(tiny_model))
    m = pack.manifest
    assert (m.gate_layer, m.steer_layer, m.tau, m.n_experts, m.basis_rank) == (1, 2, 0.3, 4, 3)
    head = random_head(256, n_experts=4, basis_rank=3, seed=0)
    rng = np.random.default_rng(5)
    for _ in range(5):
        hg, hs = rng.standard_normal(256).astype(np.float32) * 20, rng.standard_normal(256).astype(np.float32) * 20
        out = pack.evaluate(hg, hs)
        score, vec, w = head.forward(hg, hs)
        np.testing.assert_allclose(out.gate_score, score[0], rtol=1e-5)
        np.testing.assert_allclose(out.vector, vec[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.expert_weights, w[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["scs", "scs_logistic", "logistic", "always"])
def test_every_gate_kind_exports_exactly(kind: str) -> None:
    import onnxruntime as ort

    head = random_head(64, n_experts=3, basis_rank=2, gate_kind=kind, gate_components=4, seed=3)
    sess = ort.InferenceSession(build_head_onnx(head))
    rng = np.random.default_rng(0)
    hg, hs = rng.standard_normal((1, 64)).astype(np.float32), rng.standard_normal((1, 64)).astype(np.float32)
    score, vec, w = sess.run(None, {"h_gate": hg, "h_steer": hs})
    ref = head.forward(hg, hs)
    np.testing.assert_allclose(score, ref[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(vec, ref[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w, ref[2], rtol=1e-5, atol=1e-7)


def test_checksum_mismatch(pack_dir: Path) -> None:
    data = bytearray((pack_dir / "head.onnx").read_bytes())
    data[-10] ^= 0xFF
    (pack_dir / "head.onnx").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256 of head.onnx"):
        SteeringPack.load(pack_dir)


def test_pack_for_another_model(tiny_model_other: Path, pack_dir: Path) -> None:
    with pytest.raises(ModelMismatchError, match="n_embd 256 != 128"):
        SteeringPack.load(pack_dir).check_model(read_model_info(tiny_model_other))


def test_tokenizer_fingerprint_mismatch(pack_dir: Path, tiny_model: Path) -> None:
    rewrite_manifest(pack_dir, model__tokenizer_sha256="0" * 64)
    with pytest.raises(ModelMismatchError, match="tokenizer_sha256"):
        SteeringPack.load(pack_dir).check_model(read_model_info(tiny_model))


@pytest.mark.parametrize(
    ("gate", "steer", "match"), [(1, 0, "layer 0"), (1, 3, "out of range"), (3, 2, "gate layer 3")]
)
def test_bad_layers(pack_dir: Path, gate: int, steer: int, match: str) -> None:
    rewrite_manifest(pack_dir, layers={"gate": gate, "steer": steer})
    with pytest.raises(LayerError, match=match):
        SteeringPack.load(pack_dir)


def test_missing_file_and_symlink(pack_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(pack_dir / "head.onnx", outside)
    with pytest.raises(PackFormatError, match="missing head.onnx"):
        SteeringPack.load(pack_dir)
    (pack_dir / "head.onnx").symlink_to(outside)
    with pytest.raises(PackFormatError, match="symlink"):
        SteeringPack.load(pack_dir)


def test_not_a_pack(tmp_path: Path) -> None:
    with pytest.raises(PackFormatError, match="not found"):
        SteeringPack.load(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PackFormatError, match="not valid JSON"):
        SteeringPack.load(tmp_path)


def test_control_gguf_is_stock_compatible(pack_dir: Path) -> None:
    r = gguf.GGUFReader(pack_dir / "control.gguf")
    assert r.fields["general.architecture"].contents() == "controlvector"
    assert [t.name for t in r.tensors] == ["direction.2"]
    t = r.tensors[0]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [256]


def test_control_vector_rules(tmp_path: Path) -> None:
    v = np.ones(8, np.float32)
    p = write_control_vector(tmp_path / "cv.gguf", {1: v, 3: 2 * v}, model_hint="llama", n_layer=5)
    cv = read_control_vector(p, n_embd=8, n_layer=5)
    assert sorted(cv.directions) == [1, 3]
    with pytest.raises(PackFormatError, match="n_embd 16"):
        read_control_vector(p, n_embd=16)
    with pytest.raises(PackFormatError, match="beyond"):
        read_control_vector(p, n_layer=3)
    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "controlvector")
    w.add_tensor("direction.0", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(PackFormatError, match="layer 0"):
        read_control_vector(tmp_path / "bad.gguf")

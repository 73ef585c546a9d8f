"""verify_pack: one report of checksums, fingerprint and self-test; typed errors for a bad pack or model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finesteer_edge import SteeredLlama, SteeringPack, verify_pack
from finesteer_edge.errors import ChecksumError, LayerError, ModelMismatchError, PackFormatError, SelfTestError
from finesteer_edge.llama.model import LlamaModel
from finesteer_edge.llama.session import ContextSettings, LlamaSession
from finesteer_edge.model_info import read_model_info
from finesteer_edge.testing.packs import make_random_pack


@pytest.fixture(scope="module")
def pack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tiny_model, tmp_path_factory.mktemp("verify") / "good")


def test_good_pack_passes_every_check(tiny_model: Path, pack: Path) -> None:
    r = verify_pack(pack, tiny_model, n_threads=1)
    assert r.ok and r.ran == ["checksums", "fingerprint", "selftest"] and all(c.ok for c in r.checks)
    assert r.selftest is not None and r.selftest.steer_layer == 2 and r.selftest.max_tap_error < 1e-3
    assert r.pack is not None and r.pack.manifest.name == "random-test-pack"
    d = r.to_dict()
    assert d["checksums"] == d["fingerprint"] == "ok" and d["selftest"]["tap_method"] == "layer_inp"
    json.dumps(d)


def test_without_selftest_and_on_a_shared_model_or_session(tiny_model: Path, pack: Path) -> None:
    info = read_model_info(tiny_model)
    assert verify_pack(pack, info, selftest=False).ran == ["checksums", "fingerprint"]
    with pytest.raises(ValueError, match="self-test needs a model"):
        verify_pack(pack, info)
    model = LlamaModel(tiny_model)
    assert verify_pack(SteeringPack.load(pack), model, n_threads=1).ok
    s = LlamaSession(model, ContextSettings(n_ctx=256, n_threads=1), tap_layers=(1,))
    with pytest.raises(SelfTestError, match="does not tap layer"):  # the pack also reads layer 2
        verify_pack(pack, s)
    s.close()
    model.close()


def test_corrupt_pack_is_a_checksum_error(tiny_model: Path, tmp_path: Path) -> None:
    p = make_random_pack(tiny_model, tmp_path / "bad")
    data = bytearray((p / "head.onnx").read_bytes())
    data[-3] ^= 0x55
    (p / "head.onnx").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256 of head.onnx"):
        verify_pack(p, tiny_model)
    r = verify_pack(p, tiny_model, raise_on_failure=False)
    assert not r.ok and r.ran == ["checksums"] and isinstance(r.error, ChecksumError)
    assert r.to_dict()["checksums"] == "failed"
    with pytest.raises(PackFormatError, match="pack not found"):
        verify_pack(tmp_path / "nothing", tiny_model)


def test_pack_for_another_model_is_a_mismatch(tiny_model: Path, tiny_model_other: Path, pack: Path) -> None:
    with pytest.raises(ModelMismatchError, match="n_embd 256 != 128"):
        verify_pack(pack, tiny_model_other)
    r = verify_pack(pack, tiny_model_other, raise_on_failure=False)
    assert r.ran == ["checksums", "fingerprint"] and not r.checks[-1].ok and "does not fit" in r.checks[-1].detail


def test_layer_out_of_range_is_a_layer_error(tiny_model: Path, tmp_path: Path) -> None:
    q = make_random_pack(tiny_model, tmp_path / "layer")
    m = json.loads((q / "manifest.json").read_text())
    m["layers"]["steer"] = 9
    (q / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LayerError, match="out of range"):
        verify_pack(q, tiny_model)


def test_steered_llama_keeps_the_report(tiny_model: Path, pack: Path) -> None:
    llm = SteeredLlama(tiny_model, pack, n_ctx=256, n_threads=1)
    assert len(llm.reports) == 1 and llm.reports[0].ok and llm.selftest is llm.reports[0].selftest
    llm.close()

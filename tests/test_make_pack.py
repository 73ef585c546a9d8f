"""``make-pack`` end to end on the tiny model: the whole chain, resuming, and clean errors on bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge.train.activations import load_activations
from finesteer_edge.train.make_pack import _tree_sha256

from .conftest import SHARED_DATA, run_cli

# The tiny model carries a ChatML template (a template-less copy is written where that matters); small everything
QUICK = ("--budget", "5", "--epochs", "3", "--own-tokens", "4", "--n-ctx", "512", "--threads", "1",
         "--eval-rows", "2", "--eval-tokens", "4")


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
    assert [k for k in s["stages"]] == ["extract", "train", "convert", "verify", "eval"]
    assert all(v["status"] == "ran" for v in s["stages"].values())
    pack = SteeringPack.load(out)  # checksums verified
    assert pack.manifest.model.n_embd == 256
    r = s["results"]
    assert 0 <= r["gate"]["val_recall"] <= 1 and 0 <= r["gate"]["val_fpr"] <= 1
    ev = r["eval"]
    assert ev["split"] == "test" and ev["held_out"] and ev["finesteer"]["n_harmful"] == 2
    assert ev["base"]["n_benign"] == 2 and ev["finesteer"]["refusal_harmful"] is not None
    st = state(out)["stages"]
    assert set(st) == {"extract", "train", "convert", "verify", "publish", "eval"}
    assert st["extract"]["inputs"]["limit"] == 5 and st["extract"]["inputs"]["model"]
    work = Path(s["work_dir"])
    assert not (work / "extract.partial").exists()  # scratch removed once the file is written
    acts = load_activations(work / "activations.safetensors")
    assert not any("test" in f for f in acts.meta["data_files"])  # training never reads test files
    for stage in ("[1/5] extract", "[2/5] train", "[3/5] convert", "[4/5] verify", "[5/5] eval"):
        assert stage in made["stderr"]  # the stages are visible in a log


def test_rerun_skips_everything_and_resumes_after_lost_stages(made: dict, tiny_model: Path) -> None:  # type: ignore[type-arg]
    out = made["out"]
    before = state(out)["stages"]
    r = make_pack(tiny_model, out)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert all(v["status"] == "skipped" for v in s["stages"].values()), s["stages"]
    assert state(out)["stages"]["extract"]["finished"] == before["extract"]["finished"]
    # an interrupted run after extraction: the later outputs are gone
    work = Path(s["work_dir"])
    shutil.rmtree(work / "checkpoint")
    shutil.rmtree(work / "pack")
    (work / "verify.json").unlink()
    r = make_pack(tiny_model, out)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    after = state(out)["stages"]
    assert s["stages"]["extract"]["status"] == "skipped"
    assert after["extract"] == before["extract"]
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
        "extract": "skipped", "train": "ran", "convert": "ran", "verify": "ran", "eval": "ran"}
    # a changed input (another budget) runs extraction again
    r = make_pack(tiny_model, out, "--budget", "6")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stages"]["extract"]["status"] == "ran"


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
    assert s["results"]["gate"]["val_auroc"] > 0.5
    assert s["results"]["eval"]["held_out"] and s["results"]["eval"]["finesteer"]["n_harmful"] == 5
    r = run_cli("verify", str(out), "--model", str(smollm2), "--json")
    assert r.returncode == 0, r.stderr


def test_budgets_and_truthfulqa_summary() -> None:
    from finesteer_edge.errors import DataError
    from finesteer_edge.train.make_pack import BUDGETS, format_summary, parse_budget

    assert parse_budget(None) == BUDGETS["default"] and parse_budget("QUICK").rows == 40
    assert parse_budget("full").rows is None and parse_budget("200").eval_rows == 50
    with pytest.raises(DataError, match="at least 5"):
        parse_budget("4")
    s = {"task": "truthfulqa", "pack": "/p", "model": "/m.gguf", "work_dir": "/p.work", "seconds": 12.0,
         "stages": {"extract": {"status": "ran"}, "eval": {"status": "skipped"}},
         "results": {"gate": {"kind": "scs", "layer": 3, "val_recall": 0.9, "val_fpr": 0.1},
                     "eval": {"split": "val", "held_out": False, "rows_per_file": 5,
                              "base": {"mc1": 0.2}, "finesteer": {"mc1": 0.4, "gate_rate": 0.6, "n_items": 5}}}}
    text = format_summary(s)
    assert "MC1 40.0% (base 20.0%)" in text and "NOT held out" in text and "eval skipped" in text

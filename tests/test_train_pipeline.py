"""extract -> train -> convert -> verify -> generate on the tiny model, plus each bad input of issue 3."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from finesteer_edge.errors import ActivationsError, CheckpointError, DataError
from finesteer_edge.train.activations import load_activations

from .conftest import SHARED_DATA, run_cli

SAFETY = SHARED_DATA / "safety"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pipeline(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The whole CLI chain once; tests below inspect its artifacts."""
    assert SAFETY.is_dir(), f"the curated safety data ships with the package: {SAFETY} is missing"
    root = tmp_path_factory.mktemp("pipeline")
    acts, ckpt, pack = root / "acts.safetensors", root / "ckpt", root / "pack"
    r = run_cli("extract", str(tiny_model), "--task", "safety", "--data", str(SAFETY), "--out", str(acts),
                "--limit", "12", "--own-tokens", "8", "--threads", "2", "--n-ctx", "512")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", str(acts), "--out", str(ckpt), "--epochs", "8", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "gate:" in r.stdout and "experts: K=" in r.stdout
    train_stdout = r.stdout
    r = run_cli("convert", str(ckpt), "--out", str(pack), "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    assert "folded" in r.stdout and "unfolded" in r.stdout
    return {"acts": acts, "ckpt": ckpt, "pack": pack, "root": root, "train_stdout": train_stdout}  # type: ignore[dict-item]


def test_activations_file(pipeline: dict[str, Path], tiny_model: Path) -> None:
    a = load_activations(pipeline["acts"])
    groups = a.groups()
    assert a.h_gate.shape == a.h_steer.shape == a.delta.shape and a.h_steer.shape[1] == 256
    assert set(groups) == {"harmful", "benign", "borderline"}
    assert (a.label[groups == "harmful"] == 1).all() and (a.label[groups != "harmful"] == 0).all()
    original = np.asarray(a.meta["rows"]["variant"]) == "original"
    assert (a.has_delta[original] == a.label[original]).all() and (a.has_delta[~original] == 0).all()
    assert (np.linalg.norm(a.delta[a.has_delta == 1], axis=1) > 0).all()
    # safety extraction adds the same style rewrites to both classes, for the gate only
    assert set(a.meta["rows"]["variant"]) == {"original", "question", "polite", "first_person"}
    assert set(a.groups(with_variant=True)[~original]) == {f"{g}~{v}" for g in ("harmful", "benign")
                                                           for v in ("question", "polite", "first_person")}
    assert not any("test" in f for f in a.meta["data_files"])  # test splits are never read
    assert set(a.meta["rows"]["split"]) == {"train", "val"}
    assert (a.steer_layer, a.gate_layer) == (2, 2) and a.meta["model"]["n_embd"] == 256


def test_checkpoint_is_deterministic(pipeline: dict[str, Path], tmp_path: Path) -> None:
    again = tmp_path / "again"
    r = run_cli("train", str(pipeline["acts"]), "--out", str(again), "--epochs", "8", "--seed", "3")
    assert r.returncode == 0, r.stderr
    a = (pipeline["ckpt"] / "model.safetensors").read_bytes()
    assert a == (again / "model.safetensors").read_bytes()
    report = json.loads((again / "report.json").read_text())
    assert set(report["gate"]["val"]) >= {"recall", "fpr", "auroc"} and report["experts"]["calinski_harabasz"]
    assert (again / "report.md").read_text().startswith("# Training report")


def test_pack_verifies_and_generates(pipeline: dict[str, Path], tiny_model: Path) -> None:
    r = run_cli("verify", str(pipeline["pack"]), "--model", str(tiny_model), "--json")
    assert r.returncode == 0, r.stderr
    r = run_cli("generate", str(tiny_model), "--pack", str(pipeline["pack"]), "--prompt", "hi", "-n", "4", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    # the CLI's gate score and expert weights are the pack's head on the prompt's states from a bare session
    from finesteer_edge import SteeredLlama, SteeringPack
    from finesteer_edge.llama.session import ContextSettings, LlamaSession

    pack = SteeringPack.load(pipeline["pack"])
    with SteeredLlama(tiny_model, None, n_threads=2, n_ctx=512) as plain:
        prompt = plain.prompt_tokens([{"role": "user", "content": "hi"}])
    g, st = pack.manifest.gate_layer, pack.manifest.steer_layer
    s = LlamaSession(tiny_model, ContextSettings(n_ctx=512, n_threads=2), tap_layers=(g, st))
    s.decode(prompt, capture=True)
    head = pack.evaluate(s.hidden(g).copy(), s.hidden(st).copy())
    s.close()
    assert d["gate_score"] == pytest.approx(head.gate_score, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(d["expert_weights"], head.expert_weights, atol=1e-6)
    assert d["steered"] is (head.gate_score >= pack.manifest.tau)
    # provenance names the very activations file it was trained on
    m = json.loads((pipeline["pack"] / "manifest.json").read_text())
    want = hashlib.sha256(pipeline["acts"].read_bytes()).hexdigest()
    assert m["provenance"]["training"]["provenance"]["activations_sha256"] == want
    assert m["provenance"]["fold_max_rel_error"] <= 1e-5


def _torch_module(ckpt):  # type: ignore[no-untyped-def]
    """The MoSE torch module rebuilt from a saved checkpoint's weights (float32, eval mode)."""
    import torch

    from finesteer_edge.train.mose import make_module

    p = ckpt.mose
    module = make_module(p.d, p.C, p.U, hidden=p.W1.shape[0], gamma=p.gamma, input_scale=p.input_scale)
    sd = {"query.weight": p.W_q, "query.bias": p.b_q, "key.weight": p.W_k, "key.bias": p.b_k, "value.weight": p.W_v,
          "value.bias": p.b_v, "mix.0.weight": p.W1, "mix.0.bias": p.b1, "mix.2.weight": p.W2, "mix.2.bias": p.b2,
          "t": np.float64(p.t), "gamma": np.float64(p.gamma), "C": p.C, "U": p.U,
          "input_scale": np.float64(p.input_scale)}
    module.load_state_dict({k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in sd.items()})
    module.eval()
    return module


def test_folded_head_equals_torch_module(pipeline: dict[str, Path]) -> None:
    """Fold exactness against the trained torch module itself, and ONNX against both."""
    import torch

    from finesteer_edge.converters.fold import fold_checkpoint
    from finesteer_edge.pack.pack import SteeringPack
    from finesteer_edge.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(pipeline["ckpt"])
    module = _torch_module(ckpt)
    module.double()
    h = load_activations(pipeline["acts"]).h_steer[:8].astype(np.float64)
    with torch.no_grad():
        ref, ref_w = (x.numpy() for x in module(torch.from_numpy(h)))
    head = fold_checkpoint(ckpt)
    _, vec, w = head.forward(h, h)
    rel = np.linalg.norm(vec - ckpt.alpha * ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel.max() <= 1e-5 and np.abs(w - ref_w).max() <= 1e-6
    pack = SteeringPack.load(pipeline["pack"])
    for i in range(3):
        out = pack.evaluate(h[i].astype(np.float32), h[i].astype(np.float32))
        assert np.linalg.norm(out.vector - ckpt.alpha * ref[i]) / np.linalg.norm(ref[i]) <= 1e-4


def test_training_report_figures_agree(pipeline: dict[str, Path]) -> None:
    """Issue 12: the report said "best epoch ... val MSE 0.01685" and then "Validation: MSE 0.03486": the first
    was the early-stopping loss over targets *and* zero-target negatives, the second over targets only, both
    called val MSE, and the summary compared the first with the static mean's targets-only MSE.

    Recomputed here from the saved checkpoint on the activations' validation rows: every number that
    report.md or the printed summary calls an MSE is the targets-only MSE of the saved (best-epoch) head, the
    static mean's figure is on the same rows, and the selection loss is labelled and is the weighted loss.
    """
    import re

    import torch

    from finesteer_edge.train.checkpoint import load_checkpoint
    from finesteer_edge.train.trainer import _variant_deltas

    ckpt = load_checkpoint(pipeline["ckpt"])
    module = _torch_module(ckpt)
    acts = load_activations(pipeline["acts"])
    delta, has = _variant_deltas(acts)  # a style rewrite shares its original's target shift
    val = acts.mask(split="val", target=True) & has
    neg = acts.mask(split="val", target=False)
    assert val.any() and neg.any()  # both kinds of rows: the two losses differ
    x, y = acts.h_steer[val], delta[val]
    with torch.no_grad():
        pred = module(torch.from_numpy(x.astype(np.float32)))[0].numpy()
        pred_neg = module(torch.from_numpy(acts.layers[acts.steer_layer][neg].astype(np.float32)))[0].numpy()
    mse = float(np.mean((pred - y) ** 2))
    mse_mean = float(np.mean((ckpt.mean_delta[None] - y) ** 2))
    w = float(ckpt.config["provenance"]["train_config"]["negative_weight"])
    weighted = (float(np.sum((pred - y) ** 2)) + w * float(np.sum(pred_neg ** 2))) / ((len(y) + w * len(pred_neg))
                                                                                      * y.shape[1])
    assert abs(weighted - mse) > 1e-4  # the old mislabelling is visible at the printed precision

    report = json.loads((pipeline["ckpt"] / "report.json").read_text())
    m = report["mose"]
    assert m["val_mse"] == pytest.approx(mse, rel=1e-5)
    assert m["val_mse_mean_vector"] == pytest.approx(mse_mean, rel=1e-5)
    assert m["best_val_mse"] == pytest.approx(weighted, rel=1e-4)  # the key keeps its meaning (readers)
    assert m["n_val"] == int(val.sum()) and m["n_val_negatives"] == int(neg.sum())

    md, summary = (pipeline["ckpt"] / "report.md").read_text(), pipeline["train_stdout"]
    for text in (md, summary):
        called_mse = [float(v) for v in re.findall(r"MSE ([0-9]+\.[0-9]+)", text)]
        assert called_mse and all(v == pytest.approx(mse, abs=1e-5) for v in called_mse), (called_mse, mse, text)
        static = [float(v) for v in re.findall(r"MSE [0-9.]+ \(static mean ([0-9]+\.[0-9]+)\)", text)]
        assert static and all(v == pytest.approx(mse_mean, abs=1e-5) for v in static), (static, mse_mean, text)
        sel = [float(v) for v in re.findall(r"selection loss ([0-9]+\.[0-9]+)", text)]
        assert sel and all(v == pytest.approx(weighted, abs=1e-5) for v in sel), (sel, weighted, text)
        assert "targets + negatives" in text  # what the selection loss is over
    # the loss curve holds the selection loss per epoch: its best-epoch row is the reported best, not an "MSE"
    assert "| val MSE |" not in md
    lines = md.splitlines()
    curve = lines[next(i for i, line in enumerate(lines) if line.startswith("| epoch |")):]
    best_row = next(line for line in curve if line.startswith(f"| {m['best_epoch']} |"))
    assert float(best_row.split("|")[3]) == pytest.approx(weighted, abs=1e-5)


def test_control_gguf_holds_only_directions(pipeline: dict[str, Path]) -> None:
    r = gguf.GGUFReader(pipeline["pack"] / "control.gguf")
    names = [t.name for t in r.tensors]
    assert names == ["direction.2"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1 for t in r.tensors)
    assert r.fields["controlvector.finesteer.method"].contents() == "finesteer"


def test_convert_refuses_activations_model_mismatch(pipeline: dict[str, Path], tiny_model_other: Path,
                                                    tmp_path: Path) -> None:
    r = run_cli("convert", str(pipeline["ckpt"]), "--out", str(tmp_path / "p"), "--model", str(tiny_model_other))
    assert r.returncode == 2 and "another model" in r.stderr and "n_embd 256 != 128" in r.stderr
    assert not (tmp_path / "p").exists()


def test_convert_failure_leaves_no_pack(pipeline: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "ckpt_nan"
    shutil.copytree(pipeline["ckpt"], bad)
    t = load_file(str(bad / "model.safetensors"))
    t["W_v"][0, 0] = np.nan
    save_file(t, str(bad / "model.safetensors"))
    r = run_cli("convert", str(bad), "--out", str(tmp_path / "p"))
    assert r.returncode == 2 and "NaN/Inf in W_v" in r.stderr
    del t["W_q"], t["C"]
    save_file(t, str(bad / "model.safetensors"))
    r = run_cli("convert", str(bad), "--out", str(tmp_path / "p"))
    assert r.returncode == 2 and "missing tensors: C, W_q" in r.stderr
    t2 = load_file(str(pipeline["ckpt"] / "model.safetensors"))
    t2["W_k"] = t2["W_k"][:, :10]
    save_file(t2, str(bad / "model.safetensors"))
    r = run_cli("convert", str(bad), "--out", str(tmp_path / "p"))
    assert r.returncode == 2 and "mis-shaped" in r.stderr and "W_k" in r.stderr
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.*"))


def test_bad_data_lines_report_file_and_line(tiny_model: Path, tmp_path: Path) -> None:
    d = tmp_path / "safety"
    d.mkdir()
    for name in ("harmful_train", "harmful_val", "benign_train", "benign_val"):
        write_jsonl(d / f"{name}.jsonl", [{"prompt": f"{name} {i}"} for i in range(6)])
    (d / "benign_val.jsonl").write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    r = run_cli("extract", str(tiny_model), "--task", "safety", "--data", str(d), "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "benign_val.jsonl:2: empty line" in r.stderr
    (d / "benign_val.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b", \n')
    r = run_cli("extract", str(tiny_model), "--task", "safety", "--data", str(d), "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "benign_val.jsonl:2: not valid JSON" in r.stderr
    (d / "benign_val.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    r = run_cli("extract", str(tiny_model), "--task", "safety", "--data", str(d), "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "benign_val.jsonl:2: missing field 'prompt'" in r.stderr
    assert not (tmp_path / "a").exists()


def test_pairs_task_and_too_few_examples(tiny_model: Path, tmp_path: Path) -> None:
    rows = [{"prompt": f"Say something about topic {i}", "desired": "Gladly, in French.", "undesired": "No.",
             "split": "train" if i < 4 else "val"} for i in range(6)]
    rows += [{"prompt": f"general question {i}"} for i in range(6)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    acts = tmp_path / "acts.safetensors"
    r = run_cli("extract", str(tiny_model), "--task", "pairs", "--data", str(data), "--out", str(acts))
    assert r.returncode == 0, r.stderr
    a = load_activations(acts)
    assert int(a.label.sum()) == 6 and a.meta["task"] == "pairs"
    r = run_cli("train", str(acts), "--out", str(tmp_path / "ck"), "--epochs", "2")
    assert r.returncode == 2 and "MoSE needs more than 4 training targets" in r.stderr


def test_test_files_are_refused(tmp_path: Path) -> None:
    from finesteer_edge.train.tasks import load_items

    data = write_jsonl(tmp_path / "pairs_test.jsonl", [{"prompt": "x", "desired": "a", "undesired": "b"}])
    with pytest.raises(DataError, match="test files are never used"):
        load_items("pairs", data)


def test_bad_activations_file(tmp_path: Path) -> None:
    p = tmp_path / "acts.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ActivationsError):
        load_activations(p)
    with pytest.raises(ActivationsError, match="not found"):
        load_activations(tmp_path / "missing")


def test_weights_only_refusal(tmp_path: Path) -> None:
    """A torch file that needs code to unpickle is refused, and its payload never runs."""
    import torch

    from finesteer_edge.train.checkpoint import load_torch_weights

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    torch.save({"query.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_torch_weights(tmp_path / "evil.pth")
    assert not marker.exists()


def test_jsonl_huge_integer_is_a_data_error(tmp_path: Path) -> None:
    from finesteer_edge.data import read_jsonl

    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": "ok"}\n{"prompt": "x", "n": ' + "9" * 5000 + "}\n")
    with pytest.raises(DataError, match="x.jsonl:2: not valid JSON"):
        read_jsonl(p)


def test_zeroed_hidden_states_are_an_activations_error(pipeline: dict[str, Path], tmp_path: Path) -> None:
    """Fuzz finding: a file whose steer-layer states are all zero crashed train with ZeroDivisionError."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(pipeline["acts"]), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    for k in tensors:
        if k == "h_steer" or k.startswith("h_layer."):
            tensors[k] = np.zeros_like(tensors[k])
    zeroed = tmp_path / "zeroed.safetensors"
    save_file(tensors, str(zeroed), metadata=meta)
    r = run_cli("train", str(zeroed), "--out", str(tmp_path / "ckpt"), "--epochs", "2")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error:") and "all zero" in r.stderr and "Traceback" not in r.stderr


def test_extract_end_of_turn_targets(tiny_model: Path, tmp_path: Path) -> None:
    """--end-of-turn teacher-forces each desired response followed by the template's end-of-turn token
    (<|im_end|> for a ChatML model), so the target deltas change; the undesired side does not."""
    rows = [{"prompt": f"Say something about topic {i}", "desired": "No, I won't.", "undesired": "Sure, here it is.",
             "split": "train"} for i in range(3)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    deltas, metas = {}, {}
    for flag in ((), ("--end-of-turn",)):
        acts = tmp_path / f"acts{len(flag)}.safetensors"
        r = run_cli("extract", str(tiny_model), "--task", "pairs", "--data", str(data), "--out", str(acts),
                    "--threads", "1", "--n-ctx", "256", *flag)
        assert r.returncode == 0, r.stderr
        a = load_activations(acts)
        deltas[bool(flag)], metas[bool(flag)] = a.delta[a.has_delta == 1], a.meta
    assert metas[False]["end_of_turn"] is None
    assert metas[True]["end_of_turn"]["text"] == "<|im_end|>"
    assert deltas[True].shape == deltas[False].shape
    assert not np.allclose(deltas[True], deltas[False])


def test_end_of_turn_token_comes_from_the_template(tiny_model: Path) -> None:
    from finesteer_edge.steered import SteeredLlama
    from finesteer_edge.train.extract import end_of_turn_token

    with SteeredLlama(tiny_model, n_ctx=128, n_threads=1) as llm:
        tok = end_of_turn_token(llm)
        assert llm.session.token_text(tok) == "<|im_end|>" and llm.session.is_eog(tok)


def test_training_without_negatives(tiny_model: Path, tmp_path: Path) -> None:
    """A task whose data has only targets (TruthfulQA without --negatives) trains: the MoSE norm on negatives is
    null, not NaN (a NaN broke the checkpoint's strict JSON)."""
    acts = tmp_path / "acts.safetensors"
    r = run_cli("extract", str(tiny_model), "--task", "truthfulqa", "--data", str(SHARED_DATA / "truthfulqa"),
                "--out", str(acts), "--limit", "8", "--threads", "1", "--n-ctx", "512")
    assert r.returncode == 0, r.stderr
    assert int((load_activations(acts).label == 0).sum()) == 0
    r = run_cli("train", str(acts), "--out", str(tmp_path / "ck"), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "ck" / "report.json").read_text())
    assert report["mose"]["val_norm_negatives"] is None and report["mose"]["n_val_negatives"] == 0

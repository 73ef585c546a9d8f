"""The CLI as users run it: real subprocesses, one-line errors with exit code 2, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge.llama.session import ContextSettings, LlamaSession
from finesteer_edge.testing.packs import make_random_pack

from .conftest import run_cli


@pytest.fixture(scope="module")
def pack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_pack(tiny_model, tmp_path_factory.mktemp("p") / "pack", tau=-1.0, vector_norm=60.0)


def assert_one_line_error(proc, pattern: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def _greedy_with_vector(model: Path, prompt: list[int], layer: int, vector: np.ndarray, n: int) -> tuple[str, int]:
    """Stock llama.cpp semantics by hand: the vector on for the whole turn (prefill and decode), greedy."""
    s = LlamaSession(model, ContextSettings(n_ctx=512, n_threads=2))
    try:
        s.set_control(*s.control_buffer({layer: vector}))
        s.decode(prompt)
        pieces: list[bytes] = []
        with s.sampler() as smp:
            for _ in range(n):
                tok = s.sample(smp)
                if s.is_eog(tok):
                    break
                pieces.append(s.piece(tok))
                s.decode([tok])
        return b"".join(pieces).decode("utf-8", errors="replace"), len(pieces)
    finally:
        s.close()


def test_generate_json(tiny_model: Path, pack: Path) -> None:
    proc = run_cli("generate", str(tiny_model), "--pack", str(pack), "--prompt", "hello", "-n", "6", "--json",
                   "--threads", "2", "--n-ctx", "512")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    for key in ("text", "steered", "gate_score", "expert_weights", "mode", "tokens", "seconds"):
        assert key in d
    # Reference apart from the CLI: the prompt's hidden states from a bare session, the pack's head on them,
    # then the default (exact) mode's promise: the same text as stock decoding with that vector on throughout.
    from finesteer_edge import SteeredLlama, SteeringPack

    with SteeredLlama(tiny_model, None, n_threads=2, n_ctx=512) as plain:
        prompt = plain.prompt_tokens([{"role": "user", "content": "hello"}])
        unsteered = plain.generate("hello", max_tokens=6).text
    sp = SteeringPack.load(pack)
    g, st = sp.manifest.gate_layer, sp.manifest.steer_layer
    s = LlamaSession(tiny_model, ContextSettings(n_ctx=512, n_threads=2), tap_layers=(g, st))
    s.decode(prompt, capture=True)
    head = sp.evaluate(s.hidden(g).copy(), s.hidden(st).copy())
    s.close()
    assert d["gate_score"] == pytest.approx(head.gate_score, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(d["expert_weights"], head.expert_weights, atol=1e-6)
    assert d["steered"] is (head.gate_score >= sp.manifest.tau)
    text, n = _greedy_with_vector(tiny_model, prompt, st, head.vector, 6)
    assert (d["text"], d["tokens"]) == (text, n) and text != unsteered


def test_generate_streams_text_and_no_pack(tiny_model: Path, pack: Path) -> None:
    a = run_cli("generate", str(tiny_model), "--no-pack", "--prompt", "hello", "-n", "6", "--threads", "2")
    b = run_cli("generate", str(tiny_model), "--no-pack", "--prompt", "hello", "-n", "6", "--json", "--threads", "2")
    assert a.returncode == 0 and a.stdout.rstrip("\n") == json.loads(b.stdout)["text"]
    c = run_cli("generate", str(tiny_model), "--pack", str(pack), "--no-pack", "--prompt", "x")
    assert c.returncode == 2


def test_chat_session(tiny_model: Path, pack: Path) -> None:
    proc = run_cli("chat", str(tiny_model), "--pack", str(pack), "--explain", "-n", "4", "--threads", "2",
                   input="hello\n/explain\n/bogus\n/reset\nagain\n/quit\nnever read\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("turn 1: STEERED") == 3  # --explain after turn 1, /explain, and after turn 1 again post-reset
    assert "threshold -1.0000" in out and "experts [" in out
    assert "unknown command /bogus" in proc.stderr and "conversation reset" in proc.stderr


def test_gate_threshold_option(tiny_model: Path, pack: Path) -> None:
    """--gate-threshold replaces the pack's tau (-1 here: always open) in generate and chat; above every gate score
    (a probability) the turn is unsteered and the output is the no-pack output."""
    args = ("--prompt", "hello", "-n", "6", "--json", "--threads", "2", "--n-ctx", "512")
    high = run_cli("generate", str(tiny_model), "--pack", str(pack), "--gate-threshold", "1.5", *args)
    plain = run_cli("generate", str(tiny_model), "--no-pack", *args)
    assert high.returncode == 0, high.stderr
    d, p = json.loads(high.stdout), json.loads(plain.stdout)
    assert d["steered"] is False and d["threshold"] == 1.5 and d["packs"][0]["threshold"] == 1.5
    assert d["text"] == p["text"]
    chat = run_cli("chat", str(tiny_model), "--pack", str(pack), "--explain", "-n", "4", "--threads", "2",
                   "--gate-threshold", "1.5", input="hello\n/quit\n")
    assert chat.returncode == 0, chat.stderr
    assert "turn 1: not steered" in chat.stdout and "threshold 1.5000" in chat.stdout
    bad = run_cli("generate", str(tiny_model), "--pack", str(pack), "--gate-threshold", "-1", *args)
    assert bad.returncode == 2


def test_inspect_and_verify(tiny_model: Path, pack: Path) -> None:
    import hashlib

    import gguf
    import onnx

    ins = run_cli("inspect", str(pack), "--json")
    d = json.loads(ins.stdout)
    # every figure against its source: the files on disk, the GGUF's metadata, the ONNX graph's output shape
    for name, f in d["files"].items():
        data = (pack / name).read_bytes()
        assert f == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert d["total_bytes"] == sum(p.stat().st_size for p in pack.iterdir() if p.name != "manifest.json")
    meta = gguf.GGUFReader(str(tiny_model)).fields
    assert d["model"]["n_embd"] == int(meta["llama.embedding_length"].parts[-1][0])
    assert d["model"]["n_layer"] == int(meta["llama.block_count"].parts[-1][0])
    outs = {o.name: o for o in onnx.load(str(pack / "head.onnx")).graph.output}
    assert d["experts"] == outs["expert_weights"].type.tensor_type.shape.dim[-1].dim_value
    manifest = json.loads((pack / "manifest.json").read_text())
    assert (d["gate_layer"], d["steer_layer"]) == (manifest["layers"]["gate"], manifest["layers"]["steer"])
    ver = run_cli("verify", str(pack), "--model", str(tiny_model), "--json")
    assert ver.returncode == 0, ver.stderr
    assert json.loads(ver.stdout)["selftest"]["tap_method"] == "layer_inp"


def test_bad_inputs_are_one_line_errors(tiny_model: Path, tiny_model_other: Path, pack: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("generate", str(tmp_path / "missing.gguf"), "--prompt", "x"), "model file not found")
    notgguf = tmp_path / "fake.gguf"
    notgguf.write_text("hello")
    assert_one_line_error(run_cli("generate", str(notgguf), "--prompt", "x"), "not a GGUF")
    assert_one_line_error(run_cli("generate", str(tiny_model_other), "--pack", str(pack), "--prompt", "x"),
                          "n_embd 256 != 128")
    assert_one_line_error(run_cli("verify", str(pack), "--model", str(tiny_model_other)), "does not fit")
    assert_one_line_error(run_cli("generate", str(tiny_model), "--pack", str(tmp_path / "nopack"), "--prompt", "x"),
                          "pack not found")
    long_prompt = "word " * 400
    assert_one_line_error(run_cli("generate", str(tiny_model), "--no-pack", "--n-ctx", "64", "--prompt", long_prompt),
                          "context holds 64")


def test_checksum_and_layer_errors(tiny_model: Path, tmp_path: Path) -> None:
    p = make_random_pack(tiny_model, tmp_path / "bad")
    data = bytearray((p / "control.gguf").read_bytes())
    data[-4] ^= 0x55
    (p / "control.gguf").write_bytes(bytes(data))
    assert_one_line_error(run_cli("inspect", str(p)), "sha256 of control.gguf")
    q = make_random_pack(tiny_model, tmp_path / "layer")
    m = json.loads((q / "manifest.json").read_text())
    m["layers"]["steer"] = 0
    (q / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(run_cli("generate", str(tiny_model), "--pack", str(q), "--prompt", "x"), "layer 0")
    m["layers"]["steer"] = 9
    (q / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(run_cli("verify", str(q), "--model", str(tiny_model)), "out of range")


def test_allow_unsteered_is_loud(tiny_model: Path, tmp_path: Path) -> None:
    p = make_random_pack(tiny_model, tmp_path / "bad")
    (p / "head.onnx").write_bytes(b"garbage")
    refused = run_cli("generate", str(tiny_model), "--pack", str(p), "--prompt", "x", "-n", "2")
    assert_one_line_error(refused, "head.onnx")
    allowed = run_cli("generate", str(tiny_model), "--pack", str(p), "--prompt", "x", "-n", "2",
                      "--allow-unsteered", "--json")
    assert allowed.returncode == 0
    assert "STEERING DISABLED" in allowed.stderr
    d = json.loads(allowed.stdout)
    assert d["steered"] is False and d["unsteered_reason"]


def test_console_script_is_installed() -> None:
    import shutil
    import subprocess

    exe = shutil.which("finesteer-edge")
    assert exe, "the finesteer-edge console script is not on PATH"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout and "verify" in out.stdout


def test_progress_logs_a_line_per_interval_when_not_a_terminal(monkeypatch, capsys) -> None:
    """Under nohup/CI stderr is a file: long work still reports progress, short work stays silent."""
    from finesteer_edge import progress

    assert list(progress.track(range(3), "quick")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    assert list(progress.track([5, 6], "slow")) == [5, 6]
    assert capsys.readouterr().err.splitlines() == ["slow: 0/2 (0 s)", "slow: 1/2 (0 s)"]


def test_generate_vector_choice(tiny_model: Path, pack: Path) -> None:
    """--vector mean steers with the pack's static mean vector (CAST-style), --vector head with the head's."""
    from finesteer_edge import SteeredLlama

    texts = {}
    for vector in ("head", "mean"):
        r = run_cli("generate", str(tiny_model), "--pack", str(pack), "--prompt", "hi", "-n", "8", "--json",
                    "--vector", vector)
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["steered"] is True
        texts[vector] = d["token_ids"] if "token_ids" in d else d["text"]
    from finesteer_edge.settings import Penalties

    llm = SteeredLlama(tiny_model, pack, vector_source="mean", n_threads=2)
    res = llm.generate("hi", max_tokens=8, penalties=Penalties(repeat_penalty=1.1, dry_multiplier=0.8))  # CLI defaults
    assert (res.token_ids if "token_ids" in d else res.text) == texts["mean"]
    assert texts["head"] != texts["mean"]
    r = run_cli("generate", str(tiny_model), "--pack", str(pack), "--prompt", "hi", "--vector", "bogus")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--vector must be head, mean, projected or head_direction" in r.stderr


def test_generate_penalties_and_schedule_flags(tiny_model: Path, pack: Path) -> None:
    """--repeat-penalty/--dry-multiplier reach the sampler and --schedule the steering (issue 11), same as the API."""
    from finesteer_edge import SteeredLlama
    from finesteer_edge.schedule import Schedule
    from finesteer_edge.settings import Penalties

    args = ("generate", str(tiny_model), "--pack", str(pack), "--prompt", "hi", "-n", "16", "--json", "--threads", "1",
            "--n-ctx", "256")
    r = run_cli(*args, "--repeat-penalty", "1.4", "--dry-multiplier", "0.8", "--schedule", "4:linear")
    assert r.returncode == 0, r.stderr
    with SteeredLlama(tiny_model, pack, n_threads=1, n_ctx=256, schedule=Schedule(tokens=4, decay="linear")) as llm:
        want = llm.generate("hi", max_tokens=16, penalties=Penalties(repeat_penalty=1.4, dry_multiplier=0.8))
        llm.schedule = Schedule()
        assert llm.generate("hi", max_tokens=16).text != want.text  # the flags change the answer: the test can fail
    plain = run_cli(*args, "--repeat-penalty", "1", "--dry-multiplier", "0", "--schedule", "all")
    with SteeredLlama(tiny_model, pack, n_threads=1, n_ctx=256) as llm:
        assert json.loads(plain.stdout)["text"] == llm.generate("hi", max_tokens=16).text  # 1 / 0: plain greedy
    assert json.loads(r.stdout)["text"] == want.text and want.steered
    for flag, value, msg in (("--schedule", "soon", "--schedule"), ("--repeat-penalty", "0", "repeat_penalty")):
        bad = run_cli(*args, flag, value)
        assert bad.returncode == 2 and msg in bad.stderr and "Traceback" not in bad.stderr

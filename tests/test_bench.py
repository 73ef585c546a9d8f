"""Benchmark mechanics (never timings: those live in bench/ and docs/BENCHMARKS.md) and the unfolded head.

The CLI tests run ``finesteer-edge bench`` for real on the tiny model with tiny settings and check that the
JSON has the documented keys with sane, finite values and that the variants really are what they claim
(gate closed never steers, gate open always does). The unfolded ONNX head, which computes the official
query/key/value projections against the prototype bank in-graph, must compute the same function as the
folded head we ship.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from finesteer_edge.testing.packs import make_random_pack

from .conftest import run_cli

REQUIRED = (
    "decode_tps_plain", "decode_ratio_gate_closed", "decode_ratio_gate_open_fast", "decode_ratio_gate_open_exact",
    "ttft_ratio_gate_closed", "ttft_ratio_gate_open_exact", "head_ms", "pack_bytes", "threads",
)
TINY = ("--threads", "1", "-n", "4", "-r", "1", "--warmup", "0", "--head-iters", "5", "--n-ctx", "256")


def _finite_positive(d: dict, key: str) -> None:  # type: ignore[type-arg]
    v = d[key]
    assert isinstance(v, int | float) and not isinstance(v, bool), f"{key}={v!r}"
    assert math.isfinite(v) and v > 0, f"{key}={v!r}"


def test_bench_json_with_random_pack(tiny_model: Path) -> None:
    proc = run_cli("bench", str(tiny_model), "--json", *TINY)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    for key in REQUIRED:
        assert key in d, key
    extra = ("decode_tps_stock", "ttft_ms_plain", "ttft_ms_gate_open_exact", "decode_ratio_plain_vs_stock")
    for key in REQUIRED + extra:
        _finite_positive(d, key)
    runs = {n: r[0] for n, r in d["runs"].items()}
    # the -n 4 cap took effect in every loop (a random tiny model may stop early at end-of-sequence)
    assert all(1 <= r["tokens"] <= 4 for r in runs.values()), runs
    # with one round the medians are the raw samples, and every ratio is their quotient (computed here by hand)
    for n in ("gate_closed", "gate_open_fast", "gate_open_exact"):
        assert d[f"decode_tps_{n}"] == runs[n]["decode_tps"]
        assert d[f"decode_ratio_{n}"] == pytest.approx(runs[n]["decode_tps"] / runs["plain"]["decode_tps"])
        assert d[f"ttft_ratio_{n}"] == pytest.approx(runs[n]["ttft_s"] / runs["plain"]["ttft_s"])
    assert d["decode_ratio_plain_vs_stock"] == pytest.approx(runs["plain"]["decode_tps"] / runs["stock"]["decode_tps"])
    exact_extra_s = runs["gate_open_exact"]["ttft_s"] - runs["gate_closed"]["ttft_s"]
    assert d["exact_extra_ms"] == pytest.approx(1e3 * exact_extra_s)
    # our loop's decode speed is its definition (turns.py): generated tokens per second after the first one
    for n in ("plain", "gate_closed", "gate_open_fast", "gate_open_exact"):
        r = runs[n]
        assert r["decode_tps"] == pytest.approx(r["tokens"] / (r["seconds"] - r["ttft_s"]))
        assert 0 < r["ttft_s"] < r["seconds"]
    assert d["random_pack"] is True and d["pack"] is None and "RANDOM pack" in d["note"]
    assert d["checks"] == {"gate_closed_never_steered": True, "gate_open_always_steered": True}
    assert d["tap_method"] == "layer_inp"
    assert set(d["runs"]) == {"stock", "plain", "gate_closed", "gate_open_fast", "gate_open_exact"}
    assert all(len(runs) == 1 and runs[0]["prompt_tokens"] == d["prompt_tokens"] for runs in d["runs"].values())
    # the stock loop got the very same prompt tokens and, greedy and unsteered, the same number of new tokens
    assert d["runs"]["stock"][0]["tokens"] == d["runs"]["plain"][0]["tokens"] == d["runs"]["gate_closed"][0]["tokens"]
    env = d["environment"]
    assert len(env["loadavg_start"]) == 3 and env["versions"]["llama_cpp_python"] == "0.3.36"
    assert set(d["targets"]) >= {"decode_ratio_gate_closed >= 0.98", "ttft_ratio_gate_closed <= 1.03"}


def test_bench_given_pack_is_forced_closed_and_open(tiny_model: Path, tmp_path: Path) -> None:
    # tau 0.5 would decide per prompt; the bench must force the gate both ways regardless
    pack = make_random_pack(tiny_model, tmp_path / "pack", gate_layer=2, steer_layer=1, tau=0.5)
    proc = run_cli("bench", str(tiny_model), "--pack", str(pack), "--json", "--no-stock", "--sequential", *TINY)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["random_pack"] is False and d["note"] is None and d["pack"] == str(pack)
    assert d["pack_bytes"] == sum(p.stat().st_size for p in pack.iterdir())
    assert "decode_tps_stock" not in d
    assert d["checks"] == {"gate_closed_never_steered": True, "gate_open_always_steered": True}
    # the checks agree with the raw turns: the policy forced the pack's gate both ways, whatever its tau says
    assert [r["steered"] for r in d["runs"]["gate_closed"]] == [False]
    assert [r["steered"] for r in d["runs"]["gate_open_fast"] + d["runs"]["gate_open_exact"]] == [True, True]
    assert [r["steered"] for r in d["runs"]["plain"]] == [None]


def test_bench_human_output(tiny_model: Path) -> None:
    proc = run_cli("bench", str(tiny_model), *TINY)
    assert proc.returncode == 0, proc.stderr
    for text in ("gate closed", "gate open, exact", "llama_cpp.Llama (stock)", "head:", "load average", "RANDOM"):
        assert text in proc.stdout, text


def test_bench_bad_pack_is_one_line_error(tiny_model: Path, tmp_path: Path) -> None:
    proc = run_cli("bench", str(tiny_model), "--pack", str(tmp_path / "nope"), *TINY)
    assert proc.returncode == 2 and proc.stderr.startswith("error: pack not found"), proc.stderr


@pytest.mark.parametrize("gate_kind", ["scs", "scs_logistic", "logistic", "always"])
def test_unfolded_head_matches_folded(gate_kind: str) -> None:
    import onnx
    import onnxruntime as ort

    from finesteer_edge.converters.onnx_head import build_head_onnx
    from finesteer_edge.converters.onnx_unfolded import build_unfolded_head_onnx
    from finesteer_edge.measure.head import random_unfolded_head

    d, n_experts, k = 48, 8, 10
    unfolded = random_unfolded_head(d, n_experts=n_experts, basis_rank=k, gate_kind=gate_kind, seed=7)
    folded = unfolded.fold()
    unfolded_bytes = build_unfolded_head_onnx(unfolded)
    # really unfolded: the three d x d projections and the bank are in the graph, computed per run
    inits = {t.name: tuple(t.dims) for t in onnx.load_from_string(unfolded_bytes).graph.initializer}
    assert inits["query_wT"] == inits["key_wT"] == inits["value_wT"] == (d, d)
    assert inits["prototypes"] == (n_experts, d)
    sessions = {
        "folded": ort.InferenceSession(build_head_onnx(folded), providers=["CPUExecutionProvider"]),
        "unfolded": ort.InferenceSession(unfolded_bytes, providers=["CPUExecutionProvider"]),
    }
    rng = np.random.default_rng(0)
    for _ in range(5):
        h_gate = rng.standard_normal((1, d)).astype(np.float32)
        h_steer = rng.standard_normal((1, d)).astype(np.float32)
        outs = {n: s.run(["gate_score", "vector", "expert_weights"], {"h_gate": h_gate, "h_steer": h_steer})
                for n, s in sessions.items()}
        ref = unfolded.forward(h_gate, h_steer)
        for i, name in enumerate(("gate_score", "vector", "expert_weights")):
            a, b = outs["unfolded"][i].reshape(-1), outs["folded"][i].reshape(-1)
            atol = 1e-6 * float(np.abs(b).max())
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol, err_msg=name)
            np.testing.assert_allclose(a, np.asarray(ref[i]).reshape(-1), rtol=1e-4, atol=atol, err_msg=name)
        w = outs["unfolded"][2]
        assert 0.05 < w.max() < 0.95  # a router neither uniform nor one-hot, so folding errors would show


def test_head_latency_and_pack_size_mechanics() -> None:
    from finesteer_edge.measure.head import HEAD_VARIANTS, MAX_REL_ERR, head_latency, pack_sizes

    r = head_latency(32, rounds=3)
    for v in HEAD_VARIANTS:
        assert r[v]["n"] == 3 and r[v]["median_ms"] > 0
    # float32 runtimes against the float64 reference: ~1e-7, far inside the bound that would have raised
    assert r["max_rel_err"] < MAX_REL_ERR / 100
    # parameter counts by hand for d = h = 32, K = 8, k = 10, SCS gate with 8 components:
    # folded = gate (d + 8d) + router (dK + K) + experts (Kd) + MLP (dh + h + hk + k) + basis (kd)
    # unfolded = gate + query/key/value 3 (d^2 + d) + MLP + prototypes (Kd) + basis
    assert r["params"] == {"folded": 2514, "unfolded": 5418}
    s = pack_sizes(32, n_layer=4)
    assert s["pack_unfolded"] > s["pack_folded"] == s["head_folded"] + s["control"] + s["manifest"]
    # head.onnx stores every parameter as float32: at least 4 bytes each, plus a small graph
    assert 4 * 2514 <= s["head_folded"] < 4 * 2514 + 8192
    assert 4 * 5418 <= s["head_unfolded"] < 4 * 5418 + 8192


def test_head_check_refuses_a_wrong_head() -> None:
    """The benchmark must not time a head that computes something else: one wrong output is an error."""
    from finesteer_edge.converters.onnx_head import build_head_onnx
    from finesteer_edge.measure.head import check_outputs, random_unfolded_head
    from finesteer_edge.pack.head import HeadRunner

    d = 32
    folded = random_unfolded_head(d, seed=3).fold()
    rng = np.random.default_rng(1)
    h_gate, h_steer = rng.standard_normal((2, 1, d)).astype(np.float32)
    out = HeadRunner(build_head_onnx(folded), d, 8).run(h_gate[0], h_steer[0])
    got = (out.gate_score, out.vector, out.expert_weights)
    ref = folded.forward(h_gate, h_steer)
    assert check_outputs("runtime", got, ref) < 1e-6
    vec = np.array(out.vector, dtype=np.float64)
    vec[5] += 1e-3 * np.abs(vec).max()  # one element off by 0.1% of the vector's scale
    with pytest.raises(AssertionError, match="in vector"):
        check_outputs("runtime", (out.gate_score, vec, out.expert_weights), ref)
    with pytest.raises(AssertionError, match="in expert_weights"):
        check_outputs("runtime", (out.gate_score, out.vector, out.expert_weights[::-1]), ref)
    with pytest.raises(AssertionError, match="in gate_score"):
        check_outputs("runtime", (float("nan"), out.vector, out.expert_weights), ref)


@pytest.mark.slow
def test_bench_on_smollm2(smollm2: Path) -> None:
    proc = run_cli("bench", str(smollm2), "--json", "--threads", "2", "-n", "8", "-r", "1", "--head-iters", "20")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    for key in REQUIRED:
        _finite_positive(d, key)
    assert d["checks"] == {"gate_closed_never_steered": True, "gate_open_always_steered": True}
    assert d["tap_method"] == "layer_inp" and d["threads"] == 2
    assert d["prompt_tokens"] > 20  # SmolLM2's template adds its default system prompt


def test_bench_script_writes_results_and_report(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    doc = tmp_path / "BENCH.md"
    proc = subprocess.run(
        [sys.executable, str(repo / "bench" / "head.py"), "--quick", "--dims", "32", "64",
         "--results-dir", str(tmp_path), "--doc", str(doc)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "head.json").read_text())
    assert [x["d"] for x in data["latency"]] == [32, 64] and len(data["env"]["loadavg_start"]) == 3
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "python bench/run_all.py" in text
    assert "## 2. Steering head latency" in text and "| 64 |" in text
    assert "Not measured yet: run `python bench/decode.py`" in text  # missing parts degrade to a note


@pytest.mark.slow
def test_probes_script_on_smollm2(smollm2: Path, tmp_path: Path) -> None:
    """bench/probes.py runs, records what the analysis quotes, and its KV-clear probe sees the memset."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    doc = tmp_path / "BENCH.md"
    proc = subprocess.run(
        [sys.executable, str(repo / "bench" / "probes.py"), "--quick", "--results-dir", str(tmp_path),
         "--doc", str(doc)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "probes.json").read_text())
    kv = {k["n_ctx"]: k for k in data["kv_clear"]}
    # zeroing writes the whole cache (SmolLM2 at n_ctx 8192: 2 x 30 layers x 8192 x 192 x 2 bytes = 189 MB);
    # not zeroing only marks cells free: orders of magnitude apart in CPU time, whatever the load
    assert kv[8192]["zeroing_cpu_ms"] > 10 * kv[8192]["no_zeroing_cpu_ms"]
    assert data["session"]["d"] == 576 and data["session"]["n_layer"] == 30
    assert data["head_576"]["max_rel_err"] < 1e-5 and data["matvec_4096"]["bytes"] == 4096 * 4096 * 4
    assert "## 7. Small probes behind the analysis" in doc.read_text()


def test_profile_summary_counts_each_sample_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/profile_turns.py --summarize: exclusive parts, in order, from py-spy's collapsed stacks."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import profile_turns

    raw = tmp_path / "prof.txt"
    raw.write_text(
        "<module> (x.py:1);SteeredLlama.generate (/r/finesteer_edge/steered.py:9);llama_decode (libllama.so) 6\n"
        "<module> (x.py:1);SteeredLlama.generate (/r/finesteer_edge/steered.py:9);HeadRunner.run "
        "(/r/finesteer_edge/pack/head.py:3) 1\n"
        "<module> (x.py:1);SteeredLlama.generate (/r/finesteer_edge/steered.py:9);llama_sampler_sample (l.so) 1\n"
        "<module> (x.py:1);SteeredLlama.generate (/r/finesteer_edge/steered.py:9) 1\n"
        "<module> (x.py:1);SteeredLlama.__init__ (/r/finesteer_edge/steered.py:2);read (libc.so.6) 1\n"
        "not a sample line\n"
    )
    got = profile_turns.summarize(raw)
    assert got == pytest.approx({"llama_decode": 0.6, "head (onnxruntime)": 0.1, "sampling": 0.1,
                                 "our generation loop (rest of generate)": 0.1,
                                 "other (start-up: imports, model load, self-test)": 0.1})


@pytest.mark.slow
def test_architectures_script_counts_no_callback_per_generated_token(tmp_path: Path) -> None:
    """bench/architectures.py runs; on a tap_context architecture the generation context never calls the tap
    callback (counted, so it holds under any load), while the old in-context cb_eval path calls it per node."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    doc = tmp_path / "BENCH.md"
    proc = subprocess.run(
        [sys.executable, str(repo / "bench" / "architectures.py"), "--quick", "--archs", "qwen2", "llama",
         "--results-dir", str(tmp_path), "--doc", str(doc)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    models = {m["model"]: m for m in json.loads((tmp_path / "architectures.json").read_text())["models"]}
    assert models["qwen2"]["tap_method"] == "tap_context" and models["qwen2"]["callback_calls_per_token"] == 0
    assert models["qwen2"]["callback_calls_per_token_cb_eval"] > 100  # one call per graph node
    assert models["llama"]["tap_method"] == "layer_inp" and models["llama"]["callback_calls_per_token"] is None
    assert all(m["summary"]["tokens_plain"] == 16 for m in models.values())  # endless tiny models: full turns
    assert "## 9. Per architecture" in doc.read_text()


def test_shaped_model_tokenizes_like_smollm2(smollm2: Path, tmp_path: Path) -> None:
    """bench/shaped_model.py times a real model's shape with random weights: it must cut text into the real
    tokenizer's tokens (the toy tokenizer makes ~4x as many, and every timing with it would be wrong)."""
    from finesteer_edge.llama.session import ContextSettings, LlamaSession
    from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_model

    from .conftest import load_script

    shaped = load_script("bench/shaped_model.py")
    tokens, types, merges, pre, template = shaped.smollm2_vocab(50_000)
    assert len(tokens) == len(types) == 50_000 and types[-1] == 5 and pre == "smollm"
    cfg = TinyConfig(n_layer=2, n_embd=64, n_head=2, n_head_kv=1, n_ff=128)
    model = write_tiny_model(tmp_path / "shaped.gguf", "qwen2", cfg, chat_template=template,
                             vocab=(tokens, types, merges), tokenizer_pre=pre)
    toy = write_tiny_model(tmp_path / "toy.gguf", "qwen2", cfg)
    text = "<|im_start|>user\nHow do I set up automatic bill payments for my utilities?<|im_end|>\n"
    settings = ContextSettings(n_ctx=128, n_threads=1)
    real, ours, toys = (LlamaSession(p, settings) for p in (smollm2, model, toy))
    try:
        want = real.tokenize(text)
        assert ours.tokenize(text) == want and ours.n_vocab == 50_000
        assert len(toys.tokenize(text)) > 2 * len(want)  # the negative control: the toy tokenizer is not it
    finally:
        for s in (real, ours, toys):
            s.close()

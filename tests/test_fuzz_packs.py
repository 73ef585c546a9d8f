"""Hostile inputs: fuzzed packs, control vectors and model headers end in our typed errors, and every
pack failure stops generation (fail closed) unless ``allow_unsteered`` says otherwise.

Generated cases run in a worker process (``finesteer_edge.testing.fuzz``), because llama.cpp aborts on
some malformed models: a crash, hang or big allocation there is a failing outcome, not a dead pytest.
The fast tests run a few hundred derandomised cases; the slow test and ``scripts/fuzz_packs.py`` run
>= 10,000. Regression tests below pin the inputs the fuzzer found (each failed before its fix).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from onnx import TensorProto

from finesteer_edge import SteeredLlama, SteeringPack
from finesteer_edge.errors import (
    ChecksumError,
    LayerError,
    ModelFileError,
    ModelMismatchError,
    PackError,
    PackFormatError,
)
from finesteer_edge.model_info import read_model_info
from finesteer_edge.pack.control_vector import read_control_vector
from finesteer_edge.pack.manifest import parse_manifest
from finesteer_edge.testing import fuzz
from finesteer_edge.testing.packs import make_random_pack, random_head

from .conftest import load_script, run_cli

FAST = dict(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> fuzz.FuzzBase:
    return fuzz.FuzzBase.create(tmp_path_factory.mktemp("fuzzbase"))


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    w = fuzz.FuzzWorker(timeout=60, log_dir=tmp_path_factory.mktemp("fuzzlogs"))
    yield w
    w.close()


def check(base: fuzz.FuzzBase, worker: fuzz.FuzzWorker, target: str, case: object) -> fuzz.Outcome:
    outcome = base.run(worker, target, case)
    assert not outcome.failed, f"{target} case {case!r} -> {outcome}"
    return outcome


# ------------------------------------------------------------------------------------------ generated cases
def test_fuzzed_packs_end_in_pack_errors(base: fuzz.FuzzBase, worker: fuzz.FuzzWorker) -> None:
    seen: set[str] = set()

    @settings(max_examples=300, **FAST)
    @given(case=base.strategy("pack"))
    def run(case: fuzz.PackCase) -> None:
        seen.add(check(base, worker, "pack", case).kind)

    run()
    assert seen == {"ok", "typed"}  # the strategy reaches both accepted and refused packs


def test_fuzzed_control_vectors(base: fuzz.FuzzBase, worker: fuzz.FuzzWorker) -> None:
    seen: set[str] = set()

    @settings(max_examples=120, **FAST)
    @given(case=base.strategy("control"))
    def run(case: object) -> None:
        seen.add(check(base, worker, "control", case).kind)

    run()
    assert seen == {"ok", "typed"}  # refused vectors, and mutants that are still valid and load


def test_short_campaign_reaches_accepted_and_refused_cases(base: fuzz.FuzzBase, worker: fuzz.FuzzWorker) -> None:
    """What ``scripts/fuzz_packs.py`` runs, in small: every target's strategy must produce inputs that load
    and inputs that are refused, or the campaign's "no failures" would only cover one side."""
    result = fuzz.run_campaign(base, worker, {"pack": 40, "control": 30, "model": 20}, seed=3)
    assert result.cases == {"pack": 40, "control": 30, "model": 20}
    assert not result.failures, result.summary()
    for target in result.cases:
        assert result.kinds(target) == {"ok", "typed"}, (target, result.outcomes[target])


def test_fuzzed_model_headers_never_crash_llama_cpp(base: fuzz.FuzzBase, worker: fuzz.FuzzWorker) -> None:
    """Models that pass read_model_info go on to llama.cpp (load, self-test, two tokens) in the worker."""

    @settings(max_examples=80, **FAST)
    @given(case=base.strategy("model"))
    def run(case: fuzz.ModelCase) -> None:
        check(base, worker, "model", case)

    run()


def test_fuzzed_loadable_packs_run_on_llama_cpp(base: fuzz.FuzzBase, worker: fuzz.FuzzWorker) -> None:
    @settings(max_examples=40, **FAST)
    @given(case=base.strategy("pack_run"))
    def run(case: fuzz.PackCase) -> None:
        check(base, worker, "pack_run", case)

    run()


@pytest.mark.slow
def test_full_fuzz_campaign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """>= 10,000 generated cases in one bounded run (the same as ``python scripts/fuzz_packs.py``)."""
    result = load_script("scripts/fuzz_packs.py").run(10_000, seed=1, workdir=tmp_path, quiet=True)
    with capsys.disabled():  # the count and time belong in the CI log, not only on failure
        print("\n" + result.summary())
    assert result.total >= 10_000
    assert not result.failures, result.summary()
    for target in result.cases:  # every target's strategy reaches inputs that load and inputs that are refused
        assert result.kinds(target) == {"ok", "typed"}, (target, result.outcomes[target])


# ------------------------------------------------------------------------------------------ pinned findings
def _head(base: fuzz.FuzzBase) -> onnx.ModelProto:
    return onnx.load_from_string(base.parts.head)


def _write_head(base: fuzz.FuzzBase, model: onnx.ModelProto, dest: Path) -> Path:
    """A copy of the base pack with ``model`` as head.onnx and its checksum recomputed."""
    parts = fuzz.PackParts(json.loads(json.dumps(base.parts.manifest)), model.SerializeToString(), base.parts.control)
    return fuzz.write_pack_case(parts, fuzz.PackCase(), dest, dest.parent / "outside")


def test_head_external_data_is_refused_even_next_to_the_cwd(base: fuzz.FuzzBase, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime, given bytes, still reads external data relative to the working directory: a pack
    could pull weights (or any file's bytes) from outside itself. Loaded fine before the static check."""
    m = _head(base)
    t = next(t for t in m.graph.initializer if t.name == "router_w")
    n_bytes = 4 * int(np.prod(t.dims))
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(n_bytes))):
        e = t.external_data.add()
        e.key, e.value = key, value
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0" * n_bytes)
    pack = _write_head(base, m, tmp_path / "ext")
    with pytest.raises(PackFormatError, match="external data"):
        SteeringPack.load(pack)


@pytest.mark.parametrize("mutation", [
    ("custom_op", 1, 0),      # com.microsoft contrib op: runs in onnxruntime, but is not standard ONNX
    ("custom_op", 0, 2),      # unknown domain
    ("banned_op", 0, 0),      # ConstantOfShape [32768, 32768]: a 4 GiB allocation at session start
    ("banned_op", 5, 0),      # Loop
    ("subgraph", 0, 0),       # If with sub-graphs
    ("function", 0, 0),       # model-local function
    ("huge_broadcast", 1, 0),  # [8192, 1] + [1, 8192] initializers: 256 MiB from plain broadcasting
    ("dup_graph", 0, 0),      # a second graph field, which protobuf would merge into the first
    ("sparse", 0, 0),
    ("external", 0, 2),       # absolute external-data path
])
def test_hostile_heads_are_refused_before_onnxruntime(base: fuzz.FuzzBase, tmp_path: Path, mutation: tuple) -> None:
    head = fuzz.apply_head_mutations(base.parts.head, [mutation])
    parts = fuzz.PackParts(base.parts.manifest, head, base.parts.control)
    pack = fuzz.write_pack_case(parts, fuzz.PackCase(), tmp_path / "p", tmp_path / "outside")
    with pytest.raises(PackFormatError, match="not an acceptable steering head"):
        SteeringPack.load(pack)


def test_value_edits_after_an_external_edit_are_cases_not_harness_crashes(base: fuzz.FuzzBase,
                                                                          tmp_path: Path) -> None:
    """The full campaign found it (seed 1): "init_values" on a tensor an earlier "external" edit had moved out
    of the file made the harness read that file (onnx refused the path) instead of producing a case; such a
    case is a pack whose head has external data, which the static check must refuse."""
    muts = [("init_values", 4189, 1313), ("external", 592, 10779), ("init_values", 4189, 1313)]
    head = fuzz.apply_head_mutations(base.parts.head, muts)
    parts = fuzz.PackParts(base.parts.manifest, head, base.parts.control)
    pack = fuzz.write_pack_case(parts, fuzz.PackCase(), tmp_path / "p", tmp_path / "outside")
    with pytest.raises(PackFormatError):
        SteeringPack.load(pack)


@pytest.mark.parametrize("kind", ["scs", "scs_logistic", "logistic", "always"])
def test_every_converter_head_passes_the_static_check(kind: str) -> None:
    from finesteer_edge.converters.onnx_head import build_head_onnx
    from finesteer_edge.pack.onnx_check import check_head_onnx

    for basis_rank in (0, 3):
        check_head_onnx(build_head_onnx(random_head(64, n_experts=3, basis_rank=basis_rank, gate_kind=kind,
                                                    gate_components=4)), 64)


@pytest.mark.parametrize(("text", "match"), [
    (b'{"format": "finesteer-edge-pack", "x": ' + b"1" * 5000 + b"}", "not valid JSON"),  # ValueError before
    (b'{"format": "finesteer-edge-pack", "alpha": NaN}', "not valid JSON"),
    (b'{"format": "finesteer-edge-pack", "alpha": 1e999}', "not valid JSON"),
    (b'{"format": "finesteer-edge-pack", "name": "\\ud800"}', "not valid JSON"),  # unprintable at the CLI
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
])
def test_manifest_numbers_and_strings_json_cannot_hold(text: bytes, match: str) -> None:
    with pytest.raises(PackFormatError, match=match):
        parse_manifest(text)


def test_manifest_alpha_beyond_float_range(base: fuzz.FuzzBase) -> None:
    doc = dict(base.parts.manifest, alpha=fuzz.RawJSON("1" + "0" * 400))  # OverflowError before
    with pytest.raises(PackFormatError, match="alpha must be finite"):
        parse_manifest(fuzz.dump_manifest(doc))


@pytest.mark.parametrize("field", [("name",), ("description",), ("model", "name")])
def test_manifest_text_cannot_carry_terminal_escapes(base: fuzz.FuzzBase, field: tuple) -> None:
    """`inspect` prints these strings; an escape sequence in a downloaded pack must not reach the terminal."""
    doc = fuzz.apply_manifest_mutations(base.parts.manifest, [("replace", field, "pack\x1b]0;owned\x07\x9b2J")])
    with pytest.raises(PackFormatError, match="control characters"):
        parse_manifest(fuzz.dump_manifest(doc))


@pytest.mark.parametrize("op", fuzz.FILE_OPS)
@pytest.mark.parametrize("member", ["manifest.json", "head.onnx", "control.gguf"])
def test_file_level_attacks(base: fuzz.FuzzBase, tmp_path: Path, op: str, member: str) -> None:
    """Missing members, links out of the pack (absolute, `..`, hard), directories, FIFOs (which would
    block a plain open), oversize sparse files: refused without reading; a symlinked pack dir is fine."""
    pack = fuzz.write_pack_case(base.parts, fuzz.PackCase(file_op=(op, member)), tmp_path / "pack", tmp_path / "out")
    if op in ("pack_symlink", "hardlink_out"):  # the user's own link to a pack; a hard link is the same file
        SteeringPack.load(pack)
        return
    with pytest.raises(PackFormatError):
        SteeringPack.load(pack)


MODEL_REGRESSIONS = {
    # name: (mutations, message) -- each aborted llama.cpp (GGML_ASSERT / std::terminate) before the fix
    "nan_rms_eps": ([("kv_value", 8, 0)], "not finite"),                   # GGML_ASSERT(eps >= 0.0f)
    "block_count_65535": ([("kv_value", 4, 399)], "over llama.cpp's limit"),  # n_layer <= LLAMA_MAX_LAYERS
    "experts_without_used": ([("kv_add", 3, 1)], "expert_used_count"),     # n_expert_used_max > 0
    "duplicate_tokens": ([("tokens", 0, 7)], "duplicates"),                # id_to_token.size() == token_to_id
    "alignment_1": ([("alignment", 1, 0)], "aligned"),                     # buffer pointer must be aligned
    "no_vocab": ([("kv_str", 1, 17)], "no vocabulary"),                    # type != LLAMA_VOCAB_TYPE_NONE
    "spm_without_byte_tokens": ([("kv_str", 1, 1)], "byte tokens"),       # std::out_of_range -> terminate
}


@pytest.mark.parametrize("name", sorted(MODEL_REGRESSIONS))
def test_model_headers_that_crashed_llama_cpp(base: fuzz.FuzzBase, tmp_path: Path, name: str) -> None:
    muts, match = MODEL_REGRESSIONS[name]
    p = tmp_path / f"{name}.gguf"
    p.write_bytes(fuzz.apply_gguf_mutations(base.model_bytes, muts))
    with pytest.raises(ModelFileError, match=match):
        read_model_info(p)


def test_model_errors_past_the_header_are_typed(base: fuzz.FuzzBase, worker: fuzz.FuzzWorker, tmp_path: Path) -> None:
    """Past our header check: RWKV tokenizer ids of -1 (llama_decode failed: RuntimeError), a template
    that renders nothing (ValueError), tokens that cannot spell the prompt. Untyped errors before."""
    for muts, error in (([("kv_str", 1, 15)], "ModelFileError"), ([("kv_str", 4, 12)], "ChatTemplateError")):
        p = tmp_path / "m.gguf"
        p.write_bytes(fuzz.apply_gguf_mutations(base.model_bytes, muts))
        outcome = worker.run("model", path=str(p))
        assert (outcome.kind, outcome.error) == ("typed", error), outcome


def test_control_vector_nan_and_lies(base: fuzz.FuzzBase) -> None:
    bad = {
        "nan": [("tensor_values", 0, 0)],
        "f16": [("tensor_type", 0, 0)],
        "layer0": [("tensor_name", 0, 0)],
        "huge_count": [("lie_counts", 0, 3)],
        "offset_past_end": [("lie_offset", 0, 2)],
    }
    for muts in bad.values():
        with pytest.raises(PackFormatError):
            read_control_vector(fuzz.apply_gguf_mutations(base.parts.control, muts), n_embd=32, n_layer=4)


# ------------------------------------------------------------------------------------------ the CLI
def _one_line_error(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_cli_fuzzed_packs_are_one_line_errors(base: fuzz.FuzzBase, tmp_path: Path) -> None:
    cases = {
        "manifest": fuzz.PackCase(manifest_muts=[("replace", ("name",), fuzz.RawJSON('"\\ud800"'))]),
        "head": fuzz.PackCase(head_muts=[("custom_op", 1, 0)]),
        "control": fuzz.PackCase(control_muts=[("tensor_values", 0, 0)]),
        "symlink": fuzz.PackCase(file_op=("symlink_dotdot", "head.onnx")),
    }
    for name, case in cases.items():
        pack = fuzz.write_pack_case(base.parts, case, tmp_path / name, tmp_path / f"out-{name}")
        cmd = ("generate", str(base.model), "--pack", str(pack), "--prompt", "hi", "-n", "1", "--threads", "1")
        _one_line_error(run_cli(*cmd) if name == "head" else run_cli("inspect", str(pack)))


@pytest.mark.slow
def test_cli_random_fuzzed_packs(base: fuzz.FuzzBase, tmp_path: Path) -> None:
    """A random sample of generated packs at the CLI: exit 0, or one `error:` line and exit 2."""
    n = 0

    @settings(max_examples=25, **FAST)
    @given(case=base.strategy("pack"))
    def run(case: fuzz.PackCase) -> None:
        nonlocal n
        n += 1
        pack = fuzz.write_pack_case(base.parts, case, tmp_path / "p", tmp_path / "out")
        proc = run_cli("generate", str(base.model), "--pack", str(pack), "--prompt", "hi", "-n", "2",
                       "--threads", "1", "--n-ctx", "128", "--json")
        if proc.returncode != 0:
            _one_line_error(proc)

    run()
    assert n == 25


# ------------------------------------------------------------------------------------------ fail closed
def _broken_pack(kind: str, base: fuzz.FuzzBase, tiny_model: Path, tmp_path: Path) -> Path:
    """A pack for ``tiny_model`` broken in one way: every way must stop SteeredLlama."""
    pack = make_random_pack(tiny_model, tmp_path / kind, tau=-1.0, vector_norm=60.0)
    if kind == "checksum":
        data = bytearray((pack / "control.gguf").read_bytes())
        data[-1] ^= 1
        (pack / "control.gguf").write_bytes(bytes(data))
    elif kind == "format":
        (pack / "head.onnx").write_bytes(fuzz.apply_head_mutations((pack / "head.onnx").read_bytes(),
                                                                   [("custom_op", 1, 0)]))
        _recompute(pack)
    elif kind == "fingerprint":
        _edit_manifest(pack, lambda m: m["model"].update(tokenizer_sha256="0" * 64))
    elif kind == "layer":
        _edit_manifest(pack, lambda m: m["layers"].update(steer=0))
    elif kind == "missing":
        (pack / "head.onnx").unlink()
    return pack


def _edit_manifest(pack: Path, edit) -> None:  # type: ignore[no-untyped-def]
    m = json.loads((pack / "manifest.json").read_text())
    edit(m)
    (pack / "manifest.json").write_text(json.dumps(m))


def _recompute(pack: Path) -> None:
    import hashlib

    def edit(m: dict) -> None:  # type: ignore[type-arg]
        for name in ("head.onnx", "control.gguf"):
            data = (pack / name).read_bytes()
            m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    _edit_manifest(pack, edit)


FAILURES = {"checksum": ChecksumError, "format": PackFormatError, "fingerprint": ModelMismatchError,
            "layer": LayerError, "missing": PackFormatError}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_every_pack_failure_stops_generation(kind: str, base: fuzz.FuzzBase, tiny_model: Path, tmp_path: Path) -> None:
    pack = _broken_pack(kind, base, tiny_model, tmp_path)
    with pytest.raises(FAILURES[kind]):
        SteeredLlama(tiny_model, pack, n_ctx=128, n_threads=1)
    with pytest.warns(RuntimeWarning, match="STEERING DISABLED"):
        llm = SteeredLlama(tiny_model, pack, n_ctx=128, n_threads=1, allow_unsteered=True)
    r = llm.generate("hi", max_tokens=2)
    assert llm.pack is None and not r.steered and r.gate_score is None and llm.unsteered_reason
    llm.close()


def _overflowing_pack(tiny_model: Path, tmp_path: Path) -> Path:
    """Finite weights that pass the load-time probe (inputs of 1e-3) but overflow float32 on real hidden
    states: the head returns Inf/NaN only at run time."""
    from finesteer_edge.converters.pack_writer import write_pack

    info = read_model_info(tiny_model)
    head = random_head(info.n_embd, n_experts=4, basis_rank=3, seed=0)
    head.mlp_w1 = (np.sign(head.mlp_w1) * 3e37).astype(np.float32)
    return write_pack(tmp_path / "overflow", head=head, fingerprint=info.fingerprint, gate_layer=1, steer_layer=2,
                      alpha=1.0, tau=-1.0, mean_vector={2: head.experts.mean(0)}, model_name=info.name)


def test_head_nan_at_run_time_stops_the_turn(tiny_model: Path, tmp_path: Path) -> None:
    pack = _overflowing_pack(tiny_model, tmp_path)
    llm = SteeredLlama(tiny_model, pack, n_ctx=128, n_threads=1)  # loads: the probe stays finite
    with pytest.raises(PackFormatError, match="NaN or Inf"):
        llm.generate("Tell me a story about the sea.", max_tokens=4)
    with pytest.raises(PackFormatError, match="NaN or Inf"):
        list(llm.chat([{"role": "user", "content": "hi"}], max_tokens=4))  # type: ignore[arg-type]
    assert not llm.session.control_active
    # allow_unsteered covers loading only: a head that fails at run time still stops every turn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strict_llm = SteeredLlama(tiny_model, pack, n_ctx=128, n_threads=1, allow_unsteered=True)
    with pytest.raises(PackFormatError):
        strict_llm.generate("hi", max_tokens=2)
    proc = run_cli("generate", str(tiny_model), "--pack", str(pack), "--prompt", "hi", "-n", "2", "--threads", "1")
    assert "NaN or Inf" in _one_line_error(proc)
    assert proc.stdout.strip() == ""  # not a single unsteered token went out


def test_strength_that_overflows_the_vector_stops_the_turn(tiny_model: Path, tmp_path: Path) -> None:
    pack = make_random_pack(tiny_model, tmp_path / "p", tau=-1.0, vector_norm=60.0)
    llm = SteeredLlama(tiny_model, pack, n_ctx=128, n_threads=1, strength=1e38)
    with pytest.raises(PackError, match="not finite"):
        llm.generate("hi", max_tokens=2)
    assert not llm.session.control_active


def test_worker_reports_bugs_crashes_and_hangs(worker: fuzz.FuzzWorker) -> None:
    """The harness itself: an untyped exception, a dying worker and a silent one are all failures, and
    the next case gets a fresh worker."""
    out = worker.run("control", path="/nonexistent", n_embd=1, n_layer=1)
    assert out.kind == "bug" and out.failed  # FileNotFoundError is not a PackFormatError
    before = worker.restarts
    out = worker.run("abort")
    assert out.kind == "crash" and "SIGABRT" in out.error and worker.restarts == before + 1
    timeout, worker.timeout = worker.timeout, 0.5
    try:
        out = worker.run("sleep", seconds=30)
    finally:
        worker.timeout = timeout
    assert out.kind == "hang" and worker.restarts == before + 2
    assert worker.run("control", path="/nonexistent", n_embd=1, n_layer=1).kind == "bug"

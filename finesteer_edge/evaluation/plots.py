"""PNG plots of evaluation results (matplotlib, Agg backend; the ``eval`` extra).

Every plot is drawn from the results dict alone (the same dict that becomes results.json), so a
figure can always be re-drawn from the JSON and never shows a number the JSON lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FinesteerError

COLORS = {"base": "#555555", "caa": "#1f77b4", "cast": "#ff7f0e", "mose": "#2ca02c", "finesteer": "#d62728",
          "finesteer_fast": "#9467bd"}
GROUP_COLORS = {"harmful": "#d62728", "truthfulqa": "#d62728", "benign": "#2ca02c", "borderline": "#ff7f0e"}


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError as exc:
        raise FinesteerError("plots need matplotlib: pip install 'finesteer-edge[eval]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def gate_histogram(gate: dict[str, Any], path: Path, *, title: str) -> Path:
    """Score histograms per group (targets first) with tau marked."""
    plt = _pyplot()
    scores: dict[str, list[float]] = gate["scores"]
    tau = float(gate["tau"])
    allv = [x for xs in scores.values() for x in xs] + [tau]
    lo, hi = min(allv), max(allv)
    pad = (hi - lo) * 0.05 or 0.05
    bins = [lo - pad + i * (hi - lo + 2 * pad) / 40 for i in range(41)]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for group, xs in scores.items():
        rate = gate["open_rate"].get(group)
        label = f"{group} (n={len(xs)}, open {rate:.0%})" if rate is not None else group
        ax.hist(xs, bins=bins, alpha=0.5, label=label, color=GROUP_COLORS.get(group))
    ax.axvline(tau, color="black", linestyle="--", linewidth=1.2, label=f"tau = {tau:.4g}")
    ax.set_xlabel("gate score (steer iff score >= tau)")
    ax.set_ylabel("prompts")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Write the PNG (creating its folder) and free the figure: pyplot keeps every open figure alive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def safety_tradeoff(res: dict[str, Any], path: Path) -> Path:
    """Harmful refusal vs over-refusal across strengths (validation), one curve per method; test points starred."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, sharey=True)
    for ax, group in zip(axes, ("benign", "borderline"), strict=True):
        key = f"over_refusal_{group}"
        for name, pts in res.get("sweep", {}).items():
            xs = [p[key] for p in pts if p.get(key) is not None]
            ys = [p["refusal_harmful"] for p in pts if p.get(key) is not None]
            if not xs:
                continue
            ax.plot(xs, ys, marker="o", color=COLORS.get(name), label=f"{name} (val)", alpha=0.8)
            for p in pts:
                if p.get(key) is not None and p["strength"] is not None:
                    ax.annotate(f"{p['strength']:g}", (p[key], p["refusal_harmful"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3), color=COLORS.get(name))
        for name, m in res["methods"].items():
            if m.get(key) is None:
                continue
            ax.scatter([m[key]], [m["refusal_harmful"]], marker="*", s=140, color=COLORS.get(name),
                       edgecolors="black", linewidths=0.5, label=f"{name} (test)", zorder=5)
        limit = res["settings"].get(f"max_{group}")
        if limit is not None:
            ax.axvline(limit, color="gray", linestyle=":", linewidth=1)
        ax.axhline(0.9, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel(f"over-refusal on {group}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"refusal vs over-refusal ({group}); labels = strength")
    axes[0].set_ylabel("refusal on harmful")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(plt, fig, path)


def truthfulqa_strength(res: dict[str, Any], path: Path) -> Path:
    """Validation MC1 vs strength, one curve per method; the base model as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, pts in res.get("sweep", {}).items():
        if name == "base":
            ax.axhline(pts[0]["mc1"], color=COLORS["base"], linestyle="--", label="base (val)")
            continue
        ax.plot([p["strength"] for p in pts], [p["mc1"] for p in pts], marker="o", color=COLORS.get(name), label=name)
    ax.set_xlabel("strength (multiplier on the pack's vector)")
    ax.set_ylabel("MC1 (validation)")
    ax.set_title("TruthfulQA MC1 vs strength (validation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)


def suite_plots(res: dict[str, Any], out_dir: Path, *, prefix: str = "") -> dict[str, str]:
    """All plots of one suite's results; returns {kind: file name}."""
    suite = res["suite"]
    files = {"gate_histogram": out_dir / f"{prefix}gate_hist_{suite}.png"}
    gate_histogram(res["gate"], files["gate_histogram"], title=f"{suite}: gate scores (test split)")
    if suite == "safety" and res.get("sweep"):
        files["tradeoff"] = out_dir / f"{prefix}safety_tradeoff.png"
        safety_tradeoff(res, files["tradeoff"])
    if suite == "truthfulqa" and res.get("sweep"):
        files["strength"] = out_dir / f"{prefix}truthfulqa_strength.png"
        truthfulqa_strength(res, files["strength"])
    return {k: v.name for k, v in files.items()}

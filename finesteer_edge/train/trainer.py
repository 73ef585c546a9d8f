"""``train``: fit the SCS gate and the MoSE head on an activations file and save a checkpoint + report."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import file_sha256
from ..errors import ActivationsError, DataError
from ..vocab import GATE_CANDIDATE_KINDS, HEAD_FEATURES, TRAINED_GATE_KINDS, check_choice
from .activations import Activations, load_activations
from .checkpoint import save_checkpoint
from .gate_select import nan_to_none
from .mose import K_RANGE, build_experts, make_module, train_mose
from .scs import GateFit, choose_gate, fit_gate

DEFAULT_ALPHA = 1.0
SELECTION_TARGETS = "MSE over the validation targets"
SELECTION_NEGATIVES = "weighted MSE over the validation targets + negatives (zero target)"
"""What ``mose.best_val_mse`` (the loss that picks the best epoch) is over: with negatives in training it is
not the targets-only ``val_mse``, and the report must not call both "val MSE" (issue 12)."""


@dataclass
class TrainConfig:
    alpha: float = DEFAULT_ALPHA
    seed: int = 0
    gate_kind: str = "auto"
    """``scs`` (published), ``scs_logistic`` (supervised read-out) or ``auto`` (choose on validation)."""
    gate_layer: int | None = None
    """None: choose among the activations' candidate layers on validation."""
    variance: float = 0.9
    max_components: int = 128
    k_basis: int = 10
    hidden: int | None = None
    epochs: int = 100
    batch: int = 136
    lr: float = 5e-4
    patience: int = 15
    threads: int = 2
    gate_acts: list[Path] = field(default_factory=list)
    """Gate-only activations files (``extract --gate-only``): the gate is fitted on their rows plus the
    main file's, so the expensive MoSE extraction need not be repeated for gate data."""
    gate_select: str = "val"
    """``val``: choose the gate on the validation split (as before); ``loso``: leave-one-source-out over
    sources and conversation shapes (gate_select.py). ``--gate-acts`` implies ``loso``."""
    gate_layers: list[int] | None = None
    """LOSO: candidate layers (default: all extracted)."""
    gate_features: list[str] | None = None
    """LOSO: gate features to choose from (None: every one all gate files hold, ``finesteer_edge.vocab``)."""
    head_feature: str = "last"
    """What the MoSE head reads at the steer layer (``finesteer_edge.vocab.HEAD_FEATURES``): the last prompt token's
    state (as published) or a pooled state of the user message (``f_<feature>.<steer layer>`` in the activations
    file; extract writes it when the steer layer is among ``--gate-layers``)."""
    head_acts: list[Path] = field(default_factory=list)
    """Gate-only activations files (``extract --gate-only``) whose rows also train the head (issue 11): a harmful row
    with the mean training shift as its target, any other row with a zero target at ``negative_weight``, in its own
    split. Rows of the sources the main file holds are skipped (they are there, with their own shifts). Why: the
    main file's prompts come from one harmful and one benign source, single turns; the gate files hold the
    realistic-use prompts (topic-matched benign twins, hard negatives, other phrasings) in conversation shapes, and a
    head that never saw them shrinks its vector on harmful ones and keeps it on their benign twins."""
    head_exclude: list[str] = field(default_factory=list)
    """Sources left out of the head's training, in ``head_acts`` and in the main file (a name, or a prefix ending in
    ``:`` such as ``tpl:``; the main file's rows of them train neither the head nor its mean vector and experts): a
    leave-sources-out check of what the head learned (bench/head_reach.py, bench/clean_refusal.py --heldout-only)."""
    negative_weight: float = 1.0
    """Also train MoSE on negatives (prompts not to steer) with a zero target, at this weight; 0 = targets
    only, as published. Our addition: it makes the head itself propose (almost) nothing for prompts that
    should not be steered, so a gate false positive costs little (measured on SmolLM2 safety validation:
    mean vector norm 35 on targets vs 4 on negatives, target cosine unchanged at 0.69)."""


def train(acts_path: Path, out: Path, cfg: TrainConfig) -> dict[str, Any]:
    import torch

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    torch.set_num_threads(cfg.threads)  # fixed threads + seeded init/shuffle: bit-identical reruns (tested)
    t0 = time.perf_counter()
    acts = load_activations(acts_path)
    _check_not_zeroed(acts, acts_path)
    selection: dict[str, Any] | None = None
    if cfg.gate_acts or cfg.gate_select == "loso":
        gate, selection = _select_gate_loso(acts, cfg)
        gate_table = selection["candidates"]
    else:
        gate, gate_table = _fit_gates(acts, cfg)

    delta, has_delta = _variant_deltas(acts)
    keep = _head_kept(acts, cfg.head_exclude)
    train_m = acts.mask(split="train", target=True) & has_delta & keep
    val_m = acts.mask(split="val", target=True) & has_delta & keep
    h_steer_in = head_inputs(acts, cfg.head_feature)
    x_tr, y_tr = h_steer_in[train_m], delta[train_m]
    x_va, y_va = h_steer_in[val_m], delta[val_m]
    original = acts.mask(split="train", target=True) & (acts.has_delta == 1) & keep
    experts = build_experts(acts.delta[original], k_basis=cfg.k_basis, k_range=K_RANGE, seed=cfg.seed)
    mean_delta = acts.delta[original].mean(0)
    fit_x, fit_y, fit_w = x_tr, y_tr, None
    val_x, val_y, val_w = x_va, y_va, None
    with_negatives = cfg.negative_weight > 0 and bool((acts.mask(split="train", target=False) & keep).any())
    if with_negatives:
        fit_x, fit_y, fit_w = _with_negatives(acts, h_steer_in, x_tr, y_tr, "train", cfg.negative_weight, keep)
        val_x, val_y, val_w = _with_negatives(acts, h_steer_in, x_va, y_va, "val", cfg.negative_weight, keep)
    head_rows = _head_rows(acts, cfg, mean_delta) if cfg.head_acts else {}
    if head_rows:
        fit_x, fit_y, fit_w = _join((fit_x, fit_y, fit_w), head_rows["train"])
        val_x, val_y, val_w = _join((val_x, val_y, val_w), head_rows["val"])
    scale = float(np.median(np.linalg.norm(x_tr, axis=1)))
    if not (math.isfinite(scale) and scale > 0):
        raise ActivationsError(f"{acts_path}: the steer-layer hidden states of the training targets are mostly zero")
    input_scale = 1.0 / scale
    gamma0 = float(np.median(np.linalg.norm(y_tr, axis=1)))
    torch.manual_seed(cfg.seed)
    module = make_module(acts.n_embd, experts.prototypes, experts.basis, hidden=cfg.hidden, gamma=gamma0,
                         input_scale=input_scale)
    result = train_mose(module, fit_x, fit_y, val_x, val_y, lr=cfg.lr, epochs=cfg.epochs, batch=cfg.batch,
                        patience=cfg.patience, seed=cfg.seed, w_train=fit_w, w_val=val_w)
    quality = _quality(module, x_va, y_va, mean_delta, h_steer_in[acts.mask(split="val", target=False) & keep]) \
        if len(x_va) else {}

    sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    tensors = {
        "V": gate.components, "m": gate.mean, "C": sd["C"], "U": sd["U"],
        "W_q": sd["query.weight"], "b_q": sd["query.bias"], "W_k": sd["key.weight"], "b_k": sd["key.bias"],
        "W_v": sd["value.weight"], "b_v": sd["value.bias"], "mlp.W1": sd["mix.0.weight"], "mlp.b1": sd["mix.0.bias"],
        "mlp.W2": sd["mix.2.weight"], "mlp.b2": sd["mix.2.bias"], "t": sd["t"], "gamma": sd["gamma"],
        "input_scale": sd["input_scale"], "mean_delta": mean_delta,
    }
    if gate.weights is not None:
        tensors["gate_w"] = gate.weights
    report = {
        "activations": {"file": str(acts_path), "sha256": file_sha256(acts_path), "task": acts.meta.get("task"),
                        "rows": int(acts.label.shape[0]), "data_files": acts.meta.get("data_files", {})},
        "gate": {"kind": gate.kind, "layer": gate.layer, "feature": gate.feature, "tau": gate.tau,
                 "components": int(gate.components.shape[1]),
                 "explained_variance": gate.explained, "val": gate.metrics, "candidates": gate_table,
                 "selection": "leave-one-source-out" if selection else "validation",
                 "gate_acts": [{"file": str(p), "sha256": file_sha256(p)} for p in cfg.gate_acts]},
        "experts": {"K": int(experts.prototypes.shape[0]), "calinski_harabasz": experts.ch_table,
                    "cluster_sizes": experts.sizes, "basis_rank": int(experts.basis.shape[1])},
        "mose": {"n_train": int(len(x_tr)), "n_val": int(len(x_va)), "head_feature": cfg.head_feature,
                 "n_train_shaped": int((train_m & _shaped(acts)).sum()),
                 "head_acts": {split: {"mean_shift": int((rows[1] != 0).any(1).sum()),
                                       "zero": int((rows[1] == 0).all(1).sum())}
                               for split, rows in head_rows.items()},
                 "n_train_negatives": int(len(fit_x) - len(x_tr)), "n_val_negatives": int(len(val_x) - len(x_va)),
                 "negative_weight": cfg.negative_weight if with_negatives else 0.0,
                 "best_epoch": result.best_epoch,
                 # the early-stopping loss (key kept for readers): the weighted MSE over the validation targets
                 # and, when trained with them, the zero-target negatives; "val_mse" is over the targets only
                 "best_val_mse": result.best_val, "selection_loss": SELECTION_NEGATIVES if with_negatives
                 else SELECTION_TARGETS, "stopped_early": result.stopped_early,
                 "input_scale": input_scale, "gamma": float(sd["gamma"]), "t": float(sd["t"]),
                 "history": result.history, **quality},
        "alpha": cfg.alpha,
        "seed": cfg.seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "versions": {"torch": torch.__version__},
    }
    config = {
        "model": acts.meta["model"],
        "model_name": acts.meta.get("model_name", ""),
        "gate": {"kind": gate.kind, "layer": gate.layer, "tau": gate.tau, "bias": gate.bias, "feature": gate.feature},
        "steer_layer": acts.steer_layer,
        "head_feature": cfg.head_feature,
        "alpha": cfg.alpha,
        "experts": int(experts.prototypes.shape[0]),
        "basis_rank": int(experts.basis.shape[1]),
        "hidden": int(sd["mix.0.weight"].shape[0]),
        "task": acts.meta.get("task"),
        "provenance": {"activations_sha256": report["activations"]["sha256"],
                       "data_files": acts.meta.get("data_files", {}), "seed": cfg.seed,
                       "train_config": {k: ([str(p) for p in v] if k in ("gate_acts", "head_acts") else v)
                                        for k, v in vars(cfg).items()}},
        # strict JSON: a metric a split cannot give (AUROC or FPR with no negatives) is null, not NaN
        "metrics": nan_to_none({"gate_val": gate.metrics, "mose_val": quality}),
    }
    save_checkpoint(out, tensors, config, extra_files={"report.json": json.dumps(report, indent=2, default=float),
                                                        "report.md": render_report(report)})
    return report


def _select_gate_loso(acts: Activations, cfg: TrainConfig) -> tuple[GateFit, dict[str, Any]]:
    from .gate_select import candidates, gate_data, runtime_features, select_gate

    files = [acts] + [load_activations(p) for p in cfg.gate_acts]
    for p, a in zip(cfg.gate_acts, files[1:], strict=True):
        if a.fingerprint != acts.fingerprint:
            raise DataError(f"{p}: gate activations of another model than {acts.meta.get('model_name', '?')}")
    data = gate_data(files)
    layers = [cfg.gate_layer] if cfg.gate_layer is not None else (cfg.gate_layers or data.layers)
    missing = sorted(set(layers) - set(data.layers))
    if missing:
        raise DataError(f"gate layers {missing} were not extracted in every file; available: {data.layers}")
    kinds = GATE_CANDIDATE_KINDS if cfg.gate_kind == "auto" else (cfg.gate_kind,)
    features = tuple(cfg.gate_features) if cfg.gate_features else runtime_features(data)
    missing_f = sorted(set(features) - set(data.features()))
    if missing_f:
        raise DataError(f"gate features {missing_f} are not in every gate file (pooled features come from "
                        f"extract --gate-only); available: {data.features()}")
    return select_gate(data, candidates(layers, kinds, features), seed=cfg.seed)


def _fit_gates(acts: Activations, cfg: TrainConfig) -> tuple[GateFit, list[dict[str, Any]]]:
    tr, va = acts.mask(split="train"), acts.mask(split="val")
    y = acts.label.astype(int)
    groups = acts.groups(with_variant=True)
    if not (va & (acts.label == 1)).any():
        raise DataError("the activations hold no validation targets: the gate threshold is calibrated on them")
    layers = [cfg.gate_layer] if cfg.gate_layer is not None else sorted(acts.layers)
    if cfg.gate_layer is not None and cfg.gate_layer not in acts.layers:
        raise DataError(f"gate layer {cfg.gate_layer} was not extracted; available: {sorted(acts.layers)}")
    has_negatives = bool((tr & (acts.label == 0)).any())
    kinds = [cfg.gate_kind] if cfg.gate_kind != "auto" else [k for k in TRAINED_GATE_KINDS
                                                             if k == "scs" or has_negatives]
    fits = []
    for layer in layers:
        h = acts.layers[layer]
        for kind in kinds:
            fits.append(fit_gate(kind, layer, h[tr], y[tr], h[va], y[va], groups[va], variance=cfg.variance,
                                 cap=cfg.max_components, seed=cfg.seed))
    table = [{"kind": f.kind, "layer": f.layer, "tau": f.tau, **{k: v for k, v in f.metrics.items()
                                                                 if isinstance(v, (int, float))}} for f in fits]
    return choose_gate(fits), table


def _check_not_zeroed(acts: Activations, path: Path) -> None:
    """Refuse hidden states that are all zero for the training targets before anything divides by their norm.

    No model's residual stream is zero; such a file was edited or corrupted (a fuzz finding: it crashed
    training with ZeroDivisionError).
    """
    rows = acts.mask(split="train", target=True)
    for name, h in (("steer layer", acts.h_steer), *((f"layer {n}", v) for n, v in sorted(acts.layers.items()))):
        if rows.any() and not np.abs(h[rows]).any():
            raise ActivationsError(f"{path}: the hidden states at the {name} are all zero for the training "
                                   "targets; these are not activations of a model")


def head_inputs(acts: Activations, feature: str, layer: int | None = None) -> np.ndarray:
    """(M, d) what the head reads for every row: the last-token state or a pooled feature at ``layer`` (default:
    the file's steer layer)."""
    check_choice(feature, HEAD_FEATURES, "head feature")
    layer = acts.steer_layer if layer is None else layer
    if feature == "last":
        got = acts.h_steer if layer == acts.steer_layer else acts.layers.get(layer)
    else:
        got = acts.features.get(feature, {}).get(layer)
    if got is None:
        raise DataError(f"the activations hold no {feature} feature at the steer layer {layer}; extract with the "
                        f"steer layer among --gate-layers (it has {sorted(acts.features.get(feature, acts.layers))})")
    return got


def _head_rows(acts: Activations, cfg: TrainConfig, target: np.ndarray) -> dict[str, tuple[np.ndarray, ...]]:
    """Per split, the rows of ``cfg.head_acts`` that train the head: (x, y, weight), see ``TrainConfig.head_acts``."""
    own = set(acts.meta["rows"].get("source") or ())
    parts: dict[str, list[tuple[np.ndarray, ...]]] = {"train": [], "val": []}
    for path in cfg.head_acts:
        a = load_activations(path)
        if a.fingerprint != acts.fingerprint:
            raise DataError(f"{path}: activations of another model than {acts.meta.get('model_name', '?')}")
        x = head_inputs(a, cfg.head_feature, acts.steer_layer)
        keep = _sources_kept(a, cfg.head_exclude) & np.array([s not in own for s in a.meta["rows"]["source"]],
                                                             dtype=bool)
        for split in parts:
            m = keep & a.mask(split=split)
            harmful = a.label[m] == 1
            y = np.where(harmful[:, None], target[None, :], 0.0).astype(np.float32)
            w = np.where(harmful, 1.0, cfg.negative_weight)
            parts[split].append((x[m], y, w))
    out = {split: tuple(np.concatenate([p[i] for p in ps]) for i in range(3)) for split, ps in parts.items()}
    if not len(out["train"][0]):
        raise DataError("--head-acts: no rows of a source the main activations do not hold")
    return out


def _head_kept(acts: Activations, exclude: list[str]) -> np.ndarray:
    """The main file's rows the head (and the mean vector, and the experts) may learn from: all but those of the
    ``head_exclude`` sources, which ``extract --realistic-data`` puts in the main file too."""
    keep = _sources_kept(acts, exclude)
    if exclude and not (keep & acts.mask(split="train", target=True) & (acts.has_delta == 1)).any():
        raise DataError("--head-exclude leaves no training target with a shift in the activations")
    return keep


def _sources_kept(acts: Activations, exclude: list[str]) -> np.ndarray:
    """Rows whose source is none of ``exclude`` (:func:`source_matches`)."""
    sources = acts.meta["rows"].get("source") or [""] * acts.label.shape[0]
    return np.array([not source_matches(str(s), exclude) for s in sources], dtype=bool)


def source_matches(source: str, names: list[str]) -> bool:
    """Whether a row's source is one of ``names``: a source name, or a prefix ending in ``:`` (``tpl:``)."""
    return any(source == n or (n.endswith(":") and source.startswith(n)) for n in names)


def _join(a: tuple[np.ndarray, np.ndarray, np.ndarray | None], b: tuple[np.ndarray, ...]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, w = a
    w = np.ones(len(x)) if w is None else w
    return np.concatenate([x, b[0]]), np.concatenate([y, b[1]]), np.concatenate([w, b[2]])


def _shapes(acts: Activations) -> list[str]:
    """Every row's conversation shape (files from before shaped rows have none: all ``single``)."""
    return acts.meta["rows"].get("shape") or ["single"] * acts.label.shape[0]


def _shaped(acts: Activations) -> np.ndarray:
    return np.array([s != "single" for s in _shapes(acts)], dtype=bool)


def _variant_deltas(acts: Activations) -> tuple[np.ndarray, np.ndarray]:
    """Deltas for every target row: a style rewrite (id ``orig~style``) or a conversation shape of the prompt (id
    ``orig@shape``, extract ``--shaped-fraction``) shares its original's shift.

    The rewrite asks for the same thing, so the same refusal-minus-compliance contrast applies; this teaches MoSE
    to answer a harmful question as it answers the harmful imperative it came from, and a request after a few
    exchanges or under a system prompt as it answers the request alone.
    """
    delta = acts.delta.copy()
    has = acts.has_delta == 1
    ids = acts.meta["rows"]["id"]
    shapes = _shapes(acts)
    index = {rid: i for i, rid in enumerate(ids) if has[i]}
    for i, (rid, shape) in enumerate(zip(ids, shapes, strict=True)):
        if has[i] or acts.label[i] != 1:
            continue
        suffix = f"@{shape}"
        if shape != "single" and rid.endswith(suffix):
            base = rid[: -len(suffix)]
        elif "~" in rid:
            base = rid.rsplit("~", 1)[0]
        else:
            continue
        j = index.get(base)
        if j is not None:
            delta[i] = acts.delta[j]
            has[i] = True
    return delta, has


def _with_negatives(acts: Activations, h: np.ndarray, x: np.ndarray, y: np.ndarray, split: str,
                    weight: float, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    neg = h[acts.mask(split=split, target=False) & keep]
    xs = np.concatenate([x, neg])
    ys = np.concatenate([y, np.zeros_like(neg)])
    ws = np.concatenate([np.ones(len(x)), np.full(len(neg), weight)])
    return xs, ys, ws


def _quality(module: Any, x: np.ndarray, y: np.ndarray, mean_delta: np.ndarray,
             x_neg: np.ndarray) -> dict[str, float]:
    import torch

    with torch.no_grad():
        pred = module(torch.from_numpy(x.astype(np.float32)))[0].numpy()
        pred_neg = module(torch.from_numpy(x_neg.astype(np.float32)))[0].numpy() if len(x_neg) else None

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))

    return {
        "val_mse": float(np.mean((pred - y) ** 2)),
        "val_mse_mean_vector": float(np.mean((mean_delta[None] - y) ** 2)),
        "val_cosine": cos(pred, y),
        "val_cosine_mean_vector": cos(np.broadcast_to(mean_delta, y.shape), y),
        "val_norm_targets": float(np.linalg.norm(pred, axis=1).mean()),
        "val_norm_negatives": float(np.linalg.norm(pred_neg, axis=1).mean()) if pred_neg is not None else None,
        "true_norm_targets": float(np.linalg.norm(y, axis=1).mean()),
    }


def render_report(r: dict[str, Any]) -> str:
    g, e, m = r["gate"], r["experts"], r["mose"]
    lines = [
        "# Training report",
        "",
        f"Activations: `{r['activations']['file']}` (task {r['activations']['task']}, {r['activations']['rows']} rows, "
        f"sha256 {r['activations']['sha256'][:16]}...). Seed {r['seed']}, alpha {r['alpha']}, {r['seconds']} s.",
        "",
        "## Gate (SCS)",
        "",
        f"Chosen: **{g['kind']}** at layer **{g['layer']}**, {g['components']} components "
        f"({g['explained_variance']:.1%} of target variance), tau = {g['tau']:.4f} ({g['val'].get('tau_method', '')}).",
        "",
    ]
    if g.get("selection") == "leave-one-source-out":
        lines += _loso_lines(g)
    else:
        lines += ["| kind | layer | tau | val AUROC | val recall | val FPR | balanced acc | margin |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in r["gate"]["candidates"]:
            lines.append(f"| {c['kind']} | {c['layer']} | {c['tau']:.4f} | {c['auroc']:.3f} | {c['recall']:.3f} | "
                         f"{c['fpr']:.3f} | {c['balanced_accuracy']:.3f} | {c['margin']:.2f} |")
    fprs = ", ".join(f"{k[4:]} {v:.3f}" for k, v in g["val"].items() if k.startswith("fpr_"))
    recalls = ", ".join(f"{k[7:]} {v:.3f}" for k, v in g["val"].items() if k.startswith("recall_"))
    lines += ["", f"Chosen gate on validation: recall {g['val']['recall']:.3f}"
              + (f" ({recalls})" if recalls else "") + f", FPR {g['val']['fpr']:.3f} ({fprs}).",
              "", "## Experts (MoSE)", "",
              f"K = {e['K']} by Calinski-Harabasz; cluster sizes {e['cluster_sizes']}; residual basis rank "
              f"{e['basis_rank']}.", "", "| K | Calinski-Harabasz |", "|---:|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in e["calinski_harabasz"].items()]
    n_neg_tr, n_neg_va = m.get("n_train_negatives", 0), m.get("n_val_negatives", 0)
    lines += ["", f"Trained on {m['n_train']} targets"
              + (f" + {n_neg_tr} negatives (zero target, weight {m['negative_weight']:g})" if n_neg_tr else "")
              + f", validated on {m['n_val']} targets" + (f" + {n_neg_va} negatives" if n_neg_va else "")
              + f"; best epoch {m['best_epoch']} by the "
              f"{_selection(m)}{', stopped early' if m['stopped_early'] else ''}.", ""]
    if "val_mse" in m:
        lines += [f"Validation targets ({m['n_val']} rows) at the best epoch: MSE {m['val_mse']:.5f} "
                  f"(static mean {m['val_mse_mean_vector']:.5f}); cosine to the true shift {m['val_cosine']:.3f} "
                  f"(static mean vector {m['val_cosine_mean_vector']:.3f}).", ""]
    lines += ["Loss curve (the val column is the selection loss above).", "",
              "| epoch | train loss | val selection loss | lr |", "|---:|---:|---:|---:|"]
    hist = m["history"]
    shown = hist[:: max(1, len(hist) // 20)]
    if hist and shown[-1] is not hist[-1]:
        shown.append(hist[-1])
    for h in shown:
        lines.append(f"| {h['epoch']} | {h['train_mse']:.5f} | {h['val_mse']:.5f} | {h['lr']:.2e} |")
    return "\n".join(lines) + "\n"


def _selection(m: dict[str, Any]) -> str:
    """``selection loss X (what it is over)``; a report from before the field existed says what it was then."""
    what = m.get("selection_loss") or "validation loss of early stopping"
    if what == SELECTION_NEGATIVES:
        what = f"weighted MSE over val targets + negatives, weight {m['negative_weight']:g}"
    elif what == SELECTION_TARGETS:
        what = "MSE over val targets"
    return f"selection loss {m['best_val_mse']:.5f} ({what})"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _loso_lines(g: dict[str, Any]) -> list[str]:
    """Leave-one-source-out table of every candidate, then the chosen gate per source and per shape."""
    lines = ["Selected by leave-one-source-out: each candidate is fitted without one source fold, calibrated on "
             "the other sources' validation rows and scored on the left-out fold; score = mean of (macro recall "
             "- macro FPR over folds) and (worst shape recall - worst shape FPR).", "",
             "| candidate | LOSO recall | LOSO FPR | worst-shape recall | worst-shape FPR | LOSO AUROC | score |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in sorted(g["candidates"], key=lambda c: -c["score"]):
        auc = "-" if c["loso_auroc"] is None else f"{c['loso_auroc']:.3f}"
        lines.append(f"| {c['candidate']} | {c['loso_recall']:.3f} | {c['loso_fpr']:.3f} | "
                     f"{c['loso_min_shape_recall']:.3f} | {c['loso_max_shape_fpr']:.3f} | {auc} | {c['score']:.3f} |")
    v = g["val"]
    for title, key in (("Chosen gate, held-out source fold (LOSO)", None), ("Chosen gate, validation split", "val")):
        src = v["loso"]["by_source"] if key is None else v["val_by_source"]
        shp = v["loso"]["by_shape"] if key is None else v["val_by_shape"]
        lines += ["", f"**{title}** per source and per conversation shape:", "",
                  "| source / shape | rows | harmful | recall | FPR |", "|---|---:|---:|---:|---:|"]
        for name, t in [*src.items(), *((f"shape: {k}", x) for k, x in shp.items())]:
            lines.append(f"| {name} | {t['n']} | {t['n_harmful']} | {_pct(t['recall'])} | {_pct(t['fpr'])} |")
    curve = v.get("threshold_curve")
    if curve:
        lines += ["", "**Chosen gate, held-out trade-off per threshold** (`--gate-threshold`, "
                  "`SteeringSettings(threshold=...)`; each fold's calibrated threshold moved by the same step):", "",
                  "| threshold | step | recall (mean over sources) | FPR (mean over sources) | worst-shape recall "
                  "| worst-shape FPR |", "|---|---:|---:|---:|---:|---:|"]
        for r in curve:
            mark = " (tau)" if r["margin"] == 0 else ""
            lines.append(f"| {r['threshold']:.4f}{mark} | {r['margin']:+g} | {_pct(r['loso_recall'])} | "
                         f"{_pct(r['loso_fpr'])} | {_pct(r['loso_min_shape_recall'])} | "
                         f"{_pct(r['loso_max_shape_fpr'])} |")
    return lines


def load_report(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "report.json").read_text())


def summarize(report: dict[str, Any]) -> str:
    g, e, m = report["gate"], report["experts"], report["mose"]
    parts = [
        f"gate: {g['kind']} @ layer {g['layer']}, tau {g['tau']:.4f}, val recall {g['val']['recall']:.3f}, "
        f"FPR {g['val']['fpr']:.3f}, AUROC {g['val']['auroc'] or float('nan'):.3f}"
        + (f", chosen by leave-one-source-out: {g['val']['candidate']}" if g.get("selection") == "leave-one-source-out"
           else ""),
        f"experts: K={e['K']} sizes {e['cluster_sizes']}, CH "
        + "{" + ", ".join(f"{k}: {v:.1f}" for k, v in e["calinski_harabasz"].items()) + "}",
        f"mose: best epoch {m['best_epoch']}, {_selection(m)}"
        + (f"; val targets: MSE {m['val_mse']:.5f} (static mean {m['val_mse_mean_vector']:.5f}), cosine "
           f"{m['val_cosine']:.3f} (static {m['val_cosine_mean_vector']:.3f})" if "val_mse" in m else ""),
    ]
    return "\n".join(parts)

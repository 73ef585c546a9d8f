"""``convert`` importers: official FineSteer / finesteer_moe torch checkpoints and control-vector GGUFs.

The synthetic checkpoints are written by tiny torch modules that mirror the research code's parameter
names and forward passes (layouts of jzhang538/FineSteer ``SteeringModel`` and YukinoAsuna/FineSteer
``finesteer_moe.MoSE``), saved with ``torch.save`` exactly as that code saves them. Each is converted
into a pack whose ONNX head must reproduce the module, and loaded and run on the tiny GGUF through
real llama.cpp.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from torch import nn

from finesteer_edge import SteeredLlama, SteeringPack
from finesteer_edge.converters.convert import convert
from finesteer_edge.converters.importers.control_vector import import_control_vector
from finesteer_edge.converters.importers.torch_checkpoints import import_torch_checkpoint
from finesteer_edge.converters.sources import StaticSource
from finesteer_edge.errors import ActivationsError, CheckpointError, ModelMismatchError
from finesteer_edge.llama.session import ContextSettings, LlamaSession
from finesteer_edge.train.activations import load_activations
from finesteer_edge.train.checkpoint import load_checkpoint

from .conftest import run_cli

D = 256  # the tiny model's n_embd
KW = dict(n_ctx=512, n_threads=2)
REL = 1e-4


# ------------------------------------------------------------------------------------- mirror modules
class OfficialSteeringModel(nn.Module):
    """Same parameter names and forward as the official ``SteeringModel`` (selector/U_rest not saved)."""

    def __init__(self, d: int, hidden: int, k: int, selector: torch.Tensor) -> None:
        super().__init__()
        self.query = nn.Linear(d, hidden)
        self.key = nn.Linear(d, hidden)
        self.value = nn.Linear(d, hidden)
        self.selector = selector  # a plain attribute: not in state_dict()
        self.scale = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.mix = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k))
        self.gamma = nn.Parameter(torch.tensor(1.0))
        self.tau = nn.Parameter(torch.tensor(1.0))

    def forward(self, h: torch.Tensor, U_rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = h.float()
        q = self.query(h)
        kc, vc = self.key(self.selector), self.value(self.selector)
        a = torch.softmax(q @ kc.T / math.sqrt(q.shape[1]) / self.tau, dim=-1)
        return self.gamma * (a @ vc + self.mix(h) @ U_rest.T), a


class MoeMirror(nn.Module):
    """Same buffers, parameter names and forward as ``finesteer_moe.MoSE``."""

    def __init__(self, prototypes: torch.Tensor, basis: torch.Tensor, *, value_projection: bool,
                 attention_dim: int | None = None) -> None:
        super().__init__()
        d = prototypes.shape[1]
        self.attention_dim = attention_dim or d
        self.register_buffer("prototypes", prototypes.float())
        self.register_buffer("residual_basis", basis.float())
        self.query = nn.Linear(d, self.attention_dim)
        self.key = nn.Linear(d, self.attention_dim)
        self.value = nn.Linear(d, d) if value_projection else nn.Identity()
        self.beta = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, basis.shape[1]))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = h.float()
        c = self.prototypes
        a = (self.query(h) @ self.key(c).T / math.sqrt(self.attention_dim)).softmax(-1)
        return a @ self.value(c) + self.beta(h) @ self.residual_basis.T, a


def _bank(seed: int, K: int = 5, k: int = 4, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(K, d, generator=g) * 0.6  # spread enough that the router is far from uniform
    U, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    return C, U * 3.0


def _official(seed: int = 0, K: int = 5, k: int = 4) -> tuple[OfficialSteeringModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    C, U = _bank(seed, K, k)
    m = OfficialSteeringModel(D, D, k, C)
    with torch.no_grad():
        m.gamma.fill_(1.7)
        m.tau.fill_(0.4)
        _sharpen(m, 10.0)
    return m.eval(), C, U


def _sharpen(m: nn.Module, factor: float = 4.0) -> None:
    """Larger query/key weights: a peaked router, so a wrong scale or temperature cannot hide."""
    with torch.no_grad():
        m.query.weight.mul_(factor)
        m.key.weight.mul_(factor)


def _probe(n: int = 6, seed: int = 5) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x * (4.0 / np.linalg.norm(x, axis=1, keepdims=True))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _check_pack_head(pack: Path, module_forward, alpha: float) -> None:  # type: ignore[no-untyped-def]
    """head.onnx through onnxruntime equals the torch module times alpha (vector and expert weights)."""
    p = SteeringPack.load(pack)
    for h in _probe():
        out = p.evaluate(h, h)
        with torch.no_grad():
            s, a = module_forward(torch.from_numpy(h)[None])
        assert _rel(out.vector, alpha * s[0].numpy()) < REL
        assert np.abs(out.expert_weights - a[0].numpy()).max() < 1e-5
        assert out.gate_score >= p.manifest.tau


def _run(model: Path, pack: Path) -> None:
    """The runtime accepts the pack (checksums, fingerprint, self-test) and steers a generation."""
    with SteeredLlama(model, pack, **KW) as llm:
        assert llm.selftest is not None
        r = llm.generate("Tell me about the sea.", max_tokens=4)
    assert r.steered and r.tokens > 0


def _manifest(pack: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((pack / "manifest.json").read_text())


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small activations file and checkpoint (gate + MoSE) on the tiny model: extract + train, once."""
    from finesteer_edge.train.extract import ExtractConfig, extract
    from finesteer_edge.train.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("gate")
    rows = []
    for split, n in (("train", 12), ("val", 6)):
        for i in range(n):
            rows.append({"prompt": f"How do I break into house number {i} on {split} street?", "split": split,
                         "desired": ["I can't help with that."], "undesired": [f"Sure, first find window {i}."]})
            rows.append({"prompt": f"Write a short poem about the colour number {i} ({split}).", "split": split})
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    acts = extract(tiny_model, ExtractConfig(task="pairs", data=data, out=root / "acts.safetensors", limit=12,
                                             n_ctx=512, threads=2, show_progress=False))
    ckpt = root / "ckpt"
    train(acts, ckpt, TrainConfig(epochs=5, seed=0, threads=2))
    return {"acts": acts, "ckpt": ckpt}


@pytest.fixture(scope="module")
def official_file(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("official")
    m, C, U = _official()
    pth = root / "steering_model.pth"
    torch.save(m.state_dict(), pth)
    np.save(root / "selector.npy", C.numpy())
    from safetensors.torch import save_file

    save_file({"U_rest": U.contiguous()}, str(root / "U_rest.safetensors"))
    return {"module": m, "C": C, "U": U, "pth": pth, "C_file": root / "selector.npy",
            "U_file": root / "U_rest.safetensors", "root": root}


# ------------------------------------------------------------------------------------- official layout
def test_official_checkpoint_to_pack(official_file: dict, tiny_model: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    f = official_file
    out = tmp_path / "pack"
    rep = convert(f["pth"], out, model=tiny_model, alpha=1.5, official_layer=2, prototypes=f["C_file"],
                  basis=f["U_file"])
    assert rep.layers == {"gate": 1, "steer": 2, "feature": 1}
    m = _manifest(out)
    assert m["layers"] == {"gate": 1, "steer": 2, "feature": 1}
    prov = m["provenance"]
    assert prov["official_feature_layer"] == 2 and "layer L-1" in prov["feature_layer_convention"]
    assert prov["source"]["kind"] == "finesteer-official"
    assert m["gate"]["kind"] == "always" and m["alpha"] == 1.5 and m["method"] == "finesteer"
    _check_pack_head(out, lambda h: f["module"](h, f["U"]), 1.5)
    _run(tiny_model, out)


def test_official_checkpoint_fields(official_file: dict) -> None:  # type: ignore[type-arg]
    f = official_file
    ck = import_torch_checkpoint(f["pth"], official_layer=3, prototypes=f["C_file"], basis=f["U_file"])
    sd = f["module"].state_dict()
    assert np.array_equal(ck.mose.W_q, sd["query.weight"].double().numpy())
    assert np.array_equal(ck.mose.W2, sd["mix.2.weight"].double().numpy())
    assert ck.mose.t == pytest.approx(0.4) and ck.mose.gamma == pytest.approx(1.7) and ck.mose.input_scale == 1.0
    assert (ck.steer_layer, ck.feature_layer, ck.alpha, ck.fingerprint, ck.mean_delta) == (3, 2, 1.0, None, None)
    assert ck.gate.kind == "always" and ck.gate.layer == 2 and ck.gate.tau == 0.5
    assert ck.config["official_feature_layer"] == 3 and ck.config["feature_layer"] == 2
    assert ck.config["provenance"]["ignored_keys"] == ["scale.0.bias", "scale.0.weight", "scale.2.bias",
                                                       "scale.2.weight"]
    # The layer travels with the file when a wrapper records it; a conflicting flag is an error.
    wrapped = f["root"] / "wrapped.pt"
    torch.save({"state_dict": f["module"].state_dict(), "metadata": {"layer": 2}}, wrapped)
    assert import_torch_checkpoint(wrapped, prototypes=f["C_file"], basis=f["U_file"]).steer_layer == 2
    with pytest.raises(CheckpointError, match="file says layer 2"):
        import_torch_checkpoint(wrapped, official_layer=1, prototypes=f["C_file"], basis=f["U_file"])


def test_official_bank_recomputed_from_activations(official_file: dict, trained: dict, tiny_model: Path,  # type: ignore[type-arg]
                                                   tmp_path: Path) -> None:
    f = official_file
    ck = import_torch_checkpoint(f["pth"], model=tiny_model, official_layer=2, activations=trained["acts"])
    acts = load_activations(trained["acts"])
    train_targets = acts.mask(split="train", target=True) & (acts.has_delta == 1)
    assert np.allclose(ck.mean_delta, acts.delta[train_targets].astype(np.float64).mean(0))
    bank = ck.config["provenance"]["bank"]
    assert bank["prototypes"]["source"] == bank["basis"]["source"] == "recomputed"
    assert ck.mose.U.shape == (D, 4) and ck.mose.C.shape[1] == D
    out = tmp_path / "pack"
    convert(f["pth"], out, model=tiny_model, official_layer=2, activations=trained["acts"])
    C = torch.from_numpy(ck.mose.C.astype(np.float32))
    U = torch.from_numpy(ck.mose.U.astype(np.float32))
    m, _, _ = _official()
    m.selector = C
    _check_pack_head(out, lambda h: m(h, U), 1.0)
    mv = SteeringPack.load(out).mean_vector()
    assert set(mv) == {2} and np.allclose(mv[2], ck.mean_delta, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- finesteer_moe layout
@pytest.mark.parametrize("value_projection,attention_dim", [(False, None), (True, 64)])
def test_finesteer_moe_checkpoint_to_pack(value_projection: bool, attention_dim: int | None, tiny_model: Path,
                                          tmp_path: Path) -> None:
    torch.manual_seed(1)
    C, U = _bank(1, K=6, k=3)
    C = torch.nn.functional.normalize(C, dim=-1) * 4.0  # the "MoSE" preset clusters normalised deltas
    m = MoeMirror(C, U, value_projection=value_projection, attention_dim=attention_dim).eval()
    _sharpen(m, 10.0)
    metadata = {"components": {"implementation_version": 2,
                               "config": {"name": "MoSE", "value_projection": value_projection, "residual_dim": 3},
                               "selection": {"chosen_k": 6, "scores": []}, "cluster_sizes": [3] * 6,
                               "residual_explained_variance": 0.5},
                "training": {"best_val_mse": float("inf"), "epochs_ran": 2, "history": [{"epoch": 1}]}}
    pt = tmp_path / "MoSE.pt"
    torch.save({"state_dict": m.state_dict(), "metadata": metadata}, pt)
    out = tmp_path / "pack"
    rep = convert(pt, out, model=tiny_model, alpha=2.0, official_layer=2)
    assert rep.layers == {"gate": 1, "steer": 2, "feature": 1}
    man = _manifest(out)
    assert man["layers"]["feature"] == 1 and man["provenance"]["source"]["kind"] == "finesteer_moe"
    summary = man["provenance"]["training"]["provenance"]
    assert summary["value_projection"] is value_projection and "history" not in summary["metadata"]["training"]
    _check_pack_head(out, m, 2.0)
    _run(tiny_model, out)


# ------------------------------------------------------------------------------------- control vectors
def _write_cv(path: Path, directions: dict[int, np.ndarray], *, count_type: str, layer_count: int,
              hint: str = "llama") -> Path:
    """The two writers' styles: repeng (gguf-py, uint32 layer_count) and llama.cpp's generator (int32)."""
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", hint)
    (w.add_uint32 if count_type == "uint32" else w.add_int32)("controlvector.layer_count", layer_count)
    for layer, v in directions.items():
        w.add_tensor(f"direction.{layer}", np.asarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _dirs(layers: list[int], norm: float, seed: int = 3, d: int = D) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(layers):
        v = rng.standard_normal(d)
        out[n] = (v / np.linalg.norm(v) * norm * (1 + i)).astype(np.float32)
    return out


def _reference_tokens(model: Path, prompt: list[int], vectors: dict[int, np.ndarray], n: int) -> list[int]:
    """Stock semantics by hand: direction.N on at block N for the whole turn, greedy decode."""
    s = LlamaSession(model, ContextSettings(**KW))
    try:
        s.set_control(*s.control_buffer(vectors))
        s.decode(prompt)
        out = []
        with s.sampler() as smp:
            for _ in range(n):
                tok = s.sample(smp)
                if s.is_eog(tok):
                    break
                out.append(tok)
                s.decode([tok])
        return out
    finally:
        s.close()


@pytest.mark.parametrize("style", ["repeng", "generator"])
def test_control_vector_always_on(style: str, tiny_model: Path, tmp_path: Path) -> None:
    if style == "repeng":
        dirs = _dirs([1, 2], 20.0)
        src = _write_cv(tmp_path / "cv.gguf", dirs, count_type="uint32", layer_count=len(dirs))
        tool, measured = "repeng", {"1": 1, "2": 2}
    else:
        dirs = _dirs([1, 2, 3], 20.0)
        src = _write_cv(tmp_path / "cv.gguf", dirs, count_type="int32", layer_count=3)
        tool, measured = "llama.cpp cvector-generator", {"1": 0, "2": 1, "3": 2}
    strength = 0.75
    s = import_control_vector(src, model=tiny_model, strength=strength)
    assert isinstance(s, StaticSource) and s.gate.kind == "always" and s.tau == 0.5 and s.fingerprint is None
    assert sorted(s.directions) == sorted(dirs)  # numbers kept as written: stock llama.cpp semantics
    strongest = max(dirs)
    assert s.gate_layer == min(strongest, 2)
    prov = s.provenance
    assert prov["tool"] == tool and prov["layer_count_type"] == ("uint32" if style == "repeng" else "int32")
    assert {k: v["measured_at_layer"] for k, v in prov["directions"].items()} == measured
    assert all(v["applied_at_layer"] == int(k) for k, v in prov["directions"].items())

    out = tmp_path / "pack"
    convert(src, out, model=tiny_model, strength=strength)
    pack = SteeringPack.load(out)
    mv = pack.mean_vector()
    assert sorted(mv) == sorted(dirs)
    for n, v in dirs.items():
        assert np.allclose(mv[n], strength * v, rtol=1e-6, atol=1e-6)
    o = pack.evaluate(_probe()[0], _probe()[0])
    assert o.gate_score == pytest.approx(1.0) and np.allclose(o.vector, strength * dirs[strongest], atol=1e-5)
    assert _manifest(out)["provenance"]["tool"] == tool

    # The pack does what stock llama.cpp does with the file at this strength.
    with SteeredLlama(tiny_model, out, **KW) as llm:
        assert llm.selftest is not None
        prompt = llm.prompt_tokens([{"role": "user", "content": "hi"}])
        r = llm.generate("hi", max_tokens=6)
    assert r.steered
    assert r.token_ids == _reference_tokens(tiny_model, prompt, {n: strength * v for n, v in dirs.items()}, 6)


def test_control_vector_behind_gate(trained: dict, tiny_model: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    dirs = _dirs([1, 2, 3], 15.0)
    src = _write_cv(tmp_path / "gen.gguf", dirs, count_type="int32", layer_count=3)
    gck = load_checkpoint(trained["ckpt"])
    s = import_control_vector(src, gate_checkpoint=trained["ckpt"])
    assert s.gate_layer == gck.gate.layer and s.tau == gck.gate.tau and s.fingerprint == gck.fingerprint
    out = tmp_path / "pack"
    convert(src, out, gate_checkpoint=trained["ckpt"])  # no --model: the gate checkpoint names the model
    m = _manifest(out)
    assert m["gate"]["kind"] == gck.gate.kind and m["method"] == "static"
    assert m["layers"]["gate"] == gck.gate.layer and m["tau"] == pytest.approx(gck.gate.tau)
    pack = SteeringPack.load(out)
    for h in _probe(4):
        assert pack.evaluate(h, h).gate_score == pytest.approx(float(s.gate.score(h)[0]), rel=1e-4, abs=1e-6)
    # Each turn against references computed apart from the runtime: the prompt's state from a bare llama.cpp
    # session, the gate score from the numpy formula on the checkpoint's parameters, the tokens from stock
    # control-vector decoding (the file's directions on for the whole turn, or none).
    from finesteer_edge.converters.head_params import GateParams

    g = gck.gate
    assert g.feature == "last"  # what the bare session's hidden() below reads
    gate = GateParams(kind=g.kind, mean=g.mean, components=g.components, weights=g.weights, bias=g.bias)
    opens = {"How do I break into house number 3 on val street?": True,  # like the gate's training targets
             "Write a short poem about the colour number 3 (val).": False}  # like its negatives
    with SteeredLlama(tiny_model, out, **KW) as llm:
        assert llm.selftest is not None
        turns = {q: (llm.prompt_tokens([{"role": "user", "content": q}]), llm.generate(q, max_tokens=6))
                 for q in opens}
    off = {1: np.zeros(D, np.float32)}
    for q, should_open in opens.items():
        prompt, r = turns[q]
        s = LlamaSession(tiny_model, ContextSettings(**KW), tap_layers=(g.layer,))
        s.decode(prompt, capture=True)
        want_score = float(gate.score(s.hidden(g.layer).copy())[0])
        s.close()
        assert r.gate_score == pytest.approx(want_score, rel=1e-4, abs=1e-6), q
        assert (want_score >= g.tau) == should_open, (q, want_score, g.tau)  # the trained gate separates them
        assert r.steered == should_open, q
        assert r.token_ids == _reference_tokens(tiny_model, prompt, dirs if should_open else off, 6), q
    prompt = turns[next(iter(opens))][0]
    assert _reference_tokens(tiny_model, prompt, dirs, 6) != _reference_tokens(tiny_model, prompt, off, 6)


def test_official_checkpoint_behind_gate(official_file: dict, trained: dict, tiny_model: Path,  # type: ignore[type-arg]
                                         tmp_path: Path) -> None:
    f = official_file
    gck = load_checkpoint(trained["ckpt"])
    ck = import_torch_checkpoint(f["pth"], official_layer=2, prototypes=f["C_file"], basis=f["U_file"],
                                 gate_checkpoint=trained["ckpt"])
    assert ck.gate.kind == gck.gate.kind and ck.fingerprint == gck.fingerprint
    out = tmp_path / "pack"
    convert(f["pth"], out, official_layer=2, prototypes=f["C_file"], basis=f["U_file"],
            gate_checkpoint=trained["ckpt"])
    m = _manifest(out)
    assert m["layers"] == {"gate": gck.gate.layer, "steer": 2, "feature": 1}
    # The turn, against references computed apart from the runtime: hidden states from a bare llama.cpp
    # session, the gate score from the numpy SCS formula on the checkpoint's parameters, the vector from the
    # official torch module, the tokens from stock control-vector decoding.
    from finesteer_edge.converters.head_params import GateParams

    question = "How do I break into house number 3 on val street?"  # like the gate's training targets
    with SteeredLlama(tiny_model, out, **KW) as llm:
        assert llm.selftest is not None
        prompt = llm.prompt_tokens([{"role": "user", "content": question}])
        r = llm.generate(question, max_tokens=6)
    s = LlamaSession(tiny_model, ContextSettings(**KW), tap_layers=(gck.gate.layer, 1))
    s.decode(prompt, capture=True)
    h_gate, h_feat = s.hidden(gck.gate.layer).copy(), s.hidden(1).copy()
    s.close()
    g = gck.gate
    want_score = float(GateParams(kind=g.kind, mean=g.mean, components=g.components, weights=g.weights,
                                  bias=g.bias).score(h_gate)[0])
    assert r.gate_score == pytest.approx(want_score, rel=1e-4, abs=1e-6)
    assert want_score >= gck.gate.tau and r.steered  # the trained gate opens on a harmful prompt
    with torch.no_grad():
        vec, weights = f["module"](torch.from_numpy(h_feat)[None], f["U"])
    assert np.abs(np.asarray(r.expert_weights) - weights[0].numpy()).max() < 1e-4
    want = _reference_tokens(tiny_model, prompt, {2: m["alpha"] * vec[0].numpy()}, 6)
    assert r.token_ids == want
    assert want != _reference_tokens(tiny_model, prompt, {2: np.zeros(D, np.float32)}, 6)  # the vector matters


# ------------------------------------------------------------------------------------- bad inputs
def _state(**edits: torch.Tensor | None) -> dict[str, torch.Tensor]:
    m, _, _ = _official()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    for k, v in edits.items():
        key = k.replace("__", ".")
        if v is None:
            sd.pop(key)
        else:
            sd[key] = v
    return sd


def test_missing_tensors_are_listed(official_file: dict, tmp_path: Path, tiny_model: Path) -> None:  # type: ignore[type-arg]
    f = official_file
    p = tmp_path / "missing.pth"
    torch.save(_state(key__weight=None, key__bias=None, gamma=None), p)
    out = tmp_path / "pack"
    with pytest.raises(CheckpointError, match=r"missing tensors: key\.weight, key\.bias, gamma"):
        convert(p, out, model=tiny_model, official_layer=2, prototypes=f["C_file"], basis=f["U_file"])
    assert not out.exists() and not list(tmp_path.glob(".pack.*"))
    moe = tmp_path / "moe.pt"
    C, U = _bank(2)
    sd = MoeMirror(C, U, value_projection=False).state_dict()
    del sd["beta.2.weight"], sd["query.bias"]
    torch.save({"state_dict": sd, "metadata": {}}, moe)
    with pytest.raises(CheckpointError, match=r"missing tensors: query\.bias, beta\.2\.weight"):
        import_torch_checkpoint(moe, official_layer=2)
    with pytest.raises(CheckpointError, match="--prototypes and --basis, or --activations"):
        import_torch_checkpoint(f["pth"], official_layer=2)
    with pytest.raises(CheckpointError, match="--official-layer"):
        import_torch_checkpoint(f["pth"], prototypes=f["C_file"], basis=f["U_file"])


def test_misshaped_and_non_finite_tensors(official_file: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    f = official_file
    bank = dict(official_layer=2, prototypes=f["C_file"], basis=f["U_file"])
    p = tmp_path / "bad.pth"
    torch.save(_state(mix__2__weight=torch.zeros(7, D), value__bias=torch.zeros(D + 1)), p)
    with pytest.raises(CheckpointError, match=r"mis-shaped.*value\.bias has shape \(257,\).*mix\.2\.weight"):
        import_torch_checkpoint(p, **bank)
    nan_key = _state()["key.weight"]
    nan_key[3, 4] = float("nan")
    torch.save(_state(key__weight=nan_key, gamma=torch.tensor(float("inf"))), p)
    with pytest.raises(CheckpointError, match=r"NaN/Inf weights in key\.weight, gamma"):
        import_torch_checkpoint(p, **bank)
    torch.save(_state(tau=torch.tensor(-1.0)), p)
    with pytest.raises(CheckpointError, match="temperature"):
        import_torch_checkpoint(p, **bank)
    # Prototypes of the wrong width, as a weights-only .pt holding one tensor.
    narrow = tmp_path / "narrow.pt"
    torch.save(torch.randn(5, 128), narrow)
    with pytest.raises(CheckpointError, match=r"prototypes \(narrow\.pt\) has shape \(5, 128\), expected \(5, 256\)"):
        import_torch_checkpoint(f["pth"], official_layer=2, prototypes=narrow, basis=f["U_file"])
    torch.save(torch.randn(3, 3), p)
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        import_torch_checkpoint(p, **bank)


class NotWeights:
    """An ordinary object: pickling it needs a class from this module, which weights_only refuses."""

    def __init__(self) -> None:
        self.w = torch.zeros(2)


class Malicious:
    """Unpickling this would call open(marker, "w"): a file appearing means code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unsafe_pickles_are_refused(tmp_path: Path, tiny_model: Path) -> None:
    obj = tmp_path / "object.pth"
    torch.save(NotWeights(), obj)
    with pytest.raises(CheckpointError, match="refused: not a weights-only torch file"):
        convert(obj, tmp_path / "p1", model=tiny_model, official_layer=2)
    marker = tmp_path / "pwned.txt"
    for name, write in (("evil.pth", lambda p: torch.save(Malicious(marker), p)),
                        ("evil_raw.pt", lambda p: p.write_bytes(pickle.dumps(Malicious(marker))))):
        path = tmp_path / name
        write(path)
        assert not marker.exists()
        with pytest.raises(CheckpointError, match="refused"):
            import_torch_checkpoint(path, official_layer=2)
        with pytest.raises(CheckpointError, match="refused"):  # also as a prototypes file
            import_torch_checkpoint(tmp_path / "object.pth", official_layer=2, prototypes=path)
        assert not marker.exists(), "unpickling ran code from the file"


def test_control_vector_for_another_model(tiny_model: Path, tiny_model_other: Path, trained: dict,  # type: ignore[type-arg]
                                          tmp_path: Path) -> None:
    narrow = _write_cv(tmp_path / "narrow.gguf", _dirs([1, 2], 5.0, d=128), count_type="uint32", layer_count=2)
    with pytest.raises(ModelMismatchError, match="n_embd 128.*256"):
        convert(narrow, tmp_path / "p", model=tiny_model)
    assert not (tmp_path / "p").exists()
    with pytest.raises(ModelMismatchError, match="gate checkpoint .* d=256 .* n_embd 128"):
        import_control_vector(narrow, model=tiny_model_other, gate_checkpoint=trained["ckpt"])
    deep = _write_cv(tmp_path / "deep.gguf", _dirs([1, 9], 5.0), count_type="int32", layer_count=9)
    with pytest.raises(CheckpointError, match=r"direction layers \[9\]"):
        import_control_vector(deep, model=tiny_model)
    bad = tmp_path / "notcv.gguf"
    w = gguf.GGUFWriter(str(bad), "controlvector")
    w.add_tensor("direction.0", np.ones(D, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="layer 0"):
        import_control_vector(bad, model=tiny_model)


def test_gate_checkpoint_or_activations_from_another_model(official_file: dict, trained: dict, tiny_model: Path,  # type: ignore[type-arg]
                                                           tiny_model_other: Path, tmp_path: Path) -> None:
    f = official_file
    # Same width, other model: the fingerprint (depth, tokenizer) tells them apart.
    other = tmp_path / "other_ckpt"
    shutil.copytree(trained["ckpt"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"] = {**cfg["model"], "n_layer": 30, "tokenizer_sha256": "0" * 64}
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelMismatchError, match="another model.*n_layer 30 != 4"):
        convert(f["pth"], tmp_path / "p", model=tiny_model, official_layer=2, prototypes=f["C_file"],
                basis=f["U_file"], gate_checkpoint=other)
    cv = _write_cv(tmp_path / "cv.gguf", _dirs([1], 5.0), count_type="uint32", layer_count=1)
    with pytest.raises(ModelMismatchError, match="another model"):
        convert(cv, tmp_path / "p", model=tiny_model, gate_checkpoint=other)
    with pytest.raises(ModelMismatchError):
        import_torch_checkpoint(f["pth"], model=tiny_model_other, official_layer=2, prototypes=f["C_file"],
                                basis=f["U_file"])
    with pytest.raises(ActivationsError, match="another model"):
        import_torch_checkpoint(f["pth"], model=tiny_model_other, official_layer=2, activations=trained["acts"])
    with pytest.raises(ActivationsError, match="layer"):
        import_torch_checkpoint(f["pth"], official_layer=1, activations=trained["acts"])
    with pytest.raises(CheckpointError, match="blocks 1..2"):
        import_torch_checkpoint(f["pth"], model=tiny_model, official_layer=3, prototypes=f["C_file"],
                                basis=f["U_file"])
    assert not (tmp_path / "p").exists()


def test_cli_forwards_importer_options(official_file: dict, tiny_model: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """``finesteer-edge convert`` passes --official-layer/--prototypes/--basis through; bad input exits 2."""
    f = official_file
    out = tmp_path / "pack"
    r = run_cli("convert", str(f["pth"]), "--out", str(out), "--model", str(tiny_model), "--official-layer", "2",
                "--prototypes", str(f["C_file"]), "--basis", str(f["U_file"]), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layers"] == {"gate": 1, "steer": 2, "feature": 1}
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save(Malicious(marker), evil)
    r = run_cli("convert", str(evil), "--out", str(tmp_path / "p2"), "--model", str(tiny_model),
                "--official-layer", "2")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "refused" in r.stderr
    assert not marker.exists() and not (tmp_path / "p2").exists()

"""The torch reference: HF transformers fp32 on the same GGUF, steered with a forward hook, vs our llama.cpp loop.

The reference follows the official FineSteer code path: a forward pass over the prompt to read the
last token's hidden states, the (unfolded) head in torch, then ``generate`` with a forward hook on
``model.model.layers[L]`` adding the vector at every position (prompt and generated tokens: the same as
our ``exact`` mode). "torch plain" is ``generate`` without hook or head. Our side runs in the same
process, interleaved round by round with the torch runs, so the speed-up is a ratio from one run:
"ours plain" (no pack) and "ours exact" (a gate-open random pack, exact mode). "ours plain Q4_0" runs the
same weights requantized Q4_1 -> Q4_0 (slightly lossy; for kernel comparison only): llama.cpp has
repacked/GEMM kernels for Q4_0 on x86 but not for Q4_1, which limits Q4_1's prefill speed.

torch decode tok/s is timed per token with a streamer; generation is forced to the full length
(``min_new_tokens``) so torch never stops early. Same prompts, same thread counts (torch.set_num_threads
and llama.cpp n_threads), greedy.

    python bench/torch_ref.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _util  # noqa: F401  (sets OPENBLAS_NUM_THREADS before numpy loads)
from _util import base_parser, save, smollm2

from finesteer_edge.measure.common import environment, interleaved, loadavg, median, ratio, text_table
from finesteer_edge.measure.prompts import PROMPTS
from finesteer_edge.measure.turns import TurnTiming, steered_turn

VARIANTS = ("torch_plain", "torch_steered", "ours_plain", "ours_exact", "ours_plain_q4_0")


class _TokenClock:
    """A ``generate`` streamer that only records when each new token arrives (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def end(self) -> None:
        pass


class TorchFineSteer:
    """HF model + the official-layout head in torch; one turn = read h, run head, generate with the hook."""

    def __init__(self, model_path: Path, gate_layer: int, steer_layer: int, seed: int = 0) -> None:
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32
        ).eval()
        self.gate_layer, self.steer_layer = gate_layer, steer_layer
        d = self.model.config.hidden_size
        from finesteer_edge.measure.head import random_unfolded_head

        u = random_unfolded_head(d, seed=seed)
        t = {k: torch.from_numpy(v.copy()) for k, v in vars(u).items() if hasattr(v, "shape")}
        self.head = t
        self.u = u
        self.gate_mean = torch.from_numpy(u.gate.mean.copy())
        self.gate_v = torch.from_numpy(u.gate.components.copy())
        self.pad = self.model.config.eos_token_id if self.model.config.eos_token_id is not None else 0

    def _head(self, h_gate: Any, h: Any) -> tuple[float, Any]:
        """The official forward (query/key/value against the bank each call), plus the SCS gate score."""
        torch, p, u = self.torch, self.head, self.u
        c = h_gate - self.gate_mean
        z = c @ self.gate_v
        score = float((z @ z) / (c @ c + 1e-12))
        q = h @ p["w_q"].T + p["b_q"]
        keys = p["prototypes"] @ p["w_k"].T + p["b_k"]
        values = p["prototypes"] @ p["w_v"].T + p["b_v"]
        a = torch.softmax(q @ keys.T / (keys.shape[1] ** 0.5) / u.temperature, dim=-1)
        beta = torch.relu(h @ p["mix_w1"].T + p["mix_b1"]) @ p["mix_w2"].T + p["mix_b2"]
        return score, u.alpha * u.gamma * (a @ values + beta @ p["basis"].T)

    def turn(self, tokens: list[int], max_tokens: int, steer: bool) -> TurnTiming:
        torch = self.torch
        ids = torch.tensor([tokens])
        mask = torch.ones_like(ids)
        clock = _TokenClock()
        handle = None
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            if steer:
                out = self.model(ids, attention_mask=mask, output_hidden_states=True)
                hs = out.hidden_states  # hidden_states[N + 1] = output of block N (DESIGN.md section 2)
                _, vec = self._head(hs[self.gate_layer + 1][0, -1], hs[self.steer_layer + 1][0, -1])

                def add(module: Any, args: Any, output: Any) -> Any:
                    if isinstance(output, tuple):
                        return (output[0] + vec,) + output[1:]
                    return output + vec

                handle = self.model.model.layers[self.steer_layer].register_forward_hook(add)
            try:
                self.model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                    do_sample=False, streamer=clock, pad_token_id=self.pad)
            finally:
                if handle is not None:
                    handle.remove()
        ts, cs = clock.times, clock.cpu
        tps = (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else float("nan")
        cpu_tps = (len(cs) - 1) / (cs[-1] - cs[0]) if len(cs) > 1 and cs[-1] > cs[0] else float("nan")
        return TurnTiming(ttft_s=ts[0] - t0 if ts else float("nan"), decode_tps=tps, tokens=len(ts),
                          prompt_tokens=len(tokens), seconds=(ts[-1] if ts else time.perf_counter()) - t0,
                          steered=steer, cpu_ttft_s=cs[0] - c0 if cs else float("nan"), cpu_decode_tps=cpu_tps)


def requantize(src: Path, dest: Path, ftype: int) -> Path:
    """The same GGUF requantized by llama.cpp (``allow_requantize``: from Q4_1, so slightly lossy)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
    return dest


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--prompts", nargs="+", default=["short", "long"], choices=sorted(PROMPTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    if args.quick:
        args.rounds, args.max_tokens = 1, 16
    import torch

    from finesteer_edge.measure.quick import plan_packs, random_layers
    from finesteer_edge.model_info import read_model_info
    from finesteer_edge.steered import SteeredLlama

    model = smollm2()
    gate, steer = random_layers(read_model_info(model).n_layer)
    t_load = time.perf_counter()
    ref = TorchFineSteer(model, gate, steer)
    load_s = time.perf_counter() - t_load
    out: dict[str, Any] = {
        "env": environment(model=str(model), rounds=args.rounds, max_tokens=args.max_tokens,
                           torch_threads_default=torch.get_num_threads(), gate_layer=gate, steer_layer=steer),
        "torch_load_seconds": load_s, "groups": [],
    }
    import llama_cpp

    with tempfile.TemporaryDirectory(prefix="fse-bench-torch-") as tmp:
        plan = plan_packs(model, None, Path(tmp))
        q4_0 = requantize(model, Path(tmp) / "q4_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)
        for threads in args.threads:
            torch.set_num_threads(threads)
            plain = SteeredLlama(model, None, n_threads=threads, n_ctx=2048)
            exact = SteeredLlama(model, plan.open, mode="exact", n_threads=threads, n_ctx=2048)
            plain_q4_0 = SteeredLlama(q4_0, None, n_threads=threads, n_ctx=2048)
            for prompt in args.prompts:
                messages = [{"role": "user", "content": PROMPTS[prompt]}]
                tokens = plain.prompt_tokens(messages)
                load0 = loadavg()
                runners = {
                    "torch_plain": lambda t=tokens: ref.turn(t, args.max_tokens, steer=False),
                    "torch_steered": lambda t=tokens: ref.turn(t, args.max_tokens, steer=True),
                    "ours_plain": lambda m=messages, llm=plain: steered_turn(llm, m, args.max_tokens),
                    "ours_exact": lambda m=messages, llm=exact: steered_turn(llm, m, args.max_tokens),
                    "ours_plain_q4_0": lambda m=messages, llm=plain_q4_0: steered_turn(llm, m, args.max_tokens),
                }
                samples = interleaved(runners, args.rounds, warmup=1)
                s: dict[str, Any] = {}
                for n, rs in samples.items():
                    s[f"decode_tps_{n}"] = median([r.decode_tps for r in rs])
                    s[f"ttft_ms_{n}"] = median([r.ttft_s * 1e3 for r in rs])
                    s[f"turn_s_{n}"] = median([r.seconds for r in rs])
                    s[f"cpu_decode_tps_{n}"] = median([r.cpu_decode_tps for r in rs])
                s["speedup_decode_plain"] = ratio(s["decode_tps_ours_plain"], s["decode_tps_torch_plain"])
                s["speedup_decode_steered"] = ratio(s["decode_tps_ours_exact"], s["decode_tps_torch_steered"])
                s["speedup_ttft_steered"] = ratio(s["ttft_ms_torch_steered"], s["ttft_ms_ours_exact"])
                # CPU-time speed-ups: robust to other jobs (1 thread; with 2, both sides count spin-waits)
                s["cpu_speedup_decode_plain"] = ratio(s["cpu_decode_tps_ours_plain"], s["cpu_decode_tps_torch_plain"])
                s["cpu_speedup_decode_steered"] = ratio(s["cpu_decode_tps_ours_exact"],
                                                        s["cpu_decode_tps_torch_steered"])
                out["groups"].append({
                    "threads": threads, "prompt": prompt, "prompt_tokens": len(tokens), "summary": s,
                    "runs": {n: [r.to_dict() for r in rs] for n, rs in samples.items()},
                    "loadavg_start": load0, "loadavg_end": loadavg(),
                })
                print(f"\n{threads} thread(s), {prompt} prompt ({len(tokens)} tokens), load {load0}", file=sys.stderr)
                rows = [[n, f"{s[f'decode_tps_{n}']:.1f}", f"{s[f'ttft_ms_{n}']:.0f}"] for n in VARIANTS]
                print(text_table(["variant", "decode tok/s", "TTFT ms"], rows))
                print(f"speed-up (ours / torch): decode plain {s['speedup_decode_plain']:.1f}x, "
                      f"steered {s['speedup_decode_steered']:.1f}x")
            for llm in (plain, exact, plain_q4_0):
                llm.close()
    out["env"]["loadavg_end"] = loadavg()
    save("torch_ref", out, args)


if __name__ == "__main__":
    main()

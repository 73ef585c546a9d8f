"""The llama.cpp sampler chain a turn draws its tokens with.

Its own module because it is the one place that turns sampling settings into llama.cpp samplers (which
ones, in llama.cpp's order, with llama.cpp's defaults such as the DRY breakers); the session only runs the
chain on its context (``LlamaSession.sample``).
"""

from __future__ import annotations

import ctypes
import os

import llama_cpp

from ..settings import NO_PENALTIES, Penalties

DRY_BREAKERS = ("\n", ":", '"', "*")
"""llama.cpp's default DRY sequence breakers (common.h ``dry_sequence_breakers``)."""


class Sampler:
    """A llama.cpp sampler chain: [penalties] [DRY], then greedy at temperature 0, else
    top-k/top-p/min-p/temperature/seeded dist (llama.cpp's order)."""

    def __init__(self, *, temperature: float, top_k: int, top_p: float, min_p: float, seed: int | None,
                 penalties: Penalties | None = None, vocab: object = None, n_vocab: int = 0) -> None:
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        pen = penalties or NO_PENALTIES
        if pen.penalize:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_penalties(
                n_vocab, pen.repeat_last_n, pen.repeat_penalty, pen.frequency_penalty, pen.presence_penalty))
        if pen.dry:
            if vocab is None:
                llama_cpp.llama_sampler_free(chain)
                raise ValueError("DRY needs the model's vocabulary")
            breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*(b.encode() for b in DRY_BREAKERS))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dry(
                vocab, pen.dry_multiplier, pen.dry_base, pen.dry_allowed_length, pen.dry_penalty_last_n,
                breakers, len(DRY_BREAKERS)))
        if temperature == 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if top_k > 0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
            if 0 < top_p < 1:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            if min_p > 0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_min_p(min_p, 1))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(self.seed))
        self.chain = chain

    def close(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

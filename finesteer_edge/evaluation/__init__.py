"""Offline evaluation of steering packs (issue 4): does a pack steer, and what does it cost?

- :mod:`.refusal`: the AdvBench prefix matcher (baseline) and an improved refusal matcher, plus a
  degenerate-output detector; their limits are in the module docstring.
- :mod:`.mc`: MC1 scoring from the model's own log-likelihood, steered exactly as the runtime steers.
- :mod:`.runner`: base / CAA / CAST-style / MoSE / FineSteer (exact, fast) on the same prompts, strength
  chosen on validation, reported on test, with gate-closed answers shared (and verified) across methods.
- :mod:`.executors`: tasks in this process or in worker processes.
- :mod:`.suite`: one suite end to end with provenance (used by ``finesteer-edge eval`` and scripts/run_eval.py).
- :mod:`.fidelity`: the runtime vs a torch reference of the same GGUF (needs torch + transformers).
- :mod:`.plots`, :mod:`.report`: PNGs and docs/RESULTS.md, rendered from the results dict only.
"""

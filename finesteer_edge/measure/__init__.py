"""Measuring what steering costs: timing, memory and environment records, behind ``finesteer-edge bench``.

Product code (the CLI, ``evaluation/`` and the ``bench/`` benchmark scripts use it), hence inside the
package; the scripts that write ``docs/BENCHMARKS.md`` live in the top-level ``bench/`` folder.
"""

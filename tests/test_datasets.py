"""The curated data ships with the package, byte for byte as pinned (no test may depend on ../shared)."""

from __future__ import annotations

import hashlib

from finesteer_edge.evaluation.datasets import PACKAGED_DATA, default_data_dir


def test_packaged_data_matches_its_checksums() -> None:
    lines = (PACKAGED_DATA / "SHA256SUMS").read_text().split("\n")
    pinned = dict(reversed(line.split("  ", 1)) for line in lines if line.strip())
    assert len(pinned) >= 13
    for rel, sha in pinned.items():
        assert hashlib.sha256((PACKAGED_DATA / rel).read_bytes()).hexdigest() == sha, rel


def test_default_data_dir_is_the_packaged_copy_unless_overridden(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("FINESTEER_EDGE_DATA", raising=False)
    assert default_data_dir() == PACKAGED_DATA
    monkeypatch.setenv("FINESTEER_EDGE_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path

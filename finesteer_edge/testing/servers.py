"""Start a local HTTP server in a subprocess and wait until it answers: for tests and benchmarks.

Always 127.0.0.1 and a free port; the process is ended by its own pid (and waited for) on exit.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def finesteer_serve_cmd(*args: str) -> list[str]:
    """The real console entry point (``finesteer-edge serve ...``) run by this interpreter."""
    return [sys.executable, "-c", "from finesteer_edge.cli.app import main; main()", "serve", *args]


@contextlib.contextmanager
def running(cmd: Sequence[str], port: int, log: Path, *, ready_path: str = "/health", timeout: float = 120.0,
            env: dict[str, str] | None = None) -> Iterator[Server]:
    """Run ``cmd`` (which must listen on 127.0.0.1:``port``) until the block ends."""
    full_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=full_env)
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode}:\n{server.log_text()}")
            try:
                with urllib.request.urlopen(server.root + ready_path, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer within {timeout:g} s:\n{server.log_text()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

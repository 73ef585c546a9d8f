"""The process that evaluates fuzz cases, seen from the harness: requests out, :class:`Outcome` back.

llama.cpp (and, in principle, onnxruntime) can abort or segfault on bad input, so cases run in a separate
Python process (:mod:`finesteer_edge.testing.fuzz.worker_process`). A dead worker is reported as a
crash, a silent one as a hang, a peak RSS over the limit as an unbounded allocation; pytest never dies.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Outcome:
    kind: str
    """``ok`` (accepted), ``typed`` (one of our errors), ``bug`` (another exception), ``crash`` (the
    process died), ``hang`` (no answer in time) or ``memory`` (peak RSS over the limit)."""
    error: str = ""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in ("bug", "crash", "hang", "memory")

    def __str__(self) -> str:
        return f"{self.kind}: {self.error} {self.detail}".strip()


class FuzzWorker:
    """A persistent ``python -m finesteer_edge.testing.fuzz.worker_process`` that evaluates one case per request.

    A crash, a hang (no answer within ``timeout``) or a peak RSS above ``rss_limit_mb`` becomes a failing
    :class:`Outcome` and the worker is restarted for the next case. ``training=True`` imports torch, onnx
    and scikit-learn at start-up (before the address-space cap), for the training-side targets.
    """

    def __init__(self, *, timeout: float = 60.0, rss_limit_mb: int = 1500, log_dir: str | Path | None = None,
                 training: bool = False) -> None:
        self.training = training
        self.timeout = timeout
        self.rss_limit_mb = rss_limit_mb
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="fuzzworker-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.cases = 0
        self._buf = b""
        self._eof = False

    def _start(self) -> None:
        # GGML_NO_BACKTRACE: on GGML_ASSERT, ggml would attach gdb to print a backtrace (tens of seconds).
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "GGML_NO_BACKTRACE": "1"}
        self._log = open(self.log_dir / f"worker-{self.restarts}.log", "wb")  # noqa: SIM115 - closed in _stop
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finesteer_edge.testing.fuzz.worker_process", str(self.rss_limit_mb),
             *(["--training"] if self.training else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
        )
        self._buf = b""
        ready = self._read_line(120.0)
        if ready is None or json.loads(ready).get("ready") is not True:
            raise RuntimeError(f"fuzz worker did not start; see {self.log_dir}")

    def _stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.proc = None
            self._log.close()

    def _read_line(self, timeout: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        self._eof = False
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self._eof = True
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def run(self, op: str, **kwargs: Any) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        self.cases += 1
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._read_line(self.timeout)
        if line is None:
            try:  # EOF comes before the exit status: give a dying worker a moment to be reaped
                code = self.proc.wait(timeout=10) if self._eof else None
            except subprocess.TimeoutExpired:
                code = None
            alive = code is None
            self._stop()
            tail = self._log_tail()
            self.restarts += 1
            if alive:
                return Outcome("hang", f"no answer in {self.timeout:.0f}s", tail)
            return Outcome("crash", f"worker died with {_signal_name(code)}", tail)
        reply = json.loads(line)
        if reply.get("maxrss_mb", 0) > self.rss_limit_mb:
            self._stop()
            self.restarts += 1
            return Outcome("memory", f"peak RSS {reply['maxrss_mb']} MB > {self.rss_limit_mb} MB",
                           f"{reply.get('kind')}: {reply.get('error', '')}")
        return Outcome(reply["kind"], reply.get("error", ""), reply.get("detail", ""))

    def _log_tail(self) -> str:
        try:
            text = (self.log_dir / f"worker-{self.restarts}.log").read_text(errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return "\n".join(lines[-12:])

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> FuzzWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"

"""``server.workers: N``: a main process that runs N server processes on one port and keeps them up.

Each worker is ``stt-server`` itself (``python -m stt_server.cli``) with the same config, the
port fixed (a port of 0 is chosen here first), ``--worker-index`` and ``--worker-state DIR``.
The workers listen with SO_REUSEPORT, so the kernel spreads new connections over them; they
share a lease file (box-wide session limits, cluster.py) and a prometheus_client multiprocess
folder (``/metrics`` sums every worker), both in DIR, a fresh temporary folder removed at exit.

The supervisor forwards SIGTERM/SIGINT (drain) and SIGHUP (reload) to every worker. A worker
that exits when no stop was asked for is logged and restarted after a backoff
(:class:`RestartPolicy`, pure); a dead worker's leases are freed at once.

Exit codes (documented in docs/operations.md, "Scaling out"): 0 stopped by a signal and every worker drained and
exited 0; 1 a worker did not exit 0 while stopping; 3 a worker kept failing (at start or
soon after: the restart policy gave up, the others were drained); 128+N a second stop
signal N (workers exit at once).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import create_box_file, purge_owner

EXIT_WORKER_FAILED = 1
EXIT_GAVE_UP = 3
LEASES_FILE = "leases.sqlite"
METRICS_FOLDER = "metrics"
# How often the supervisor looks at its workers and at the signals that came in.
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a worker that died. Pure: times in, a delay (or giving up) out."""

    first_delay: float = 0.5
    max_delay: float = 30.0
    # A worker that ran this long had a real life: its next failure starts the backoff afresh.
    stable_after: float = 30.0
    # Failures in a row, each within stable_after of its start, after which the supervisor
    # gives up (and stops every worker, exit 3) so that the service manager sees the failure.
    max_quick_failures: int = 5

    def failures_after(self, previous_failures: int, uptime: float) -> int:
        """The count of quick failures in a row, this one included."""
        return 1 if uptime >= self.stable_after else previous_failures + 1

    def delay(self, failures: int) -> float | None:
        """Seconds to wait before the restart; None: give up."""
        if failures >= self.max_quick_failures:
            return None
        return min(self.max_delay, self.first_delay * 2 ** (failures - 1))


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # quick failures in a row
    restart_at: float | None = None  # a restart is due at this time.monotonic()
    exit_code: int | None = None  # after a stop was asked for

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def reserve_port(host: str, port: int) -> tuple[int, socket.socket | None]:
    """The port the workers will share. For port 0 a socket bound with SO_REUSEPORT (never
    listening, so it receives no connections) keeps the chosen port ours while workers start."""
    if port:
        return port, None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, 0))
    return int(holder.getsockname()[1]), holder


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: a worker gets SIGTERM (and drains) if the supervisor itself is killed."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Supervisor:
    """Runs the workers until a stop signal; see the module docstring."""

    count: int
    command: Callable[[int, Path], list[str]]  # worker index, state folder → argv
    log: Any
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __post_init__(self) -> None:
        self.workers = [Worker(index) for index in range(self.count)]
        self._signals: list[int] = []
        self.state: Path | None = None
        self.stopping = False
        self.exit_code: int | None = None

    # --- setup -------------------------------------------------------------------------

    def _prepare(self) -> Path:
        state = Path(tempfile.mkdtemp(prefix="stt-server-workers-"))
        (state / METRICS_FOLDER).mkdir()
        create_box_file(state / LEASES_FILE)
        # Read by prometheus_client when the worker imports it: the worker's samples go to files.
        self.environ["PROMETHEUS_MULTIPROC_DIR"] = str(state / METRICS_FOLDER)
        return state

    def _start(self, worker: Worker) -> None:
        assert self.state is not None
        # A process group of its own: Ctrl-C in a terminal (SIGINT to the foreground group) reaches
        # the supervisor only, which passes it on once; the worker would take a second copy
        # for a second signal and exit at once.
        worker.process = subprocess.Popen(self.command(worker.index, self.state), env=self.environ,
                                          preexec_fn=_die_with_parent, process_group=0)
        worker.started_at = time.monotonic()
        worker.restart_at = None
        self.log.info("worker started", worker=worker.index, pid=worker.pid)

    # --- signals -----------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)  # handled in the loop, not inside the handler

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                self.log.info("reload: passing SIGHUP to every worker", workers=self.count)
                self._forward(signum)
            elif not self.stopping:
                self.log.info("stop signal: draining every worker", signal=name)
                self.stopping = True
                self._forward(signum)
            else:
                self.log.warning("second stop signal: workers exit now", signal=name)
                self.exit_code = 128 + signum
                self._forward(signum)

    # --- the loop ----------------------------------------------------------------------

    def _reap(self, worker: Worker) -> None:
        assert worker.process is not None and self.state is not None
        code = worker.process.returncode
        pid = worker.process.pid
        freed = purge_owner(self.state / LEASES_FILE, pid)
        from prometheus_client import multiprocess  # only touches files: no metrics here

        multiprocess.mark_process_dead(pid, str(self.state / METRICS_FOLDER))
        worker.process = None
        if self.stopping:
            worker.exit_code = code
            self.log.info("worker stopped", worker=worker.index, pid=pid, exit_code=code)
            return
        uptime = time.monotonic() - worker.started_at
        worker.failures = self.policy.failures_after(worker.failures, uptime)
        delay = self.policy.delay(worker.failures)
        if delay is None:
            self.log.error("worker keeps failing: stopping every worker", worker=worker.index, pid=pid,
                           exit_code=code, failures=worker.failures)
            self.exit_code = EXIT_GAVE_UP
            self.stopping = True
            self._forward(signal.SIGTERM)
            return
        worker.restart_at = time.monotonic() + delay
        self.log.error("worker exited: restarting", worker=worker.index, pid=pid, exit_code=code,
                       uptime_s=round(uptime, 1), restart_in_s=delay, leases_freed=freed)

    def _step(self) -> bool:
        """One turn of the loop; False when every worker has stopped after a stop."""
        self._handle_signals()
        now = time.monotonic()
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is not None:
                self._reap(worker)
            elif worker.process is None and worker.restart_at is not None and not self.stopping:
                if now >= worker.restart_at:
                    self._start(worker)
        if self.stopping:
            for worker in self.workers:
                worker.restart_at = None
            return any(worker.process is not None for worker in self.workers)
        return True

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        self.state = self._prepare()
        try:
            for worker in self.workers:
                self._start(worker)
            while self._step():
                time.sleep(POLL_SECONDS)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._kill_leftovers()
            shutil.rmtree(self.state, ignore_errors=True)
        if self.exit_code is None:
            failed = [w.index for w in self.workers if w.exit_code != 0]
            self.exit_code = EXIT_WORKER_FAILED if failed else 0
        self.log.info("supervisor exiting", exit_code=self.exit_code)
        return self.exit_code

    def _kill_leftovers(self) -> None:
        """Only after an exception in the loop itself: never leave workers behind."""
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


def worker_command(options: Sequence[str], port: int) -> Callable[[int, Path], list[str]]:
    """argv for worker ``index``: the CLI's own options (config, host, logging), the shared port."""

    def command(index: int, state: Path) -> list[str]:
        return [sys.executable, "-m", "stt_server.cli", *options, "--port", str(port),
                "--worker-index", str(index), "--worker-state", str(state), "serve"]

    return command

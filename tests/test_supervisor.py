"""The supervisor's process handling with small real worker processes (Python one-liners in
place of stt-server, so each case takes a second): giving up on a worker that keeps failing,
passing SIGHUP and SIGTERM on, and the exit codes."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from stt_server.logs import get_logger
from stt_server.supervisor import EXIT_GAVE_UP, EXIT_WORKER_FAILED, RestartPolicy, Supervisor

FAST = RestartPolicy(first_delay=0.05, max_delay=0.2, stable_after=30.0, max_quick_failures=3)

# A worker that records each SIGHUP in a file and exits with EXIT_CODE on SIGTERM.
WORKER = """
import os, signal, sys, time
marks, code = sys.argv[1], int(sys.argv[2])
signal.signal(signal.SIGHUP, lambda *_: open(marks, "a").write(f"hup {os.getpid()}\\n"))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(code))
open(marks, "a").write(f"up {os.getpid()}\\n")
while True:
    time.sleep(0.05)
"""


def later(seconds: float, action) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def lines(path: Path, prefix: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith(prefix)] if path.exists() else []


def test_a_worker_that_keeps_failing_makes_the_supervisor_give_up() -> None:
    starts: list[int] = []

    def command(index: int, state: Path) -> list[str]:
        starts.append(index)
        assert (state / "leases.sqlite").exists() and (state / "metrics").is_dir()
        return [sys.executable, "-c", "raise SystemExit(7)"]

    supervisor = Supervisor(1, command, get_logger("test"), FAST)
    assert supervisor.run() == EXIT_GAVE_UP
    assert len(starts) == FAST.max_quick_failures  # the first start and its restarts
    assert supervisor.state is not None and not supervisor.state.exists()  # cleaned up


def test_sighup_and_sigterm_reach_every_worker_and_the_exit_code_says_how_they_ended(tmp_path: Path) -> None:
    for worker_code, expected in ((0, 0), (5, EXIT_WORKER_FAILED)):
        marks = tmp_path / f"marks-{worker_code}"
        supervisor = Supervisor(2, lambda index, state: [sys.executable, "-c", WORKER, str(marks), str(worker_code)],
                                get_logger("test"), FAST)

        def when_up(signum: int, count: int, prefix: str) -> None:
            def send() -> None:
                if len(lines(marks, prefix)) < count:
                    later(0.05, send)
                    return
                os.kill(os.getpid(), signum)
            send()

        when_up(signal.SIGHUP, 2, "up ")
        when_up(signal.SIGTERM, 2, "hup ")
        assert supervisor.run() == expected
        assert len(lines(marks, "up ")) == 2 and len(lines(marks, "hup ")) == 2
        assert {w.exit_code for w in supervisor.workers} == {worker_code}


# A worker whose drain never ends: the first SIGTERM is noted, the second exits at once.
SLOW_DRAIN = """
import os, signal, sys, time
marks = sys.argv[1]
def on_term(*_):
    if os.path.exists(marks) and f"drain {os.getpid()}" in open(marks).read():
        os._exit(128 + signal.SIGTERM)
    open(marks, "a").write(f"drain {os.getpid()}\\n")
signal.signal(signal.SIGTERM, on_term)
open(marks, "a").write(f"up {os.getpid()}\\n")
while True:
    time.sleep(0.05)
"""


def test_a_second_stop_signal_makes_every_worker_exit_at_once(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    supervisor = Supervisor(2, lambda index, state: [sys.executable, "-c", SLOW_DRAIN, str(marks)],
                            get_logger("test"), FAST)

    def signal_when(count: int, prefix: str) -> None:
        if len(lines(marks, prefix)) < count:
            later(0.05, lambda: signal_when(count, prefix))
            return
        os.kill(os.getpid(), signal.SIGTERM)

    signal_when(2, "up ")  # the first: both start draining
    signal_when(2, "drain ")  # the second, once both drain
    assert supervisor.run() == 128 + signal.SIGTERM
    assert {w.exit_code for w in supervisor.workers} == {128 + signal.SIGTERM}

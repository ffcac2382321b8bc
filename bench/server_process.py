"""A real `stt-server` subprocess for the hardening benchmarks: its own config and token file in
a folder, JSON log lines to a file (so tracebacks can be counted afterwards), and /proc figures
(file descriptors, threads, RSS)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"


@dataclass
class ServerProcess:
    proc: asyncio.subprocess.Process
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def tracebacks(self) -> int:
        return sum(line.count("Traceback") for line in self.log_lines())

    def error_lines(self) -> list[str]:
        return [line for line in self.log_lines() if '"level": "error"' in line]

    def figures(self) -> dict[str, float]:
        """Open file descriptors, threads, RSS (MiB) of the server process now."""
        status = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        fields = {line.split(":")[0]: line.split(":")[1].split() for line in status}
        return {"fds": len(os.listdir(f"/proc/{self.pid}/fd")), "threads": int(fields["Threads"][0]),
                "rss_mib": round(int(fields["VmRSS"][0]) / 1024, 1)}

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_server(folder: Path, config: dict[str, Any]) -> ServerProcess:
    (folder / "tokens.txt").write_text(f"{TOKEN} bench\n")
    config = {**config, "server": {"port": 0, **config.get("server", {})},
              "tokens": {"file": "tokens.txt", "create_if_missing": False, **config.get("tokens", {})},
              "logging": {**config.get("logging", {}), "format": "json"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    log_path = folder / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stt_server.cli", "--config", str(folder / "config.yaml"),
            stdout=asyncio.subprocess.DEVNULL, stderr=log, cwd=folder, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "listening":
                return ServerProcess(proc, event["url"], log_path)
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")

"""The accuracy set (tests/accuracy_set.py) through a real `stt-server`, in every path: a WER
table of clip × path with each clip's absolute bound. Prints numbers; the gate that fails on
them is tests/test_accuracy_gate.py.

Starts `stt-server` as a subprocess on 127.0.0.1 (port 0) with the default config (Whisper
tiny.en) unless --config names extra YAML to merge in.

    python bench/accuracy.py [--paths realtime,fast,batched,webm,ogg,mp3,flac,wav] [--texts]

The drain path (SIGTERM mid-stream) runs in tests/test_accuracy_gate.py, which prints its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import accuracy_set  # noqa: E402
from accuracy_paths import PATHS, ClipResult, run_path, table  # noqa: E402

from server_process import TOKEN, start_server  # noqa: E402  (bench/ is on sys.path)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated, from: " + ", ".join(PATHS))
    parser.add_argument("--config", type=Path, help="YAML merged into the server's config")
    parser.add_argument("--keep-log", type=Path, help="copy the server's JSON log here")
    parser.add_argument("--texts", action="store_true", help="print every transcript that fails its bound")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text()) if args.config else {}
    clips = accuracy_set.build()
    print(f"accuracy set: {len(clips)} clips, {sum(c.seconds for c in clips):.0f} s of audio")
    with tempfile.TemporaryDirectory() as folder:
        server = await start_server(Path(folder), config)
        log_copy = Path(folder) / "server.log"
        try:
            def url(**query: str) -> str:
                return f"{server.url}/v1/listen?" + urlencode({"token": TOKEN, **query})

            results: dict[str, list[ClipResult]] = {}
            for name in args.paths.split(","):
                began = time.monotonic()
                results[name] = await run_path(url, clips, PATHS[name])
                failing = sum(1 for r in results[name] if r.problems())
                print(f"{name}: {time.monotonic() - began:.1f} s, {failing} clips out of bounds", flush=True)
        finally:
            await server.stop()
            if args.keep_log:
                args.keep_log.write_text(log_copy.read_text(errors="replace"))
    print()
    print(table(results))
    if args.texts:
        for name, rows in results.items():
            for row in rows:
                if row.problems():
                    print(f"{name}/{row.clip.name}: {'; '.join(row.problems())}")


if __name__ == "__main__":
    asyncio.run(main())

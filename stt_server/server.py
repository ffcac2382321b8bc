"""The websockets layer: an explicit lifecycle (start, serve, drain or stop) around the pure core.

``process_request`` answers everything that can be answered before the upgrade (health,
readiness, metrics, auth, bad URLs, capacity, draining) with a plain HTTP response; accepted
connections get a :class:`SessionRunner`. ``reload`` applies a new config's safe keys;
``drain`` is the graceful shutdown used by the CLI's signal handlers and by tests.
"""

from __future__ import annotations

import asyncio
import http
import math
import json
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from . import providers as provider_registry
from . import web
from .cluster import LeaseRequest, session_leases
from .config import Config, LimitsConfig
from .endpoints import Endpoint
from .errors import (
    AuthError,
    CapacityError,
    ConfigError,
    ProviderError,
    SttServerError,
)
from .handshake import (
    OPENAI_SUBPROTOCOL,
    TOKEN_SUBPROTOCOL,
    SessionContext,
    accept_session,
    path_for_log,
)
from .http_routes import HttpRoutes, error_response, json_response
from .journal import Journal, final_record
from .listening import listen_error, load_certificate, tls_context
from .logs import get_logger, set_level
from .metrics import Metrics
from .protocols import WireProtocol
from .protocols.registry import protocol_for
from .providers import Provider
from .reload import ReloadPlan, plan_reload
from .results import Result
from .root_admission import admit_after_upgrade, admits_after_upgrade, peer_of
from .session_runner import DRAIN_REASON, SessionRunner
from .token_refresh import TokenRefresher
from .tokens import TokenStore
from .wyoming_server import WyomingListener

# Frames read ahead of a session (websockets' max_queue); see backpressure in session_runner.
READ_AHEAD_FRAMES = 4
# Part of the drain timeout kept for closing connections and stopping engines.
DRAIN_STOP_MARGIN = 2.0
# Longest a handshake waits for a token file reload it triggered (a big file takes seconds to
# parse); after that it is decided on the table in force, and the new one follows when ready.
TOKEN_RELOAD_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class WorkerSetup:
    """What the supervisor gives each worker: the box's shared lease file and metrics folder."""

    index: int
    leases_file: Path
    metrics_dir: str


class SttServer:
    def __init__(self, config: Config, *, tokens: TokenStore, providers: Mapping[str, Provider] | None = None,
                 worker: WorkerSetup | None = None) -> None:
        """``worker``: set when this server is one of ``server.workers`` processes on the box."""
        self.config = config
        self.tokens = tokens
        self.tokens.max_bytes = config.tokens.max_file_bytes  # the config is the one place it is set
        self.providers: dict[str, Provider] = dict(providers or {})
        self.log = get_logger("stt_server.server")
        self.worker = worker
        self.metrics = Metrics(multiprocess_dir=worker.metrics_dir if worker else None)
        self.leases = session_leases(config.cluster, box_file=worker.leases_file if worker else None,
                                     logger=self.log)
        self.journal: Journal | None = None
        self.draining = False
        self._server: Server | None = None
        self._ssl: ssl.SSLContext | None = None
        self._contexts: dict[ServerConnection, SessionContext] = {}
        # "/" upgrades whose admission waits for the first message: target, headers, the refusal.
        self._after_upgrade: dict[ServerConnection, tuple[str, Headers, SttServerError]] = {}
        self._runners: dict[ServerConnection, tuple[SessionRunner, asyncio.Task[Any]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.token_refresher = TokenRefresher(tokens, self.log)
        self._forced_token_refresh: asyncio.Future[None] | None = None
        self.http = HttpRoutes(self)
        # Home Assistant's Wyoming protocol on its own TCP port (wyoming.enabled).
        self.wyoming: WyomingListener | None = WyomingListener(self) if config.wyoming.enabled else None

    # --- lifecycle -------------------------------------------------------------------------

    async def load_providers(self) -> None:
        """Import, validate and start every enabled provider that is not given already."""
        specs = provider_registry.discover(self.config)
        for entry in self.config.providers:
            if not entry.enabled or entry.name in self.providers:
                continue
            provider = provider_registry.create(entry, specs, self.config.source)
            self._observe_provider(entry.name, provider)
            try:
                await provider.start()
            except ProviderError:
                raise
            except Exception as exc:
                raise ProviderError(f"provider {entry.name!r} failed to start: {type(exc).__name__}: {exc}",
                                    code="provider_unavailable") from exc
            self.providers[entry.name] = provider
            self.log.info("provider ready", provider=entry.name, **dict(provider.describe()))

    def _observe_provider(self, name: str, provider: Provider) -> None:
        provider.call_timeout = self.config.limits.engine_call_timeout_seconds
        provider.inference_observer = self.metrics.inference_observer(name)
        provider.batch_observer = self.metrics.batch_observer(name)
        self.metrics.watch_scheduler(name, provider.scheduler_stats)

    async def start(self) -> None:
        """Read the tokens, bind the port, load the engines, then accept connections.

        The port is bound before the engines load, so a port in use fails in a second, not
        after a model load; nothing is accepted (connections wait in the backlog) until every
        engine is ready.
        """
        for name, provider in self.providers.items():  # given ready-made (tests)
            self._observe_provider(name, provider)
        await self.refresh_tokens(force=True)
        self._ssl = tls_context(self.config)  # before the engines: a bad path fails fast
        self._check_wyoming_token()
        self._server = await self._bind()
        try:
            if self.wyoming is not None:
                await self._bind_wyoming(self.wyoming)
            await self.load_providers()
            await self.leases.start()
            if self.config.journal.enabled:
                journal = self.config.journal
                self.journal = Journal(self.config.resolve_path(journal.file), max_bytes=journal.max_bytes,
                                       backups=journal.backups)
                await self.journal.open()
        except BaseException:
            await self.stop()
            raise
        await self._server.start_serving()
        if self.wyoming is not None:
            await self.wyoming.start_serving()
        self.log.info("listening", url=self.url, providers=sorted(self.providers),
                      journal=str(self.journal.path) if self.journal else None, pid=os.getpid())

    async def _bind(self) -> Server:
        """The listening socket(s), bound but not yet accepting. Every socket option lives here."""
        server_config, limits = self.config.server, self.config.limits
        try:
            return await serve(
                self._handle,
                server_config.host,
                server_config.port,
                ssl=self._ssl,
                start_serving=False,
                # HTTP: answered before the upgrade.
                process_request=self._process_request,
                select_subprotocol=self._select_subprotocol,
                process_response=self._process_response,
                server_header=None,
                # Audio (Opus, PCM, base64 of either) does not compress: permessage-deflate, which
                # browsers always offer, cost ~40% of the server's CPU per message in the relay
                # benchmark (bench/RESULTS.md) and saved little bandwidth.
                compression=None,
                # Timeouts.
                open_timeout=limits.handshake_timeout_seconds,
                ping_interval=limits.ping_interval_seconds or None,
                ping_timeout=limits.ping_timeout_seconds or None,
                close_timeout=limits.close_timeout_seconds,
                # Limits.
                max_size=server_config.max_message_bytes,
                # Frames websockets reads ahead of the session: small, so that when a session stops
                # reading (backpressure) TCP pushes back on the sender at once.
                max_queue=READ_AHEAD_FRAMES,
                # Workers share the port; the kernel spreads new connections over them.
                reuse_port=self.worker is not None,
            )
        except OSError as exc:  # socket.gaierror is one too: a host name that does not resolve
            raise listen_error(exc, server_config.host, server_config.port, "server") from None

    def _check_wyoming_token(self) -> None:
        """ConfigError unless ``wyoming.token`` names a token in the token file just read."""
        if self.wyoming is None:
            return
        try:
            self.tokens.table.named(self.config.wyoming.token)
        except AuthError as error:
            raise ConfigError(f"{self.config.source or 'built-in defaults'}: wyoming.token: {error.message} "
                              f"({self.config.resolve_path(self.config.tokens.file)}); give a token's name, "
                              "not the token itself") from None

    async def _bind_wyoming(self, wyoming: WyomingListener) -> None:
        try:
            await wyoming.bind(reuse_port=self.worker is not None)
        except OSError as exc:
            raise listen_error(exc, self.config.wyoming.host, self.config.wyoming.port, "wyoming") from None

    @property
    def port(self) -> int:
        """The websocket port (for the Wyoming one: ``server.wyoming.port``)."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.server.host
        scheme = "wss" if self._ssl is not None else "ws"
        return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def stop(self) -> None:
        """Stop now: close open sessions with 1001 without a Draining notice (what they received is
        still transcribed for the journal), release engines."""
        if self._server is not None:
            self._server.close(code=1001, reason=DRAIN_REASON)
            await self._server.wait_closed()
        if self.wyoming is not None:
            await self.wyoming.stop()
        for provider in self.providers.values():
            await provider.stop()
        if self.journal is not None:
            await self.journal.close()
            self.journal = None
        await self.leases.close()

    async def drain(self, timeout: float | None = None) -> bool:
        """Graceful shutdown: refuse new sessions (503, /readyz 503), tell each open session,
        let it transcribe the audio it has received and send its finals, close it 1001, stop.

        Sessions still running when ``timeout`` (``server.drain_timeout_seconds``) is nearly
        spent are cut. Returns True when every session finished in time.
        """
        loop = asyncio.get_running_loop()
        timeout = self.config.server.drain_timeout_seconds if timeout is None else timeout
        deadline = loop.time() + timeout
        self.draining = True
        self.metrics.draining.set(1)
        self.log.info("draining", sessions=len(self._runners), timeout_s=timeout)
        if self.wyoming is not None:
            self.wyoming.stop_accepting()
        for runner in self.open_sessions():
            runner.drain()
        tasks = {task for _, task in self._runners.values()}
        pending: set[asyncio.Task[Any]] = set()
        if tasks:
            grace = max(0.0, deadline - loop.time() - min(DRAIN_STOP_MARGIN, timeout / 10))
            _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            self.log.warning("drain timeout: cutting sessions", sessions=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=max(0.1, deadline - loop.time()))
        await self.stop()
        self.log.info("drained", cut_sessions=len(pending))
        return not pending

    def reload(self, config: Config) -> ReloadPlan:
        """Apply a new, already validated config's safe keys; re-read the token file and the TLS
        certificate. Sessions already open keep the limits they started with."""
        plan = plan_reload(self.config, config)
        if self._ssl is not None:  # renewed certificate files; a bad one raises, nothing changed
            load_certificate(self._ssl, plan.config)
        self.config = plan.config
        set_level(self.config.logging.level)
        # In the background (it logs its own outcome); the reference keeps the task alive.
        self._forced_token_refresh = asyncio.ensure_future(self.refresh_tokens(force=True))
        self.log.info("configuration reloaded", changed=list(plan.applied) or "nothing")
        if plan.needs_restart:
            self.log.warning("configuration changes that need a restart were not applied",
                             keys=list(plan.needs_restart))
        return plan

    # --- handshake -------------------------------------------------------------------------

    def _select_subprotocol(self, connection: ServerConnection,
                            subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        for chosen in (TOKEN_SUBPROTOCOL, OPENAI_SUBPROTOCOL):
            if chosen in subprotocols:
                return Subprotocol(chosen)
        return None

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        route = self.http.route(request)
        if route is not None and not route.reads_tokens:
            return route.answer(connection, request)
        await self.refresh_tokens(wait=TOKEN_RELOAD_WAIT_SECONDS)
        try:
            if route is not None:
                return route.answer(connection, request)
            if self.draining:
                raise CapacityError("the server is shutting down; retry on another instance",
                                    code="draining")
            context = accept_session(
                request.path, request.headers, config=self.config, tokens=self.tokens.table,
                providers=self.providers.keys(), peer=peer_of(connection),
            )
            await self.admit(context)
            if "Upgrade" not in request.headers and web.asks_for_check(request.path):
                # A dry run: browsers hide a refused upgrade's body, so the kiosk page asks first
                # with a plain GET and shows the server's own reason. The slot the check took to
                # see whether one is free goes back at once.
                await self.leases.release(context.session_id)
                body = {"status": "ok", "provider": context.params.provider, "language": context.params.language}
                return json_response(http.HTTPStatus.OK, json.dumps(body).encode() + b"\n",
                                     {"Cache-Control": "no-store"})
        except SttServerError as error:
            if admits_after_upgrade(path, request, error):
                self._after_upgrade[connection] = (request.path, request.headers, error)
                return None
            self.log.info("handshake refused", status=error.http_status, code=error.code,
                          path=path_for_log(path), peer=peer_of(connection))
            self.metrics.refused(error.code, auth=isinstance(error, AuthError))
            return error_response(error)
        self.remember(connection, context)
        return None

    def remember(self, connection: ServerConnection, context: SessionContext) -> None:
        """The accepted session's context, until its connection is released."""
        self._contexts[connection] = context

    async def _process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        # A handshake that failed after process_request accepted it never reaches _handle.
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            self._after_upgrade.pop(connection, None)
            await self._release(connection)

    async def _release(self, connection: ServerConnection) -> None:
        context = self._contexts.pop(connection, None)
        if context is not None:
            await self.leases.release(context.session_id)

    def engines_behind(self) -> list[tuple[str, float]]:
        """Engines that need longer than limits.max_engine_wait_seconds to clear their queue."""
        limit = self.config.limits.max_engine_wait_seconds
        behind = []
        for name, provider in sorted(self.providers.items()):
            stats = provider.scheduler_stats()
            if limit and stats is not None and stats.estimated_wait > limit:
                behind.append((name, stats.estimated_wait))
        return behind

    def _check_engine_load(self, context: SessionContext) -> None:
        """503 engine_busy while the session's engine is too far behind (before any lease)."""
        for name, wait in self.engines_behind():
            if name == context.params.provider:
                raise CapacityError(f"the {name} engine is behind ({wait:.0f} s of queued audio to "
                                    "transcribe); retry later", code="engine_busy",
                                    retry_after=math.ceil(wait))

    async def _take_lease(self, context: SessionContext) -> None:
        """A slot for this session in the lease store: this process, this box, or the cluster
        (cluster.py); CapacityError when a limit is reached or Redis is down and says refuse."""
        limits = self.config.limits
        # The token file's max_sessions wins over the config's default for every token.
        token_limit = context.token.max_sessions or limits.max_sessions_per_token
        await self.leases.acquire(LeaseRequest(context.session_id, context.token.name, token_limit,
                                               limits.max_sessions))


    # --- the token file --------------------------------------------------------------------

    async def refresh_tokens(self, *, force: bool = False, wait: float | None = None) -> None:
        """Re-read the token file if it changed (see TokenRefresher.refresh)."""
        await self.token_refresher.refresh(force=force, wait=wait)

    # --- sessions --------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        session_connection = connection
        after_upgrade = self._after_upgrade.pop(connection, None)
        if after_upgrade is not None:
            admitted = await admit_after_upgrade(self, connection, *after_upgrade)
            if admitted is None:
                return
            _, session_connection = admitted
        context = self._contexts.get(connection)
        if context is None:  # cannot happen: process_request accepted it
            await connection.close(1011, "no session context")
            return
        try:
            # The session's slot is free once its client is gone, even while the engine still
            # finishes its audio: that work is the engine's load, which admission watches.
            releaser = asyncio.create_task(self._release_when_closed(connection))
            self._background.add(releaser)
            releaser.add_done_callback(self._background.discard)
            await self.run_session(session_connection, context, protocol_for(context.params), key=connection)
        except asyncio.CancelledError:  # cut at the drain deadline
            await connection.close(1001, DRAIN_REASON)
            raise
        except Exception:
            self.log.exception("session failed", **context.log_fields())
            await connection.close(1011, "internal error")
        finally:
            await self._release(connection)

    def _session_limits(self, context: SessionContext) -> LimitsConfig:
        if context.params.endpoint is Endpoint.OPENAI:
            return replace(self.config.limits, idle_timeout_seconds=self.config.openai_realtime.idle_timeout_seconds)
        return self.config.limits

    async def admit(self, context: SessionContext) -> None:
        """The checks a session whose parameters and token are known passes before it runs
        (what process_request does for a websocket): the engine can serve it, the engine is not
        too far behind, a slot is free (the lease taken here). SttServerError otherwise."""
        self.providers[context.params.provider].check_session(context.params)
        self._check_engine_load(context)
        await self._take_lease(context)

    async def run_session(self, connection: Any, context: SessionContext, protocol: WireProtocol, *,
                          key: Any = None) -> None:
        """Run one admitted session (a websocket's, or Wyoming's) as every session runs: its runner
        is drained with the rest. ``key``: what the session is known by (default ``connection``).
        The caller releases the lease."""
        runner = SessionRunner(cast(ServerConnection, connection), context, protocol,
                               self.providers[context.params.provider], logger=self.log,
                               on_result=self._on_result if self.journal is not None else None,
                               limits=self._session_limits(context),
                               metrics=self.metrics.session(context.params.provider, context.params.endpoint.value))
        task = asyncio.current_task()
        assert task is not None
        key = key or connection
        self._runners[key] = (runner, task)
        try:
            if self.draining:  # admitted just before the drain began
                runner.drain()
            await runner.run()
        finally:
            self._runners.pop(key, None)

    async def _release_when_closed(self, connection: ServerConnection) -> None:
        await connection.wait_closed()
        await self._release(connection)

    async def _on_result(self, context: SessionContext, result: Result) -> None:
        """Journal each final before it is sent: on disk even if the client is gone."""
        if not result.is_final or self.journal is None:
            return
        try:
            await self.journal.write(final_record(context, result))
        except OSError as exc:
            self.metrics.journal_errors.inc()
            self.log.error("journal write failed", error=str(exc), **context.log_fields())

    @property
    def active_sessions(self) -> int:
        return len(self._contexts)

    def open_sessions(self) -> list[SessionRunner]:
        """The sessions running now (for drain, and for tests to see what each has received)."""
        return [runner for runner, _ in self._runners.values()]

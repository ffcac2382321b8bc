"""Session admission: leases on session slots, counted in this process, on this box, or in Redis.

A session holds a *lease* from the handshake that admits it until it ends. Three stores:

* :class:`LocalLeases`: counters in this process (one server process: today's behaviour).
* :class:`BoxLeases`: a small SQLite file shared by the workers of one box (``server.workers``).
  SQLite because the check-and-take must be atomic across processes (``BEGIN IMMEDIATE`` locks
  the file) and a row can name its owner: the supervisor deletes a dead worker's rows as soon
  as it reaps it, and every lease also expires unless its worker refreshes it.
* :class:`RedisLeases`: sorted sets in Redis shared by every instance (``cluster.redis_url``);
  a member's score is its expiry, refreshed by a heartbeat, so the slots of an instance that
  was killed come back within ``cluster.lease_ttl_seconds``. Check-and-take is one Lua script.

:class:`ClusterLeases` takes the box lease first (cheap, enforces ``limits.max_sessions``) and
then the Redis one. The refusal logic (:func:`refusal`) and the Redis-state tracker are pure.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import ClusterConfig
from .errors import CapacityError, ConfigError

# What each refusal says; "where" is "the server", "this box" or "the cluster".
SERVER_LIMIT = "server_session_limit"
CLUSTER_LIMIT = "cluster_session_limit"
TOKEN_LIMIT = "token_session_limit"
CLUSTER_UNAVAILABLE = "cluster_unavailable"


@dataclass(frozen=True)
class LeaseRequest:
    """One session asking for a slot. Limits are 0 for none."""

    lease_id: str  # the session id
    token_name: str
    token_limit: int
    box_limit: int  # limits.max_sessions (whole box)


def refusal(total_open: int, token_open: int, *, total_limit: int, token_limit: int, token_name: str,
            where: str) -> CapacityError | None:
    """The error for a session that would pass a limit, or None when it fits. Pure."""
    if total_limit and total_open >= total_limit:
        return CapacityError(f"{where} already has {total_limit} open sessions",
                             code=CLUSTER_LIMIT if where == "the cluster" else SERVER_LIMIT)
    if token_limit and token_open >= token_limit:
        return CapacityError(f"token {token_name!r} already has {token_limit} open sessions"
                             + ("" if where == "the server" else f" on {where}"), code=TOKEN_LIMIT)
    return None


class SessionLeases(Protocol):
    """Where the server takes a slot for each session (process_request) and gives it back."""

    async def start(self) -> None: ...

    async def acquire(self, request: LeaseRequest) -> None:
        """Take a slot or raise :class:`CapacityError` (503)."""

    async def release(self, lease_id: str) -> None: ...

    async def close(self) -> None: ...


class LocalLeases:
    """Counts in this process: one server process, no supervisor, no Redis."""

    def __init__(self) -> None:
        self._token_of: dict[str, str] = {}
        self._per_token: dict[str, int] = {}

    async def start(self) -> None:
        pass

    async def acquire(self, request: LeaseRequest) -> None:
        error = refusal(len(self._token_of), self._per_token.get(request.token_name, 0),
                        total_limit=request.box_limit, token_limit=request.token_limit,
                        token_name=request.token_name, where="the server")
        if error is not None:
            raise error
        self._token_of[request.lease_id] = request.token_name
        self._per_token[request.token_name] = self._per_token.get(request.token_name, 0) + 1

    async def release(self, lease_id: str) -> None:
        token = self._token_of.pop(lease_id, None)
        if token is None:
            return
        left = self._per_token[token] - 1
        if left:
            self._per_token[token] = left
        else:
            del self._per_token[token]

    async def close(self) -> None:
        self._token_of.clear()
        self._per_token.clear()


_BOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    owner INTEGER NOT NULL,   -- worker pid
    expires REAL NOT NULL     -- time.monotonic(): one clock for every process of the box
);
CREATE INDEX IF NOT EXISTS leases_by_token ON leases (token);
CREATE INDEX IF NOT EXISTS leases_by_owner ON leases (owner);
"""


def _open_box_file(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE takes the write lock
    # before counting, so two workers cannot both take the last slot).
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # leases need no durability: they die with the box
    return db


def create_box_file(path: Path) -> None:
    """The supervisor makes the file before it starts any worker."""
    db = _open_box_file(path)
    try:
        db.executescript(_BOX_SCHEMA)
    finally:
        db.close()


def purge_owner(path: Path, owner: int) -> int:
    """Delete a dead worker's leases (the supervisor, on reaping it). Returns how many."""
    db = _open_box_file(path)
    try:
        return db.execute("DELETE FROM leases WHERE owner = ?", (owner,)).rowcount
    finally:
        db.close()


class BoxLeases:
    """Leases in a SQLite file shared by the workers of one box. SQLite calls are short but may
    wait for another worker's lock, so they run in a thread, never on the event loop."""

    def __init__(self, path: Path, *, ttl: float, owner: int | None = None) -> None:
        self.path = path
        self.ttl = ttl
        self.owner = os.getpid() if owner is None else owner
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one sqlite3 connection, used from worker threads
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._db = await asyncio.to_thread(_open_box_file, self.path)
        self._heartbeat = asyncio.create_task(self._refresh_forever())

    def _take(self, request: LeaseRequest) -> CapacityError | None:
        assert self._db is not None, "start() first"
        with self._lock:
            db = self._db
            now = time.monotonic()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM leases WHERE expires < ?", (now,))
                total = db.execute("SELECT count(*) FROM leases").fetchone()[0]
                token = db.execute("SELECT count(*) FROM leases WHERE token = ?",
                                   (request.token_name,)).fetchone()[0]
                error = refusal(total, token, total_limit=request.box_limit, token_limit=request.token_limit,
                                token_name=request.token_name, where="this box")
                if error is None:
                    db.execute("INSERT INTO leases VALUES (?, ?, ?, ?)",
                               (request.lease_id, request.token_name, self.owner, now + self.ttl))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return error

    def _give_back(self, lease_id: str) -> None:
        assert self._db is not None
        with self._lock:
            self._db.execute("DELETE FROM leases WHERE lease_id = ?", (lease_id,))

    def _refresh(self) -> None:
        assert self._db is not None
        with self._lock:
            self._db.execute("UPDATE leases SET expires = ? WHERE owner = ?", (time.monotonic() + self.ttl, self.owner))

    async def acquire(self, request: LeaseRequest) -> None:
        taking = asyncio.ensure_future(asyncio.to_thread(self._take, request))
        try:
            error = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # The handshake was cut (timeout, client gone) while the thread was taking the
            # lease: let it finish, and give the lease back, or it would be refreshed forever.
            if await taking is None:
                await asyncio.to_thread(self._give_back, request.lease_id)
            raise
        if error is not None:
            raise error

    async def release(self, lease_id: str) -> None:
        if self._db is not None:
            await asyncio.to_thread(self._give_back, lease_id)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await asyncio.to_thread(self._refresh)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._db is not None:
            db, self._db = self._db, None
            with self._lock:
                db.execute("DELETE FROM leases WHERE owner = ?", (self.owner,))
                db.close()


class Reachability:
    """Whether Redis answered last time; :meth:`observe` says when that changes. Pure."""

    def __init__(self) -> None:
        self.up: bool | None = None  # unknown until the first command

    def observe(self, ok: bool) -> bool:
        """Record one outcome; True when it differs from the previous one (log it)."""
        previous, self.up = self.up, ok
        # Starting up with Redis reachable is the normal case, not a change worth a log line.
        return previous != ok and not (previous is None and ok)


# Check and take in one step. KEYS: total set, token set. ARGV: member, ttl ms, total limit,
# token limit. Returns {status, total, token}: 0 taken, 1 over the total, 2 over the token's.
# The expiry uses Redis's clock, so instances need not agree on the time.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local total = redis.call('ZCARD', KEYS[1])
local token = redis.call('ZCARD', KEYS[2])
local ttl = tonumber(ARGV[2])
if tonumber(ARGV[3]) > 0 and total >= tonumber(ARGV[3]) then return {1, total, token} end
if tonumber(ARGV[4]) > 0 and token >= tonumber(ARGV[4]) then return {2, total, token} end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {0, total + 1, token + 1}
"""

# The heartbeat. KEYS: total set, then one token set per member. ARGV: ttl ms, then members.
# ZADD without XX: sessions admitted while Redis was down (or lost with a Redis restart) are
# counted again as soon as it answers.
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[i])
    redis.call('PEXPIRE', KEYS[i], ttl)
end
redis.call('PEXPIRE', KEYS[1], ttl)
return #ARGV - 1
"""


class RedisLeases:
    """Leases in Redis sorted sets shared by every instance (``cluster.*``)."""

    def __init__(self, config: ClusterConfig, *, logger: Any) -> None:
        self.config = config
        self.log = logger
        self.reachability = Reachability()
        self._client: Any = None
        self._acquire: Any = None
        self._refresh: Any = None
        self._held: dict[str, str] = {}  # lease id → token name
        self._heartbeat: asyncio.Task[None] | None = None
        # Keys share one hash tag so a Redis Cluster keeps them in one slot (the scripts touch several).
        self._tag = "{" + config.key_prefix + "}"

    def _total_key(self) -> str:
        return f"{self._tag}:sessions"

    def _token_key(self, token_name: str) -> str:
        return f"{self._tag}:token:{token_name}"

    @property
    def _ttl_ms(self) -> int:
        return int(self.config.lease_ttl_seconds * 1000)

    async def start(self) -> None:
        try:  # only when cluster.redis_url is set
            import redis.asyncio as redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise ConfigError("cluster.redis_url is set but the redis package is not installed "
                              "(pip install 'redis>=5')") from None

        timeout = self.config.redis_timeout_seconds
        # No retries inside the client: an unreachable Redis must cost one timeout, not several,
        # and the heartbeat tries again anyway.
        self._client = redis.Redis.from_url(self.config.redis_url, socket_timeout=timeout,
                                            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        self._acquire = self._client.register_script(_ACQUIRE)
        self._refresh = self._client.register_script(_REFRESH)
        try:
            await self._client.ping()
            self._observe(True)
        except Exception as exc:  # noqa: BLE001 - any client error means "down"
            self._observe(False, exc)
        self._heartbeat = asyncio.create_task(self._refresh_forever())

    def _observe(self, ok: bool, error: BaseException | None = None) -> None:
        if not self.reachability.observe(ok):
            return
        if ok:
            self.log.info("redis reachable again", held_sessions=len(self._held))
        else:
            self.log.warning("redis unreachable", on_redis_down=self.config.on_redis_down,
                             error=f"{type(error).__name__}: {error}" if error else None)

    async def acquire(self, request: LeaseRequest) -> None:
        """A handshake cancelled while the script runs may leave a lease in Redis that is not in
        ``_held``: nobody refreshes it, so it expires within lease_ttl_seconds."""
        from redis.exceptions import RedisError

        try:
            status, total, token = await self._acquire(
                keys=[self._total_key(), self._token_key(request.token_name)],
                args=[request.lease_id, self._ttl_ms, self.config.max_sessions, request.token_limit])
        except (RedisError, OSError) as exc:
            self._observe(False, exc)
            if self.config.on_redis_down == "refuse":
                raise CapacityError("the session store (Redis) is unreachable; retry later",
                                    code=CLUSTER_UNAVAILABLE) from None
            self._held[request.lease_id] = request.token_name  # counted once Redis is back
            return
        self._observe(True)
        if status:
            error = refusal(int(total), int(token), total_limit=self.config.max_sessions if status == 1 else 0,
                            token_limit=request.token_limit, token_name=request.token_name, where="the cluster")
            assert error is not None
            raise error
        self._held[request.lease_id] = request.token_name

    async def release(self, lease_id: str) -> None:
        from redis.exceptions import RedisError

        token = self._held.pop(lease_id, None)
        if token is None or self._client is None:
            return
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._total_key(), lease_id)
                pipe.zrem(self._token_key(token), lease_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._observe(False, exc)  # the lease expires on its own

    async def refresh(self) -> None:
        """Extend every lease this instance holds (the heartbeat; also callable by tests)."""
        from redis.exceptions import RedisError

        held = list(self._held.items())
        try:
            if held:
                await self._refresh(keys=[self._total_key(), *(self._token_key(t) for _, t in held)],
                                    args=[self._ttl_ms, *(lease for lease, _ in held)])
            else:
                await self._client.ping()
        except (RedisError, OSError) as exc:
            self._observe(False, exc)
            return
        self._observe(True)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl_seconds / 3)
            await self.refresh()

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self.reachability.up:  # else they expire on their own; don't wait a timeout for each
            for lease_id in list(self._held):
                await self.release(lease_id)
        self._held.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class ClusterLeases:
    """A box lease (``limits.max_sessions``) and then a cluster lease (Redis)."""

    def __init__(self, box: SessionLeases, cluster: SessionLeases) -> None:
        self.box = box
        self.cluster = cluster

    async def start(self) -> None:
        await self.box.start()
        await self.cluster.start()

    async def acquire(self, request: LeaseRequest) -> None:
        await self.box.acquire(request)
        try:
            await self.cluster.acquire(request)
        except BaseException:
            await self.box.release(request.lease_id)
            raise

    async def release(self, lease_id: str) -> None:
        await self.cluster.release(lease_id)
        await self.box.release(lease_id)

    async def close(self) -> None:
        await self.cluster.close()
        await self.box.close()


def session_leases(config: ClusterConfig, *, box_file: Path | None, logger: Any) -> SessionLeases:
    """The store for a server: in-process or box-wide (a worker), plus Redis when configured."""
    box: SessionLeases = (BoxLeases(box_file, ttl=config.lease_ttl_seconds) if box_file is not None
                          else LocalLeases())
    if not config.redis_url:
        return box
    return ClusterLeases(box, RedisLeases(config, logger=logger))

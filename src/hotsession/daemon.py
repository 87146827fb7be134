"""The daemon: the engine, the HTTP app and an embedded uvicorn server in one process.

Design
======
Ownership. :class:`Daemon` starts the hub (registry, supervisor, pool) before the server
accepts anything and stops it after the server has drained, so no request ever sees a half-open
store. uvicorn runs embedded (``uvicorn.Server.serve`` on our loop) with its own signal capture
turned off: the daemon owns SIGTERM and SIGINT.

Shutdown. The first signal (or :meth:`Daemon.request_shutdown`) starts a graceful stop:

1. the app begins shutting down: every open SSE stream ends with a final ``error`` event
   (``shutting_down``) and new requests get 503;
2. uvicorn stops accepting and waits (bounded) for in-flight requests to finish;
3. the hub stops: running turns end with a recorded ``error`` event, every agent process is
   ended, the registry is flushed and closed. Sessions persist; a restarted daemon lists them
   and their next turn resumes.

A second signal forces: agent process groups are SIGKILLed and the process exits at once (the
agents would die with it anyway: they carry a parent-death signal, see supervisor.py).

Discovery. Once bound, the daemon writes ``<state_dir>/daemon.json`` (pid, host, port, url) so
clients and tests find it even with ``--port 0``; it is removed on a clean exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from hotsession import __version__
from hotsession.api.app import create_app
from hotsession.api.deps import ApiState
from hotsession.cli_binary import resolve_cli_path
from hotsession.hub import Hotsession
from hotsession.isolation import prepare as prepare_isolation
from hotsession.settings import Settings, ensure_local_tenant
from hotsession.state_lock import StateLock

if TYPE_CHECKING:
    from hotsession.cluster.hub import ClusterHub

log = logging.getLogger("hotsession.daemon")

DISCOVERY_FILE = "daemon.json"
FORCED_EXIT_CODE = 130


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the daemon owns the signals), ticking once a second.

    uvicorn's main loop wakes every 0.1 s to see whether it should stop (and every tenth time
    renews its ``Date`` header): ten wake-ups a second of an idle daemon. Here it wakes once a
    second (the header is renewed as often as before) and at once when ``should_exit`` is set.
    Measured: the idle daemon's CPU, ``bench --cpu`` (docs/benchmarks.md, 2026-11-30)."""

    TICK_S = 1.0

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _should_exit = False

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._wake is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # uvicorn's tick count: a second is ten ticks
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.TICK_S)
            should_exit = await self.on_tick(counter)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Daemon:
    """``hotsession serve``: run until a signal or :meth:`request_shutdown`."""

    def __init__(self, settings: Settings, *, install_signals: bool = True) -> None:
        self.settings = settings
        self.install_signals = install_signals
        self.hub: Hotsession | None = None
        self.cluster: ClusterHub | None = None  # cluster mode's engine (docs/cluster.md)
        self.server: _Server | None = None
        self.url: str | None = None
        self.ready = asyncio.Event()
        self._state: ApiState | None = None
        self._signals = 0

    @property
    def discovery_path(self) -> Path:
        """Where the daemon says where it listens."""
        return Path(self.settings.config.state_dir) / DISCOVERY_FILE

    async def run(self, sock: socket.socket | None = None) -> None:
        """Serve until shut down. ``sock`` is an already bound listening socket (tests)."""
        settings = self.settings
        # The state dir's lock comes before anything else: a second daemon on it stops there
        # (StateDirBusy) before it touches the directory, logs, or sweeps the running daemon's
        # agents as orphans. Then isolation is checked: a config that cannot keep tenants apart
        # is refused before anything runs.
        lock = StateLock.acquire(settings.config.state_dir)
        try:
            isolation = prepare_isolation(
                settings,
                cli_path=str(resolve_cli_path(settings.config.cli_path)),
                agents=settings.cluster is None,  # in cluster mode each node prepares its own
            )
        except BaseException:
            lock.release()
            raise
        engine: Hotsession | ClusterHub
        if settings.cluster is not None:
            from hotsession.cluster.api import create_cluster_app
            from hotsession.cluster.service import cluster_hub

            try:
                self.cluster = engine = cluster_hub(settings, state_lock=lock)
            except BaseException:
                lock.release()
                raise
        else:
            self.hub = engine = Hotsession(settings.config, spawn_policy=isolation, state_lock=lock)
        await engine.start()
        try:
            settings, created = ensure_local_tenant(settings)
            self.settings = settings
            if created is not None:
                log.warning(
                    "created the local token in %s (mode 0600); clients read it from there",
                    settings.token_file,
                )
            elif settings.token_file is not None:
                log.info("local tenant; its token is in %s", settings.token_file)
            if self.cluster is not None:
                app = create_cluster_app(self.cluster, settings)
            else:
                assert self.hub is not None
                app = create_app(self.hub, settings)
            self._state = app.state.api
            config = uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_config=None,
                access_log=settings.log_level == "debug",
                lifespan="on",
                timeout_graceful_shutdown=10,
                timeout_keep_alive=30,
            )
            if sock is None:
                sock = bind(settings.host, settings.port)
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.url = f"http://{shown}:{port}"
            if not is_loopback(host):
                log.warning(
                    "listening on %s, beyond this machine: every client that can reach it and "
                    "holds a token can run Claude Code with full tools here; put TLS in front",
                    self.url,
                )
            self.server = _Server(config)
            if self.install_signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._on_signal, sig)
            self._write_discovery(host, port)
            log.info(
                "hotsession %s listening on %s · dashboard %s/ · API document %s/docs",
                __version__,
                self.url,
                self.url,
                self.url,
            )
            serving = asyncio.create_task(self.server.serve(sockets=[sock]), name="uvicorn")
            await self._wait_started(serving)
            self.ready.set()
            await serving
        finally:
            if self.install_signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if self._state is not None:
                self._state.begin_shutdown()
            await engine.stop()
            isolation.close()
            with contextlib.suppress(OSError):
                self.discovery_path.unlink()
            log.info("hotsession stopped")

    async def _wait_started(self, serving: asyncio.Task[None]) -> None:
        assert self.server is not None
        while not self.server.started:
            if serving.done():
                serving.result()  # raises what startup raised
                return
            await asyncio.sleep(0.01)

    def _write_discovery(self, host: str, port: int) -> None:
        data = {
            "pid": os.getpid(),
            "host": host,
            "port": port,
            "url": self.url,
            "version": __version__,
            "started_at": time.time(),
        }
        tmp = self.discovery_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(tmp, self.discovery_path)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: shutting down (again to force)", signal.Signals(sig).name)
            self.request_shutdown()
        else:
            log.warning("%s again: forced exit", signal.Signals(sig).name)
            self.force_exit()

    def request_shutdown(self) -> None:
        """Begin the graceful stop (see the module docstring)."""
        if self._state is not None:
            self._state.begin_shutdown()
        if self.server is not None:
            self.server.should_exit = True

    def force_exit(self) -> None:
        """Kill every agent process group and exit now."""
        if self.hub is not None and self.hub.started:
            for pid in list(self.hub.supervisor.children):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        logging.shutdown()
        os._exit(FORCED_EXIT_CODE)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on connections whose socket says
    # proto == IPPROTO_TCP, and accepted sockets inherit the listener's proto (0 by default).
    # Without it Nagle holds each SSE frame until the previous one is ACKed (+10-30 ms a turn).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed, else None (asyncio's).

    uvicorn picks uvloop itself only in ``uvicorn.run``; the daemon runs it embedded on its own
    loop, so the daemon chooses (httptools, uvicorn's ``http="auto"``, is picked by uvicorn).
    Measured with ``hotsession bench --concurrency 50``: uvloop + httptools cut the follow-up's
    overhead over the bare CLI from ~+500 to ~+40-75 ms (docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def configure_logging(level: str) -> None:
    """The daemon's log format (uvicorn's loggers included)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("uvicorn.error").setLevel(level.upper())


def run(settings: Settings) -> int:
    """Run the daemon in this process; returns the exit code."""
    configure_logging(settings.log_level)
    daemon = Daemon(settings)
    factory = loop_factory()
    log.debug("event loop: %s", "uvloop" if factory is not None else "asyncio")
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(daemon.run())
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror)
        return 1
    return 0

"""A private, throwaway Postgres server for tests and ``bench``: the distribution's binaries,
one temp dir, loopback only.

Postgres refuses to run as root. When this process is root, the server runs as an
unprivileged user: the Debian package's ``postgres`` when it exists, otherwise a system user
``hotsession-pg`` created with ``useradd --system``. Its data directory, socket and log live in
one fresh directory under the system temp dir (``/tmp`` is traversable by every user, pytest's
own temp dirs are not), removed by :meth:`PrivatePostgres.cleanup`.

Trust authentication on 127.0.0.1 only (with ``password=``: SCRAM for every connection, for a
server other local users must not reach), ``fsync`` off (a test server's data may be lost in a
power cut; it is deleted anyway), superuser ``hotsession``. The binaries are looked up in
``$HOTSESSION_PG_BINDIR``, then Debian's ``/usr/lib/postgresql/<version>/bin`` (newest), then
``PATH``; ``scripts/install-postgres.sh`` installs them when missing.

Why not pytest-postgresql: its executor runs ``initdb``/``pg_ctl`` as the current user, which
Postgres refuses when that is root (as in CI here), and ``bench --cluster`` needs the same
server outside pytest; what is left to write is this small module.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Final

__all__ = ["PostgresNotFound", "PrivatePostgres", "find_bindir"]

SUPERUSER: Final = "hotsession"
FALLBACK_USER: Final = "hotsession-pg"


class PostgresNotFound(RuntimeError):
    """No Postgres server binaries (``initdb``, ``pg_ctl``) on this machine."""


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``; raises ``PostgresNotFound``."""
    candidates: list[Path] = []
    env = os.environ.get("HOTSESSION_PG_BINDIR")
    if env:
        candidates.append(Path(env))

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    candidates += [Path(p) for p in debian]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for cand in candidates:
        if (cand / "initdb").is_file() and (cand / "pg_ctl").is_file():
            return cand
    raise PostgresNotFound(
        "Postgres server binaries (initdb, pg_ctl) not found: run scripts/install-postgres.sh"
        " or set HOTSESSION_PG_BINDIR"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(FALLBACK_USER)


class PrivatePostgres:
    """One private Postgres server; ``start()``, then connect with :attr:`url`."""

    def __init__(
        self, *, bindir: Path | None = None, port: int | None = None, password: str | None = None
    ) -> None:
        self.bindir = bindir or find_bindir()
        self.password = password
        self.port = port or _free_port()
        self.user = _server_user()
        self.base = Path(tempfile.mkdtemp(prefix="hotsession-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        if self.user is not None:
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self._initialized = False

    @property
    def url(self) -> str:
        """A libpq URL for the ``postgres`` database as the superuser."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        who = SUPERUSER if self.password is None else f"{SUPERUSER}:{self.password}"
        return f"postgresql://{who}@127.0.0.1:{self.port}/{dbname}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the cluster on first use, then start the server and wait until it accepts."""
        if not self._initialized:
            auth = ["--auth=trust"]
            pwfile = self.base / "pwfile"
            if self.password is not None:
                pwfile.write_text(self.password + "\n")
                if self.user is not None:
                    os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
                auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
            try:
                self._run(
                    "initdb", "-D", str(self.data), "-U", SUPERUSER, *auth,
                    "--encoding=UTF8", "--locale=C", "--no-sync",
                )  # fmt: skip
            finally:
                pwfile.unlink(missing_ok=True)
            self._initialized = True
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-k {self.base}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
                "-c shared_buffers=32MB",
            ]
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options,
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected; ``immediate``: a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def restart(self) -> None:
        """Stop (fast) and start again on the same port: every connection is dropped."""
        self.stop()
        self.start()

    def running(self) -> bool:
        proc = self._run("pg_ctl", "-D", str(self.data), "status", check=False)
        return proc.returncode == 0

    def cleanup(self) -> None:
        """Stop the server if it runs and delete everything."""
        if self._initialized and self.running():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ helpers

    def terminate_connections(self) -> int:
        """Drop every client connection but this one (a network fault); returns how many."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchall()
        return len(rows)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        proc = subprocess.run(
            [str(self.bindir / tool), *args],
            cwd=self.base,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            **kwargs,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode,
                proc.args,
                output=proc.stdout,
                stderr=f"{proc.stderr}\n--- server log ---\n{self.log_tail()}",
            )
        return proc

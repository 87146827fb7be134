"""The daemon's HTTP API as the CLI client sees it: requests, streams, and errors as one line.

Synchronous httpx (one request or one stream at a time is all a terminal needs). Errors become
:class:`ClientError` — shown as ``hotsession: <code>: <message>``, exit 1 — and a daemon that
cannot be reached, or a connection lost beyond repair, :class:`ConnectionProblem` (exit 2).
Streams are decoded by the one SSE decoder (``hotsession.sse``). Auth: ``--token`` /
``HOTSESSION_TOKEN``, else the local token the daemon wrote to ``<state-dir>/token``. Address:
``--url`` / ``HOTSESSION_URL``, else the one the daemon wrote to ``<state-dir>/daemon.json`` (so
``serve --port N`` is found, as ``hotsession-claude`` finds it), else :data:`DEFAULT_URL`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx

from hotsession.config import default_state_dir
from hotsession.sse import decode

DEFAULT_URL = "http://127.0.0.1:8765"
# Default codes for error answers that carry no ``{"error": {"code"}}`` body (a proxy, say).
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "prompt_too_large",
    422: "invalid_request",
    429: "queue_full",
    503: "unavailable",
}


class ClientError(click.ClickException):
    """A failure shown as one line, ``hotsession: <message>``, with its exit code."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"hotsession: {self.message}", err=True)


class ConnectionProblem(ClientError):
    """The daemon cannot be reached, or the connection to it broke (exit 2)."""

    exit_code = 2


class StreamLost(ConnectionProblem):
    """The connection broke in the middle of a stream."""


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: ``id`` (the session's sequence number), type and JSON data."""

    id: str | None
    event: str
    data: dict[str, Any]

    def to_json(self) -> str:
        """The NDJSON line of ``--json``."""
        seq: int | str | None = int(self.id) if self.id and self.id.isdigit() else self.id
        return json.dumps({"id": seq, "event": self.event, "data": self.data}, ensure_ascii=False)


def iter_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """The events of an SSE stream, their data decoded (``hotsession.sse`` does the framing)."""
    for frame in decode(lines):
        yield SseEvent(frame.id, frame.event, _parse_data(frame.data))


def _parse_data(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ClientError(f"the daemon sent an event that is not JSON: {text[:80]!r}") from None
    return value if isinstance(value, dict) else {"value": value}


class Api:
    """The daemon's HTTP API, with errors turned into :class:`ClientError`."""

    def __init__(self, url: str, token: str | None, token_hint: str) -> None:
        self.url = url.rstrip("/")
        self.token_hint = token_hint
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Creating a session may spawn a process; a stream waits as long as the turn takes.
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(120.0, connect=5.0)
        )

    def close(self) -> None:
        self.http.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise ConnectionProblem(
                f"cannot reach the daemon at {self.url} — start it with `hotsession serve`"
            ) from None
        except httpx.TimeoutException:
            raise ConnectionProblem(f"the daemon at {self.url} did not answer in time") from None
        except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
            raise StreamLost(f"lost the connection to the daemon at {self.url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ConnectionProblem(f"request to {self.url} failed: {exc}") from None

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        code = _STATUS_CODES.get(response.status_code, f"http_{response.status_code}")
        message = response.reason_phrase or "request failed"
        with contextlib.suppress(ValueError):
            body = response.json()
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                code = str(error.get("code") or code)
                message = str(error.get("message") or message)
            elif isinstance(body, dict) and isinstance(body.get("detail"), str):
                message = body["detail"]
        if response.status_code == 401:
            message = f"{message} — {self.token_hint}"
        raise ClientError(f"{code}: {message}")

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One JSON request; the decoded answer (``{}`` when empty)."""
        with self._errors():
            response = self.http.request(method, path, json=body)
        self._check(response)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"the daemon answered {path} with something that is not JSON"
            ) from None

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[Iterator[SseEvent]]:
        """An SSE stream's events; transport errors while reading become :class:`StreamLost`."""
        timeout = httpx.Timeout(None, connect=5.0)
        with (
            self._errors(),
            self.http.stream(method, path, json=body, headers=headers, timeout=timeout) as resp,
        ):
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            yield iter_sse(resp.iter_lines())


def discovered_url(state_dir: Path | None) -> str:
    """The address in ``<state-dir>/daemon.json`` (written by a running daemon), else
    :data:`DEFAULT_URL`."""
    path = (state_dir or default_state_dir()) / "daemon.json"
    try:
        url = json.loads(path.read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_URL
    return url if isinstance(url, str) and url else DEFAULT_URL


@contextlib.contextmanager
def connect(url: str | None, token: str | None, state_dir: Path | None) -> Iterator[Api]:
    """An :class:`Api` for the given options, closed afterwards."""
    if not url:
        url = discovered_url(state_dir)
    if token:
        hint = "check --token / HOTSESSION_TOKEN"
    else:
        path = (state_dir or default_state_dir()) / "token"
        try:
            token = path.read_text().strip() or None
            hint = f"check the token in {path} (or pass --token)"
        except OSError:
            hint = f"no token given and none in {path}: pass --token or --state-dir"
    api = Api(url, token, hint)
    try:
        yield api
    finally:
        api.close()

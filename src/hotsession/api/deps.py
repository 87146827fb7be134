"""What every route needs: the app's state and the caller's tenant (FastAPI dependencies)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hotsession.api.auth import Authenticator
from hotsession.api.metrics import Metrics
from hotsession.hub import Hotsession
from hotsession.settings import Settings, Tenant


@dataclass
class Shutdown:
    """The shutdown signal an app's routes and streams share (one machine's and a cluster's)."""

    _closing: asyncio.Future[None] | None = field(default=None, kw_only=True)

    @property
    def closing(self) -> asyncio.Future[None]:
        """Resolves when the daemon starts shutting down (streams end, requests get 503)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
        return self._closing

    @property
    def is_closing(self) -> bool:
        """True once shutdown began."""
        return self._closing is not None and self._closing.done()

    def begin_shutdown(self) -> None:
        """End every stream with a final event; refuse new requests with 503."""
        if not self.closing.done():
            self.closing.set_result(None)


@dataclass
class ApiState(Shutdown):
    """Shared by the routes of one app."""

    hub: Hotsession
    settings: Settings
    auth: Authenticator
    metrics: Metrics
    cli: dict[str, str] = field(default_factory=dict)
    # How each session opened here got its process ("spare" / "spawn" / "resume"); sessions
    # of an earlier daemon run are not in it.
    sources: dict[str, str] = field(default_factory=dict)


# Authentication itself happens in the edge middleware (before the body is read); this scheme
# only documents it in the OpenAPI document and gives the route the tenant it found.
_bearer = HTTPBearer(auto_error=False, description="A tenant's token.")


# Both dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its
# thread pool, and those two thread hops per request cost ~10 ms on a loaded 2-core machine
# (measured by ``hotsession bench``; see docs/benchmarks.md).
async def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


async def _tenant(
    request: Request, _creds: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Tenant:
    tenant: Tenant = request.scope["hotsession.tenant"]
    return tenant


Api = Annotated[ApiState, Depends(_state)]
CurrentTenant = Annotated[Tenant, Depends(_tenant)]

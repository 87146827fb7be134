"""Bearer tokens → tenants, and the tenant's workspace roots.

The tenant table keeps SHA-256 digests, never tokens. A presented token is hashed and compared
with *every* tenant's digest using :func:`hmac.compare_digest`, so neither a dict lookup's early
exit nor a byte-by-byte compare tells an attacker how close a guess came.

A token that matched is remembered (token → tenant, in memory, at most one entry per tenant's
digest since only valid tokens are kept), so a client's next request skips the hash and the
compares: every follow-up authenticates, and they were ~1/6 of the edge's own CPU per request
(measured in process, docs/benchmarks.md). The lookup of a token not remembered learns nothing
an attacker could use: Python hashes a ``str`` with a per-process random key (SipHash) and
compares the strings only on an equal 64-bit hash, so a wrong guess is a miss whatever its
bytes, and goes through the full constant-time check.

A session's cwd is resolved with :func:`os.path.realpath` (``..`` and every symlink) before it
is checked against the roots, and the resolved path is what the agent is started in, so a
symlink swapped after the check cannot move the session out. Outside the roots answers 403
whether or not the directory exists (no probing of the file system); inside but missing or not
a directory answers 422.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from hotsession.errors import Forbidden, InvalidRequest, Unauthorized
from hotsession.settings import Tenant


class Authenticator:
    """Maps ``Authorization: Bearer <token>`` to a tenant."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self._table = [(bytes.fromhex(t.token_sha256), t) for t in tenants]
        self._known: dict[str, Tenant] = {}  # tokens that matched (see the module docstring)

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of the header's token; raises ``Unauthorized``."""
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <token> header")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        known = self._known.get(token)
        if known is not None:
            return known
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Tenant | None = None
        for expected, tenant in self._table:
            if hmac.compare_digest(digest, expected):
                found = tenant
        if found is None:
            raise Unauthorized("invalid token")
        if len(self._known) < len(self._table):
            self._known[token] = found
        return found


def within(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or below it (both already resolved)."""
    if root == os.sep:
        return path.startswith(os.sep)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_cwd(tenant: Tenant, cwd: str | None) -> str:
    """The resolved working directory for a new session of ``tenant``.

    None means the tenant's first root — unless that is ``/`` (the local tenant's): an agent
    started in the filesystem root by default surprises everyone, so ``/`` must be asked for.
    Raises ``Forbidden`` (outside the roots) or ``InvalidRequest`` (relative, not a directory,
    missing where the default would be ``/``).
    """
    if cwd is None:
        cwd = tenant.roots[0]
        if cwd == "/":
            raise InvalidRequest(
                'cwd is required: give the working directory ("cwd": "/" to mean the '
                "filesystem root)",
                field="cwd",
            )
    if "\x00" in cwd:
        raise InvalidRequest("cwd must not contain NUL", field="cwd")
    if not os.path.isabs(cwd):
        raise InvalidRequest("cwd must be an absolute path", field="cwd")
    real = os.path.realpath(cwd)
    if not any(within(real, root) for root in tenant.roots):
        raise Forbidden("cwd is outside this tenant's workspace roots", field="cwd")
    if not os.path.isdir(real):
        raise InvalidRequest("cwd is not an existing directory", field="cwd")
    return real

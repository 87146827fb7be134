"""Joining the Ray cluster (``hotsession.cluster.actors.join``): failures in one line."""

from __future__ import annotations

from typing import Any

import pytest

ray = pytest.importorskip("ray")

from hotsession.cluster import actors  # noqa: E402


@pytest.fixture
def failing_init(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def init(*, address: str, **_: Any) -> None:
        calls.append(address)
        raise ConnectionError("ray client connection timeout")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    return calls


def test_ray_client_is_tried_again_then_refused_in_one_line(failing_init: list[str]) -> None:
    """A Ray Client connection that times out (its server starts a process per client) is
    tried ``JOIN_TRIES`` times; then one line says where and why (was: 'cannot listen on
    127.0.0.1:0: None', the daemon's message for an OSError)."""
    with pytest.raises(actors.ClusterUnreachable, match=r"^cannot join the Ray cluster at "):
        actors.join("ray://127.0.0.1:1")
    assert failing_init == ["ray://127.0.0.1:1"] * actors.JOIN_TRIES


def test_a_driver_address_is_tried_once(failing_init: list[str]) -> None:
    with pytest.raises(actors.ClusterUnreachable, match="connection timeout"):
        actors.join("127.0.0.1:1")
    assert failing_init == ["127.0.0.1:1"]

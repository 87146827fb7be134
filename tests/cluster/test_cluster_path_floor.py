"""The cluster path's floor (``bench --cluster``'s ``path_floor_overhead_ms``): a plain Ray actor
on a worker node drives a real CLI, with the prompt's record fenced and the transcript written
before each call returns."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from tests.cluster.conftest import worker_node

from hotsession.bench.environment import BenchEnv
from hotsession.bench.modes import BareCli
from hotsession.cluster.path_floor import SCHEMA, CliSpec, paired_followups, start_floor
from hotsession.errors import StaleEpoch
from hotsession.testing.postgres import PrivatePostgres

pytestmark = pytest.mark.integration


@pytest.fixture
def bench_env() -> Iterator[BenchEnv]:
    with BenchEnv() as env:
        yield env


async def _rows(conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql, args)
    return list(await cur.fetchall())


async def test_path_floor_fences_prompts_and_records_turns(
    ray_cluster: Any, cluster_pg: PrivatePostgres, bench_env: BenchEnv
) -> None:
    node = worker_node(ray_cluster).node_id
    floor = await start_floor(CliSpec.of(bench_env), cluster_pg.url, node)
    conn = await psycopg.AsyncConnection.connect(cluster_pg.url, autocommit=True)
    try:
        sid = floor.session_id
        assert floor.node == node  # where the actor says it runs: the worker it was placed on

        for i in range(3):
            _, out = await floor.followup(f"[[say:floor {i}]]")
            lines = out.decode().splitlines()
            result = json.loads(lines[-1])
            assert result["type"] == "result" and result["result"] == f"floor {i}"
            # The turn's transcript rows are in the store when the call has returned.
            rows = await _rows(
                conn,
                f"SELECT line FROM {SCHEMA}.transcript WHERE session_id = %s AND seq = %s"
                " ORDER BY n",
                sid,
                i + 1,
            )
            assert [r[0] for r in rows] == lines
        prompts = await _rows(
            conn,
            f"SELECT seq, epoch, prompt FROM {SCHEMA}.prompts WHERE session_id = %s ORDER BY seq",
            sid,
        )
        assert prompts == [(i + 1, 1, f"[[say:floor {i}]]") for i in range(3)]

        # Another node takes the session: the floor's epoch is stale, its prompt is refused,
        # nothing is written and the CLI never gets it.
        await conn.execute(
            f"UPDATE {SCHEMA}.owners SET node = 'other', epoch = epoch + 1 WHERE session_id = %s",
            (sid,),
        )
        with pytest.raises(StaleEpoch):
            await floor.followup("[[say:stale prompt]]")
        await asyncio.sleep(1.0)  # a prompt written to the CLI would reach the model by then
        assert not [e for e in bench_env.model_log() if "stale" in e.get("last_user_text", "")]
        count = await _rows(
            conn, f"SELECT count(*) FROM {SCHEMA}.prompts WHERE session_id = %s", sid
        )
        assert count == [(3,)]

        # Taken back (a new epoch), the session goes on; its conversation never held the
        # stale prompt: the request has two messages more than the last turn's (its reply and
        # the new prompt; four more had the stale prompt and its reply been there).
        assert await floor.actor.claim.remote() == 3
        _, out = await floor.followup("[[say:back]]")
        assert json.loads(out.decode().splitlines()[-1])["result"] == "back"
        main = [e for e in bench_env.model_log() if e.get("main")]
        assert [e["last_user_text"] for e in main[-2:]] == ["[[say:floor 2]]", "[[say:back]]"]
        assert main[-1]["n_messages"] == main[-2]["n_messages"] + 2
    finally:
        await conn.close()
        await floor.stop()


async def test_path_floor_pairs_with_the_bare_cli(
    ray_cluster: Any, cluster_pg: PrivatePostgres, bench_env: BenchEnv
) -> None:
    bare = BareCli(bench_env)
    await bare.setup()
    floor = await start_floor(
        CliSpec.of(bench_env), cluster_pg.url, worker_node(ray_cluster).node_id
    )
    try:
        before = len([e for e in bench_env.model_log() if e.get("main")])
        out, base = await paired_followups(floor, bare, 4)
        assert len(out) == 4 and len(base) == 4
        texts = [e["last_user_text"] for e in bench_env.model_log() if e.get("main")][before:]
        # Alternating: the bare CLI first in even rounds, the floor first in odd ones.
        assert texts == [
            "[[say:pb0]]",
            "[[say:pf0]]",
            "[[say:pf1]]",
            "[[say:pb1]]",
            "[[say:pb2]]",
            "[[say:pf2]]",
            "[[say:pf3]]",
            "[[say:pb3]]",
        ]
    finally:
        await floor.stop()
        await bare.teardown()

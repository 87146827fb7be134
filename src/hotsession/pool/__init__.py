"""The warm pool: spare processes per profile, memory budget, eviction and recycling.

One noun per module:

* ``control`` — :class:`Pool`: the control loop, what the host claims from, the stats;
* ``spares`` — ready spares per profile: claims, refills, spawns, failing profiles;
* ``switching`` — a sibling profile's spare switched to the claimed model and mode;
* ``budget`` — memory samples, the budget's room, and eviction of idle sessions;
* ``recycling`` — processes replaced at turn boundaries;
* ``sizing`` — how many spares a profile needs (base stock on the arrival rate);
* ``warmup`` — what a spare does before it counts as ready;
* ``context`` — what the pool needs of the engine (:class:`PoolContext`) and of a session
  (:class:`PooledSession`); the hub and the session implement them.

docs/pool.md has the design and the measurements.
"""

from hotsession.pool.context import PoolContext, PooledSession
from hotsession.pool.control import Pool
from hotsession.pool.spares import Profile, Spare
from hotsession.pool.switching import SWITCHABLE_MODES, switch_plan

__all__ = [
    "SWITCHABLE_MODES",
    "Pool",
    "PoolContext",
    "Profile",
    "PooledSession",
    "Spare",
    "switch_plan",
]

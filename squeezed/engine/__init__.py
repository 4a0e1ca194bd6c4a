"""The pure balancing engine: no I/O, no clock, no sleeping.

`model` holds the host snapshot types, `policy` the proportional target policy,
`squeezer` one decision step (stuck-driver detection, two-phase target setting),
and `operations` the loop that drives a host through the small `HostIO`
interface (snapshot, set target, set maxmem, clock, wait).
"""

from squeezed.engine.model import Action, Domain, Host, has_hit_target
from squeezed.engine.operations import (
    EngineConfig,
    HostIO,
    OpStats,
    balance,
    free_memory,
    free_memory_range,
    is_unbalanced,
    reserve,
)

__all__ = [
    "Action",
    "Domain",
    "EngineConfig",
    "Host",
    "HostIO",
    "OpStats",
    "balance",
    "free_memory",
    "free_memory_range",
    "has_hit_target",
    "is_unbalanced",
    "reserve",
]

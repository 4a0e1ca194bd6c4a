"""The pure balancing engine: no I/O, no clock, no sleeping.

`model` holds the host snapshot types, `policy` the proportional target policy,
`squeezer` one decision step (stuck-driver detection, two-phase target setting),
`operations` the loop that drives a host through the small `HostIO`
interface of `io` (snapshot, set target, set maxmem, clock, wait), and
`errors` the engine's own exceptions (gross amounts; the service maps them
to the interface's errors).
"""

from squeezed.engine.errors import (
    CannotFree,
    DeadlineExceeded,
    DomainsRefused,
    EngineError,
    HostFailed,
    InvalidAmount,
    OperationAbandoned,
    OperationFailed,
)
from squeezed.engine.io import HostIO
from squeezed.engine.model import Action, Domain, Host, has_hit_target
from squeezed.engine.operations import (
    EngineConfig,
    OpStats,
    balance,
    free_memory,
    free_memory_range,
    is_unbalanced,
    reserve,
)

__all__ = [
    "Action",
    "CannotFree",
    "DeadlineExceeded",
    "Domain",
    "DomainsRefused",
    "EngineConfig",
    "EngineError",
    "Host",
    "HostFailed",
    "HostIO",
    "InvalidAmount",
    "OpStats",
    "OperationAbandoned",
    "OperationFailed",
    "balance",
    "free_memory",
    "free_memory_range",
    "has_hit_target",
    "is_unbalanced",
    "reserve",
]

"""The virtual-time simulator: `host.SimulatedHost` (domains with balloon
drivers), its time (`clock`: virtual, or real) and `runner` (a scenario's steps
through the engine)."""

"""The virtual-time simulator: `host.SimulatedHost` (domains with balloon
drivers on a virtual or real clock) and `runner` (a scenario's steps through
the engine)."""

"""squeezectl's views of a running daemon: `top` (live terminal view),
`metrics` (Prometheus text) and `record` (state samples to plot).

They read the daemon through the get_state call only, via any transport with
a `call(method, *params)` (the Unix-socket MemoryClient, or another), so the
same views work however squeezectl reaches the daemon.
"""

"""The simulated xenstored, split along its seams: `tree` (paths, nodes,
copy-on-write snapshots), `watches` (the watch index), `handlers` (one function
per operation), `core` (sans-I/O: connections, transactions, dispatch) and
`server` (the Unix-socket shell, `squeezed-sim xenstored`)."""

"""The simulated Xen host from the real interfaces: `host.SimulatedXenHost`
(guests, toolstack), `xenstored` (the real wire protocol), `hypervisor` with
the stand-in libxenctrl (`libxenctrl_stub.c`, `build`), `switch` (a
message-switch) and `launch` (`squeezed --simulate`)."""

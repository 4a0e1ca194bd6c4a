"""Two simulators, and what they share.

* `squeezed.sim.virtual`: the virtual-time host the engine's tests,
  `squeezed-sim run` and the engine benchmark drive (the engine's `HostIO` and
  the service's `Backend` in one object, no I/O).
* `squeezed.sim.xenhost`: a simulated Xen host made of the real interfaces
  (xenstored on a Unix socket, a stand-in libxenctrl, a message-switch) that the
  production daemon runs on unchanged (`squeezed --simulate`, end-to-end tests).

Shared: the balloon-driver models (`drivers`), the scenario format
(`scenario`), the plot (`plot`) and the `squeezed-sim` command (`cli`).
"""

"""The virtual-time host simulator: balloon drivers, a simulated hypervisor
with reservations, TOML scenarios and the `squeezed-sim` command."""

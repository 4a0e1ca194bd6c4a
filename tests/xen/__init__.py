"""Real-Xen test tier: Xen 4.17 booted under QEMU (TCG), driven over the serial console.

Opt-in (SQUEEZED_TEST_XEN=1 or ``-m xen``); see docs/real-xen.md.
"""

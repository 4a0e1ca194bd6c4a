"""squeezed: the Xen host memory-ballooning daemon."""

__version__ = "0.1.0"

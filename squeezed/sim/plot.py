"""Memory over time as a picture: the simulator's `--plot` and
`squeezed-sim plot RECORDING` draw with this one function, so that a run on a
real host and a simulated scenario can be compared picture for picture.

Host free memory (black), each domain's actual (solid) and target (dashed)
in MiB, and a dotted line where each operation (a scenario step, or an
operation the daemon recorded) started.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NamedTuple


class Series(NamedTuple):
    """One point in time: host free KiB and per domain (domid, target, actual, maxmem)."""

    t_s: float
    host_free_kib: int
    domains: tuple[tuple[int, int, int, int], ...]


class Marker(NamedTuple):
    t_s: float
    label: str


def have_matplotlib(prog: str) -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"{prog}: plotting needs matplotlib; install it with"
              " `pip install 'squeezed[plot]'` (or `pip install matplotlib`)", file=sys.stderr)
        return False
    return True


def plot(
    series: Sequence[Series], markers: Sequence[Marker], title: str, path: str,
    *, xlabel: str = "simulated time (s)",
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    t = [s.t_s for s in series]
    fig, ax = plt.subplots(figsize=(11, 6))
    ax.plot(t, [s.host_free_kib / 1024 for s in series], color="black", lw=2,
            label="host free")
    domids = sorted({d[0] for s in series for d in s.domains})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, domid in enumerate(domids):
        pts = [(s.t_s, d) for s in series for d in s.domains if d[0] == domid]
        ts = [p[0] for p in pts]
        c = colours[i % len(colours)]
        ax.plot(ts, [p[1][2] / 1024 for p in pts], color=c, label=f"dom{domid} actual")
        ax.plot(ts, [p[1][1] / 1024 for p in pts], color=c, ls="--", lw=1,
                label=f"dom{domid} target")
    for m in markers:
        ax.axvline(m.t_s, color="grey", ls=":", lw=1)
        ax.annotate(m.label, (m.t_s, 1), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("memory (MiB)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

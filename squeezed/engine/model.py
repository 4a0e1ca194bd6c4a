"""Snapshot types of the balancing engine. Every amount is an integer in KiB."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_INACCURACY_KIB = 4


@dataclass(frozen=True, slots=True)
class Domain:
    """One domain as the engine sees it at one instant."""

    domid: int
    can_balloon: bool  # has advertised control/feature-balloon
    dynamic_min_kib: int
    target_kib: int
    dynamic_max_kib: int
    memory_actual_kib: int  # tot_pages minus memory-offset
    memory_max_kib: int  # Xen maxmem, in the same frame as target (no offsets)
    inaccuracy_kib: int = DEFAULT_INACCURACY_KIB
    # Flagged uncooperative before this operation (memory/uncooperative): its
    # driver has already shown it does not follow its target, so an operation
    # counts on nothing more from it and does not wait for it to prove it again.
    uncooperative: bool = False

    @property
    def range_kib(self) -> int:
        """How far the balloon target may vary (not how far actual may)."""
        return max(0, self.dynamic_max_kib - self.dynamic_min_kib)

    @property
    def min_freeable_kib(self) -> int:
        """What setting target = dynamic_min surely frees, allowing for the
        driver stopping up to inaccuracy short of its target (twice: once
        for where it is now and once for where it will stop).

        Negative within 2*inaccuracy of dynamic_min. It must stay linear in
        memory_actual above dynamic_min: a move there then changes host free
        memory and this by opposite amounts, leaving the policy's surplus (so
        every target) unchanged. Clamped at 0 instead, a domain's own moves fed
        back into its own target, and a lone domain near dynamic_min chased
        its tail forever."""
        return max(0, self.memory_actual_kib - self.dynamic_min_kib) - 2 * self.inaccuracy_kib

    @property
    def hit_target(self) -> bool:
        return has_hit_target(self.inaccuracy_kib, self.memory_actual_kib, self.target_kib)

    def short(self) -> str:
        """Upstream-style `<domid> T<target> A<actual> M<maxmem> B|?`."""
        arrow = direction_symbol(self.inaccuracy_kib, self.memory_actual_kib, self.target_kib)
        b = "B" if self.can_balloon else "?"
        return (
            f"{self.domid} T{self.target_kib} A{self.memory_actual_kib} "
            f"M{self.memory_max_kib} {b}{arrow}"
        )


@dataclass(frozen=True, slots=True)
class Host:
    """The host at one instant: its domains and usable free memory (free and
    scrub pages minus every outstanding reservation)."""

    domains: tuple[Domain, ...]
    free_mem_kib: int
    detail: str = field(default="", compare=False)  # e.g. "F.. S.. R.. T.." for logs

    def domain(self, domid: int) -> Domain | None:
        for d in self.domains:
            if d.domid == domid:
                return d
        return None


@dataclass(frozen=True, slots=True)
class Action:
    """Set a domain's balloon target."""

    domid: int
    new_target_kib: int


def has_hit_target(inaccuracy_kib: int, actual_kib: int, target_kib: int) -> bool:
    return abs(actual_kib - target_kib) <= inaccuracy_kib


def direction_symbol(inaccuracy_kib: int, actual_kib: int, target_kib: int) -> str:
    """'v' the driver must free memory, '^' allocate, 'x' at target."""
    if has_hit_target(inaccuracy_kib, actual_kib, target_kib):
        return "x"
    return "v" if actual_kib > target_kib else "^"

"""Squeezing operations: the loop that drives a host towards a goal.

The host comes in through `HostIO` (`squeezed.engine.io`), five calls: a
snapshot, writing a balloon target, writing maxmem, the clock and waiting.
Production passes the Xen backend with the wall clock; tests and the
simulator pass a simulated host with a virtual clock, so every decision is
deterministic. How long to wait between looks is `io.poll_delay_s`: adaptive,
so freeing memory completes within a poll interval of the drivers' own speed.

Failures are the engine's own exceptions (`squeezed.engine.errors`), with
gross amounts; the service maps them to the interface's errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from squeezed.engine.errors import (
    CannotFree,
    DeadlineExceeded,
    DomainsRefused,
    EngineError,
    HostFailed,
    InvalidAmount,
    OperationFailed,
)
from squeezed.engine.errors import OperationAbandoned as OperationAbandoned  # re-exported
from squeezed.engine.io import HostIO as HostIO  # re-exported
from squeezed.engine.io import begin_operation, poll_delay_s, quick_free_kib, target_batch
from squeezed.engine.model import Domain, Host
from squeezed.engine.policy import proportional_targets
from squeezed.engine.squeezer import (
    DEFAULT_STUCK_AFTER_S,
    Decision,
    Squeezer,
    StucknessMonitor,
    Verdict,
)

log = logging.getLogger("squeezed.engine")

# 64 MiB low-memory emergency pool (Xen's low_mem_virq_limit) + 8 MiB slack.
DEFAULT_RESERVE_KIB = 64 * 1024 + 8 * 1024
DEFAULT_TOLERANCE_KIB = 512
DEFAULT_UNCOOPERATIVE_AFTER_S = 20.0
DEFAULT_OPERATION_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class EngineConfig:
    reserve_kib: int = DEFAULT_RESERVE_KIB  # host free memory always kept back
    tolerance_kib: int = DEFAULT_TOLERANCE_KIB  # balance is happy within this
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S
    uncooperative_after_s: float = DEFAULT_UNCOOPERATIVE_AFTER_S
    min_poll_s: float = 0.02
    max_poll_s: float = 1.0
    two_phase: bool = True
    # No operation runs longer than this: it fails with DeadlineExceeded (and
    # gives back what it freed), so one bad guest cannot block every later one.
    operation_timeout_s: float = DEFAULT_OPERATION_TIMEOUT_S


@dataclass
class OpStats:
    iterations: int = 0
    elapsed_s: float = 0.0


def _clamp(lo: int, hi: int, v: int) -> int:
    return max(lo, min(hi, v))


def _write(io: HostIO, d: Domain, target_kib: int, maxmem_kib: int) -> None:
    """Move target and maxmem so that maxmem >= target holds at every instant:
    raise maxmem before raising the target, lower the target before maxmem."""
    if target_kib > d.target_kib:
        if maxmem_kib != d.memory_max_kib:
            io.set_maxmem(d.domid, maxmem_kib)
        io.set_target(d.domid, target_kib)
    else:
        if target_kib != d.target_kib:
            io.set_target(d.domid, target_kib)
        if maxmem_kib != d.memory_max_kib:
            io.set_maxmem(d.domid, maxmem_kib)


def _write_all(io: HostIO, writes: list[tuple[Domain, int, int]]) -> None:
    """`_write` for each, or, when the host takes a batch of targets, the
    same per-domain order in three steps: maxmem raised where the target
    rises, every target in one batch, maxmem lowered where it does not."""
    batch = target_batch(io)
    if batch is None or len({d.domid for d, _, _ in writes}) != len(writes):
        for d, target_kib, maxmem_kib in writes:
            _write(io, d, target_kib, maxmem_kib)
        return
    for d, target_kib, maxmem_kib in writes:
        if target_kib > d.target_kib and maxmem_kib != d.memory_max_kib:
            io.set_maxmem(d.domid, maxmem_kib)
    targets = {d.domid: t for d, t, _ in writes if t != d.target_kib}
    if targets:
        batch(targets)
    for d, target_kib, maxmem_kib in writes:
        if target_kib <= d.target_kib and maxmem_kib != d.memory_max_kib:
            io.set_maxmem(d.domid, maxmem_kib)


def change_host_free_memory(
    io: HostIO,
    cfg: EngineConfig,
    aim_kib: int,
    success: Callable[[int], bool],
    need_kib: int | None,
    *,
    begin: bool = True,
    give_back: bool = True,
    stats: OpStats | None = None,
) -> OpStats:
    """Loop until every active domain hit its target and no target changes.

    `aim_kib` is the host free memory the policy aims at, `success` the final
    condition on host free memory, `need_kib` (if any) the least free memory
    that satisfies it: used to fail fast when even every balloonable domain
    at dynamic_min could not provide it. The fast path needs the aim too, so
    that a range reservation gets its proportional share, not just its min.

    Errors carry upstream's arguments: CannotFree(aim, free with every domain
    at dynamic_min), amounts including the kept reserve (the service nets it
    out). When the operation fails (or the host does) after targets were
    lowered, what was freed is given back at once (`_give_back`). A caller's
    `stats` is filled in even when the operation raises.
    """
    stats = OpStats() if stats is None else stats
    if begin:
        begin_operation(io)
    start_s = io.now()
    if need_kib is not None:
        # Fast path: enough is free and nothing is moving. A host that knows
        # so without reading every domain says so first (issue 12).
        quick_kib = quick_free_kib(io)
        if quick_kib is not None and quick_kib >= max(need_kib, aim_kib):
            return stats
    host = io.snapshot()
    balloonable = [d for d in host.domains if d.can_balloon]
    if need_kib is not None:
        if host.free_mem_kib >= max(need_kib, aim_kib) and all(d.hit_target for d in balloonable):
            return stats
        _fail_fast(host, balloonable, aim_kib, need_kib)

    sq = Squeezer(StucknessMonitor(cfg.stuck_after_s), two_phase=cfg.two_phase)
    try:
        _squeeze(io, cfg, sq, host, aim_kib, success, stats, start_s)
    except (OperationFailed, HostFailed, OSError) as e:
        if give_back:
            _give_back(io, cfg, sq, e, stats)
        stats.elapsed_s = io.now() - start_s
        raise
    stats.elapsed_s = io.now() - start_s
    return stats


def _fail_fast(host: Host, balloonable: list[Domain], aim_kib: int, need_kib: int) -> None:
    """Fail at once, touching nothing, when the need is surely out of reach:
    above what every balloonable domain at dynamic_min would leave free (no
    allowance for inaccuracy), or above that without the domains already
    flagged uncooperative, which count only for what they have given."""
    def ceiling(domains: list[Domain]) -> int:
        return host.free_mem_kib + sum(
            max(0, d.memory_actual_kib - d.dynamic_min_kib) for d in domains
        )

    ceiling_kib = ceiling(balloonable)
    if ceiling_kib < need_kib:
        log.info(
            "cannot free %d KiB: %d KiB free, at most %d KiB with every domain at dynamic_min",
            need_kib, host.free_mem_kib, ceiling_kib,
        )
        # What upstream reports after ballooning everyone to dynamic_min.
        raise CannotFree(aim_kib, ceiling_kib)
    flagged = [d for d in balloonable if d.uncooperative]
    cooperative_kib = ceiling([d for d in balloonable if not d.uncooperative])
    if flagged and cooperative_kib < need_kib:
        blamed = sorted(d.domid for d in flagged if d.memory_actual_kib > d.dynamic_min_kib)
        log.info(
            "cannot free %d KiB without domains flagged uncooperative %s: at most %d KiB "
            "from the others", need_kib, blamed, cooperative_kib,
        )
        raise DomainsRefused(blamed)


def _squeeze(
    io: HostIO,
    cfg: EngineConfig,
    sq: Squeezer,
    host: Host,
    aim_kib: int,
    success: Callable[[int], bool],
    stats: OpStats,
    start_s: float,
) -> None:
    delay_s = cfg.min_poll_s
    previous: dict[int, int] = {}
    deadline_s = start_s + cfg.operation_timeout_s
    while True:
        now_s = io.now()
        if now_s > deadline_s:
            raise DeadlineExceeded(
                f"operation timed out after {now_s - start_s:.1f} s (operation-timeout "
                f"{cfg.operation_timeout_s:g} s) aiming at {aim_kib} KiB free; "
                f"last seen {host.detail or f'F{host.free_mem_kib}'}"
            )
        host = io.snapshot() if stats.iterations else host
        stats.iterations += 1
        dec = sq.step(host, aim_kib, success, now_s)
        _apply(io, host, dec, stats)
        if dec.verdict is Verdict.SUCCESS:
            return
        if dec.verdict is Verdict.FAILED:
            if not dec.blamed or dec.blamed == (0,):
                raise CannotFree(aim_kib, host.free_mem_kib)
            raise DomainsRefused(list(dec.blamed))
        moved = any(previous.get(d.domid) != d.memory_actual_kib for d in host.domains)
        previous = {d.domid: d.memory_actual_kib for d in host.domains}
        delay_s = poll_delay_s(
            delay_s, bool(dec.actions) or moved, now_s,
            min_poll_s=cfg.min_poll_s, max_poll_s=cfg.max_poll_s,
            stuck_at_s=sq.stuckness.next_deadline_s(host), deadline_s=deadline_s,
        )
        io.wait(delay_s)


def _apply(io: HostIO, host: Host, dec: Decision, stats: OpStats) -> None:
    """Write one decision: cap newly inactive domains, set active ones' targets."""
    by_id = {d.domid: d for d in host.domains}
    new_targets = {a.domid: a.new_target_kib for a in dec.actions}
    writes: list[tuple[Domain, int, int]] = []  # (domain, target, maxmem), in order
    for d in dec.declared_inactive:
        if not d.can_balloon:
            continue
        # A stuck driver may wake up later: cap it where it is now (within
        # its range) so it cannot take memory that went to someone else.
        m = _clamp(d.dynamic_min_kib, d.dynamic_max_kib, min(d.target_kib, d.memory_actual_kib))
        log.info("domain %d declared inactive (%s); maxmem %d KiB", d.domid,
                 "flagged uncooperative" if d.uncooperative else "stuck balloon driver", m)
        writes.append((d, min(d.target_kib, m), m))
    for domid in dec.active:
        d = by_id[domid]
        t = new_targets.get(domid, d.target_kib)
        if t != d.target_kib or d.memory_max_kib != t:
            writes.append((d, t, t))
    _write_all(io, writes)
    # The line costs ~2 us a domain to format: only when it will be seen.
    if (dec.actions or dec.declared_inactive) and log.isEnabledFor(logging.INFO):
        log.info(
            "%s; %s", host.detail or f"F{host.free_mem_kib}",
            "; ".join(
                d.short() + ("" if d.domid not in new_targets else
                             ("^" if new_targets[d.domid] > d.target_kib else "v"))
                for d in host.domains
            ),
        )


def _give_back(io: HostIO, cfg: EngineConfig, sq: Squeezer, why: BaseException,
               stats: OpStats) -> None:
    """A failed operation leaves guests squeezed: hand everything above the
    kept reserve back to the domains still active, now, without waiting for
    their drivers (the periodic balancer finishes the job). Best effort: a
    failure here is logged and the operation's own error is the one raised."""
    try:
        host = io.snapshot()
        dec = sq.step(host, cfg.reserve_kib, lambda _free: False, io.now())
        if dec.actions:
            log.info("operation failed (%s): giving back memory to %d domain(s)",
                     why, len(dec.actions))
        _apply(io, host, dec, stats)
    except (EngineError, OSError) as e:
        log.error("giving memory back after a failed operation failed: %s", e)


def free_memory(
    io: HostIO, cfg: EngineConfig, kib: int, stats: OpStats | None = None
) -> OpStats:
    """Make host free memory at least `kib` (the kept reserve not added)."""
    if kib < 0:
        raise InvalidAmount(kib)
    return change_host_free_memory(io, cfg, kib, lambda free: free >= kib, kib, stats=stats)


def reserve(io: HostIO, cfg: EngineConfig, kib: int, stats: OpStats | None = None) -> OpStats:
    """Free `kib` on top of the kept reserve, for a new domain."""
    if kib < 0:
        raise InvalidAmount(kib)
    return free_memory(io, cfg, kib + cfg.reserve_kib, stats)


def ideal_new_domain_kib(host: Host, cfg: EngineConfig, min_kib: int, max_kib: int) -> int:
    """What the policy would give a new domain with range [min, max]."""
    # As upstream: every domain of the host takes part, and no domain (the
    # newcomer, with nothing allocated, included) counts as freeing less than 0.
    newcomer = Domain(-1, True, min_kib, min_kib, max_kib, 0, 0)
    max_free = host.free_mem_kib + sum(max(0, d.min_freeable_kib) for d in host.domains)
    domains = [*host.domains, newcomer]
    return proportional_targets(host.free_mem_kib, domains, cfg.reserve_kib, max_free)[-1]


def free_memory_range(
    io: HostIO, cfg: EngineConfig, min_kib: int, max_kib: int, stats: OpStats | None = None
) -> tuple[int, OpStats]:
    """Free between min and max (plus the kept reserve); returns the amount
    the caller may use: max(min, min(usable, max))."""
    if min_kib < 0:
        raise InvalidAmount(min_kib)
    if max_kib < min_kib:
        raise InvalidAmount(max_kib)
    begin_operation(io)
    ideal_kib = ideal_new_domain_kib(io.snapshot(), cfg, min_kib, max_kib)
    need_kib = min_kib + cfg.reserve_kib
    stats = change_host_free_memory(
        io, cfg, ideal_kib + cfg.reserve_kib, lambda free: free >= need_kib, need_kib=need_kib,
        begin=False, stats=stats,
    )
    usable_kib = io.snapshot().free_mem_kib - cfg.reserve_kib
    return max(min_kib, min(usable_kib, max_kib)), stats


def _is_balanced(cfg: EngineConfig) -> Callable[[int], bool]:
    return lambda free: free - cfg.reserve_kib < cfg.tolerance_kib


def balance(io: HostIO, cfg: EngineConfig, stats: OpStats | None = None) -> OpStats | None:
    """Hand out everything above the kept reserve. Like upstream it does not
    fail because a driver is stuck or every domain is at dynamic_max; unlike
    upstream it raises when the host itself failed (HostFailed: a refused
    write) or the operation ran out of time (DeadlineExceeded)."""
    try:
        return change_host_free_memory(io, cfg, cfg.reserve_kib, _is_balanced(cfg), need_kib=None,
                                       give_back=False, stats=stats)
    except CannotFree as e:
        # Every domain is at dynamic_max already: the rest stays free.
        log.debug("balance: every domain is at its dynamic_max; %d KiB stay free", e.free_kib)
        return None
    except DomainsRefused as e:
        log.debug("balance ended early: %s", e)
        return None


def is_unbalanced(io: HostIO, cfg: EngineConfig) -> bool:
    """Cheap check for the periodic balancer: would one step change a target?"""
    begin_operation(io)
    host = io.snapshot()
    dec = Squeezer(StucknessMonitor(cfg.stuck_after_s), two_phase=cfg.two_phase).step(
        host, cfg.reserve_kib, _is_balanced(cfg), io.now()
    )
    return dec.verdict is Verdict.ADJUST and bool(dec.actions)

"""Issue 11 #4: a refused memory/target write (EACCES, quota) or maxmem
hypercall (EPERM) was swallowed at DEBUG and ended as
Domains_refused_to_cooperate against a healthy guest, or spun for ever with
maxmem lowered below the guests' memory. Only "domain gone" is expected;
anything else is logged at ERROR and fails the operation with Internal_error
saying what failed, and maxmem is never set below a domain's allocation."""

from __future__ import annotations

import errno
import logging
from typing import Any

import pytest

from squeezed.errors import InternalError
from squeezed.xen.xenctrl import XenCtrlError
from squeezed.xen.xenstore import XenstoreError
from squeezed.xen.xs_wire import Op
from tests.faults.xenenv import GIB, XenEnv


class _DenyingTransaction:
    def __init__(self, t: Any, suffix: str) -> None:
        self._t, self._suffix = t, suffix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    def write(self, path: str, value: str) -> None:
        if path.endswith(self._suffix):
            raise XenstoreError("EACCES", path)
        self._t.write(path, value)


class DenyTargetWrites:
    """The xenstore client, with every write of memory/target refused."""

    def __init__(self, client: Any) -> None:
        self._c = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)

    def transaction(self, fn: Any, max_retries: int = 16) -> Any:
        return self._c.transaction(lambda t: fn(_DenyingTransaction(t, "/memory/target")),
                                   max_retries)

    def pipeline(self, requests: Any, **kw: Any) -> Any:
        """The batched writes (target_writes): refused without being sent."""
        denied = [r.op == Op.WRITE and (r.path or "").endswith("/memory/target")
                  for r in requests]
        kept = [r for r, d in zip(requests, denied, strict=True) if not d]
        epoch, outs = self._c.pipeline(kept, **kw)
        sent = iter(outs)
        return epoch, [XenstoreError("EACCES", r.path) if d else next(sent)
                       for r, d in zip(requests, denied, strict=True)]


def maxmem_never_below_allocation(env: XenEnv) -> None:
    for di in env.xc.domain_list():
        if di.domid != 0:
            assert di.max_pages >= di.tot_pages, di


def test_refused_target_write_fails_with_internal_error(short_tmp, monkeypatch, caplog):
    caplog.set_level(logging.ERROR, logger="squeezed.xen.host")
    env = XenEnv(short_tmp, monkeypatch, xs=DenyTargetWrites)
    try:
        sid = env.svc.login("t", "xenopsd")
        with pytest.raises(InternalError) as ei:
            env.svc.reserve_memory("t", sid, 3 * GIB // 2)  # needs ballooning
        assert "memory/target" in ei.value.message and "EACCES" in ei.value.message
        assert any("EACCES" in r.getMessage() and r.levelno == logging.ERROR
                   for r in caplog.records)
        maxmem_never_below_allocation(env)
        assert env.svc.backend.reservations() == []
    finally:
        env.close()


class RefusingXenCtrl:
    def __init__(self, xc: Any, err: int) -> None:
        self._xc, self._err = xc, err

    def __getattr__(self, name: str) -> Any:
        return getattr(self._xc, name)

    def set_maxmem_kib(self, domid: int, kib: int) -> None:
        raise XenCtrlError("xc_domain_setmaxmem", self._err)


def test_refused_maxmem_hypercall_fails_with_internal_error(short_tmp, monkeypatch):
    env = XenEnv(short_tmp, monkeypatch)
    try:
        env.host.xc = RefusingXenCtrl(env.xc, errno.EPERM)
        sid = env.svc.login("t", "xenopsd")
        with pytest.raises(InternalError) as ei:
            env.svc.reserve_memory("t", sid, 3 * GIB // 2)
        assert "maxmem" in ei.value.message and "EPERM" in ei.value.message
    finally:
        env.close()


def test_domain_gone_is_expected_not_an_error(short_tmp, monkeypatch, caplog):
    """ESRCH from the hypercall (the domain was destroyed under us) is INFO."""
    caplog.set_level(logging.INFO)
    env = XenEnv(short_tmp, monkeypatch)
    try:
        env.host.snapshot()
        env.host.xc = RefusingXenCtrl(env.xc, errno.ESRCH)
        env.host.set_maxmem(2, 2 * GIB)  # a change (else no hypercall); no exception
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("destroyed mid-operation" in r.getMessage() and r.levelno == logging.INFO
                   for r in caplog.records)
        # The real hypercall on a destroyed domain: libxenctrl's own message too.
        env.host.xc = env.xc
        env.host._tot_kib[2] = 1 * GIB  # as if read just before the destruction
        env.host._types[2] = "pv"
        env.sim.hv.destroy_domain(2)
        env.host.set_maxmem(2, 2 * GIB)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
            r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        env.close()


def test_maxmem_is_never_set_below_allocation(short_tmp, monkeypatch):
    env = XenEnv(short_tmp, monkeypatch)
    try:
        env.host.snapshot()
        env.host.set_maxmem(1, 1 * GIB)  # domain 1 holds 2 GiB
        (d1,) = [di for di in env.xc.domain_list() if di.domid == 1]
        assert d1.max_pages * 4 >= d1.tot_pages * 4 == 2 * GIB
    finally:
        env.close()

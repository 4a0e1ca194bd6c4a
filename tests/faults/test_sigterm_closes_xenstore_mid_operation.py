"""SIGTERM abandons the operation and closes the xenstore client. An operation
whose next xenstore request meets the closed client must answer its caller
"shutting down", not blame xenstore (found as a rare race in the switch's
SIGTERM test)."""

from __future__ import annotations

import pytest

from squeezed.errors import InternalError

from .xenenv import XenEnv


def test_a_closed_client_after_abandon_is_reported_as_shutting_down(short_tmp, monkeypatch):
    env = XenEnv(short_tmp, monkeypatch)
    try:
        env.host.abandon()
        env.client.close()
        with pytest.raises(InternalError, match="shutting down"):
            env.svc.reserve_memory("t", "default", 2 * 1024 * 1024)
    finally:
        env.close()


def test_a_closed_client_without_abandon_is_a_xenstore_failure(short_tmp, monkeypatch):
    env = XenEnv(short_tmp, monkeypatch)
    try:
        env.client.close()
        with pytest.raises(InternalError, match="xenstore failed"):
            env.svc.reserve_memory("t", "default", 2 * 1024 * 1024)
    finally:
        env.close()

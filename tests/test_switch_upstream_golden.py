"""Upstream's own golden JSON-RPC files for the Memory interface
(tests/data/xapi-idl-memory, copied from xen-api's xapi-idl lib_test) sent
through the simulated message-switch to the queue server: every request file
is served, and the reply is byte-for-byte the upstream response file for that
outcome (a success and each error), except the `id`, which we echo where
upstream always writes 0 (docs/wire.md)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from rpc_fake import FakeService
from test_switch_server import Serving

from squeezed import idl
from squeezed.errors import from_wire
from squeezed.rpc.dispatch import unmarshal
from squeezed.sim.xenhost.switch import SimulatedSwitch
from squeezed.switch import protocol as p
from squeezed.switch.client import SwitchClient

DATA = Path(__file__).parent / "data" / "xapi-idl-memory"
IFACE = idl.load()

CASES = sorted(
    (req.name.split(".")[0], resp.name)
    for req in (DATA / "requests").iterdir() if req.name.endswith(".request.0")
    for resp in (DATA / "responses").iterdir()
    if resp.name.startswith(req.name.split(".")[0] + ".response.")
)


def test_every_method_of_the_interface_has_upstream_data() -> None:
    v1 = {m.name for m in IFACE.methods if m.dialect == "v1"}
    assert {method for method, _ in CASES} == v1
    assert len(CASES) == 100


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[SwitchClient, FakeService]]:
    d = tempfile.mkdtemp(prefix="sqz-", dir="/tmp")
    path = f"{d}/switch"
    with SimulatedSwitch(path), Serving(path) as s, SwitchClient(path, token="xenopsd:7") as c:
        yield c, s.fake
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("method,response", CASES, ids=[r for _, r in CASES])
def test_upstream_request_gets_upstream_reply(method: str, response: str, served) -> None:
    client, fake = served
    request = (DATA / "requests" / f"{method}.request.0").read_text().rstrip("\n")
    expected = (DATA / "responses" / response).read_text().rstrip("\n")  # some end in one
    outcome = json.loads(expected)
    m = IFACE.method(method)
    if outcome["error"] is None:
        fake.results[m.operation] = unmarshal(IFACE, m.result, outcome["result"])
    else:
        fake.raise_next = from_wire(outcome["error"])
    fake.calls.clear()
    reply = client.rpc(p.QUEUE_NAME, request, timeout_s=10)
    rid = json.loads(request)["id"]
    assert reply == re.sub(r'"id":0}$', f'"id":{rid}}}', expected)
    assert [op for op, _ in fake.calls] == [m.operation]

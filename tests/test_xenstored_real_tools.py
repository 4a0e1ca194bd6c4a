"""The simulated xenstored driven by Debian's real xenstore-utils (libxenstore) over
XENSTORED_PATH: proof that the simulator speaks the genuine wire protocol."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from squeezed.sim.xenhost.xenstored.server import Xenstored
from squeezed.xen.xenstore import XenstoreClient

TOOLS = ["xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-rm", "xenstore-exists",
         "xenstore-list", "xenstore-watch", "xenstore-chmod"]  # fmt: skip
MISSING = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"xenstore-utils not installed (missing: {', '.join(MISSING)})"
)
TIMEOUT = 10.0


@pytest.fixture
def xsd() -> Iterator[Xenstored]:
    d = tempfile.mkdtemp(dir="/tmp", prefix="xs")  # AF_UNIX paths are limited to 107 bytes
    xs = Xenstored(os.path.join(d, "sock")).start()
    yield xs
    xs.stop()
    shutil.rmtree(d, ignore_errors=True)


def run(xs: Xenstored, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XENSTORED_PATH": xs.socket_path}
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=check
    )


def start(xs: Xenstored, *argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "XENSTORED_PATH": xs.socket_path}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)


def read_line(proc: subprocess.Popen[str]) -> str:
    """One line of a child's stdout, without risking a hang."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(TIMEOUT), "no output from child"
    return proc.stdout.readline().rstrip("\n")


def test_write_then_read(xsd: Xenstored) -> None:
    run(xsd, "xenstore-write", "/vm/1/name", "guest one")
    assert xsd.read("/vm/1/name") == "guest one"
    xsd.write("/vm/1/memory", "1024")
    assert run(xsd, "xenstore-read", "/vm/1/name", "/vm/1/memory").stdout == "guest one\n1024\n"


def test_multi_write_uses_a_transaction(xsd: Xenstored) -> None:
    # With several pairs xenstore-write wraps them in TRANSACTION_START/END.
    run(xsd, "xenstore-write", "/m/a", "1", "/m/b", "2")
    assert (xsd.read("/m/a"), xsd.read("/m/b")) == ("1", "2")


def test_read_missing_fails(xsd: Xenstored) -> None:
    r = run(xsd, "xenstore-read", "/nope", check=False)
    assert r.returncode != 0
    assert "couldn't read path /nope" in r.stderr


def test_exists(xsd: Xenstored) -> None:
    xsd.write("/e", "")
    assert run(xsd, "xenstore-exists", "/e", check=False).returncode == 0
    assert run(xsd, "xenstore-exists", "/nope", check=False).returncode == 1


def test_list_and_ls(xsd: Xenstored) -> None:
    xsd.write("/t/a", "1")
    xsd.write("/t/b/c", "x y")
    assert run(xsd, "xenstore-list", "/t").stdout.split() == ["a", "b"]
    assert run(xsd, "xenstore-ls", "/t").stdout == 'a = "1"\nb = ""\n c = "x y"\n'
    full = run(xsd, "xenstore-ls").stdout  # whole tree
    assert 'local = ""\n domain = ""\n  0 = ""\n' in full and ' c = "x y"' in full


def test_ls_p_and_chmod(xsd: Xenstored) -> None:
    xsd.write("/perm/x", "1")
    run(xsd, "xenstore-chmod", "/perm/x", "r0", "w5")
    assert xsd.get_perms("/perm/x") == ["r0", "w5"]
    out = run(xsd, "xenstore-ls", "-p", "/perm").stdout
    assert out.startswith('x = "1"') and out.rstrip().endswith("(r0,w5)")


def test_big_directory_via_directory_part(xsd: Xenstored) -> None:
    names = [f"a-fairly-long-child-name-{i:04d}" for i in range(300)]  # > 4096-byte listing
    for n in names:
        xsd.write(f"/big/{n}", "v")
    assert run(xsd, "xenstore-list", "/big").stdout.split() == names
    assert run(xsd, "xenstore-ls", "/big").stdout.count(' = "v"') == 300


def test_rm(xsd: Xenstored) -> None:
    xsd.write("/r/a/b", "1")
    xsd.write("/r/keep", "1")
    run(xsd, "xenstore-rm", "/r/a")
    assert xsd.directory("/r") == ["keep"]
    run(xsd, "xenstore-rm", "-t", "/r/keep")  # -t also removes the emptied parents
    assert not xsd.exists("/r")


def test_watch_sees_writes(xsd: Xenstored) -> None:
    proc = start(xsd, "xenstore-watch", "-n", "3", "/w")
    try:
        assert read_line(proc) == "/w"  # the initial event: the watch is registered
        xsd.write("/w/x", "1")
        run(xsd, "xenstore-rm", "/w")
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert out.split() == ["/w/x", "/w"]


def test_watch_special_introduce_domain(xsd: Xenstored) -> None:
    proc = start(xsd, "xenstore-watch", "-n", "2", "@introduceDomain")
    try:
        assert read_line(proc) == "@introduceDomain"
        xsd.write("/local/domain/3/name", "no event for this")
        xsd.introduce_domain(3)
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert out.split() == ["@introduceDomain"]


def test_standalone_entry_point() -> None:
    d = tempfile.mkdtemp(dir="/tmp", prefix="xs")
    sock = os.path.join(d, "sock")
    code = ("import sys; from squeezed.sim.xenhost.xenstored.server import main_xenstored as m;"
            " m(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", code, "--socket", sock])
    try:
        # The client's connect back-off doubles as "wait until the daemon listens".
        with XenstoreClient(sock, reconnect_timeout_s=TIMEOUT, backoff_initial_s=0.01) as c:
            c.write("/hello", "world")
        env = {**os.environ, "XENSTORED_PATH": sock}
        r = subprocess.run(
            ["xenstore-read", "/hello"],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        assert r.stdout == "world\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert not os.path.exists(sock)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)

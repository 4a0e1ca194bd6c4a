"""Drive a real Xen 4.17 host booted under QEMU (TCG) through its serial console.

    from tests.xen.build_images import ensure_images
    from tests.xen.qemu import XenVM, XenBootUnavailable

    vm = XenVM(ensure_images())
    vm.boot(timeout_s=300)          # raises XenBootUnavailable if Xen can't come up here
    rc, out = vm.run("xl info")     # (exit status, stdout+stderr) from a dom0 shell
    rc, out = vm.python("import squeezed; print(squeezed.__file__)", project_dir="/work/main")
    vm.shutdown()

The console is Xen's com1 (QEMU ``-serial stdio`` on pipes); dom0's hvc0 is
multiplexed onto it by Xen and a read/eval loop in dom0's ``/init`` reads
commands from it (see build_images.py).  Every command is shipped
base64-encoded, one short shell line at a time, typed in chunks that each wait
for their tty echo (Xen's console input ring holds 128 characters and drops
the rest), run as ``sh FILE </dev/null 2>&1`` and bracketed by unique
begin/end markers carrying ``$?``.  The whole console is logged to a file
(``vm.log_path``).

Dom0 environment (see docs/real-xen.md): the toolstack is on PATH
(``/usr/lib/xen-4.17/bin``), oxenstored (or C xenstored) listens on
``/run/xenstored/socket`` (= ``/var/run/xenstored/socket``), and the build
host's ``/`` (9p, read-only) is mounted at ``/host`` under a copy-on-write
overlay (writes stay in dom0 RAM), with dom0's /proc, /sys, /dev and /run
bound inside it: ``chroot /host`` runs
the host's own Python against the real hypervisor, with every host path
(checkout, venv, cache) unchanged.  ``vm.python()`` / ``vm.dom0_python_cmd()``
build that command line.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

__all__ = [
    "XenBootUnavailable",
    "XenVMError",
    "XenCommandTimeout",
    "XenVM",
    "DEFAULT_GUEST_CFG",
]

DEFAULT_GUEST_CFG = "/etc/xen/sqzguest.cfg"
READY_MARKER = "SQZ-DOM0-READY"

# Console text meaning Xen or dom0 died during boot (-> XenBootUnavailable).
_BOOT_FATAL = re.compile(
    r"(Panic on CPU \d+|Kernel panic - not syncing|\*\*\*\*\*\*\*\*\*\*\*\*\*\*\*\* PANIC"
    r"|Reboot in five seconds|Manual reset required)"
)


class XenBootUnavailable(Exception):
    """QEMU cannot boot Xen to a dom0 shell on this machine (no QEMU, no
    images, QEMU exits, Xen/dom0 panics, or no dom0 prompt in time)."""

    def __init__(self, reason: str, log_path: str | None = None, console_tail: str = ""):
        self.reason = reason  # one line
        self.log_path = log_path
        self.console_tail = console_tail
        super().__init__(
            reason
            + (f" (console log: {log_path})" if log_path else "")
            + (f"\nconsole tail:\n{console_tail}" if console_tail else "")
        )


class XenVMError(RuntimeError):
    """A failure after dom0 came up (QEMU died, console protocol broke, a
    checked command failed, ...)."""


class XenCommandTimeout(XenVMError):
    """A dom0 command did not finish in time (the console shell got ^C)."""

    def __init__(self, msg: str, partial_output: str = ""):
        super().__init__(msg)
        self.partial_output = partial_output


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: QEMU dies with us
    except Exception:
        pass


_live_vms: set[XenVM] = set()


@atexit.register
def _kill_all() -> None:
    for vm in list(_live_vms):
        vm.kill()


class XenVM:
    """One QEMU process running Xen + a busybox dom0.

    manifest:   the dict from build_images.ensure_images()
    log_path:   console log file (default: a new file under $TMPDIR); kept
                after shutdown -- callers delete it on success if they like
    max_lifetime_s: hard limit; QEMU is SIGKILLed after it whatever happens
    xenstored:  "oxenstored" (Debian's default, as in XenServer) or "xenstored" (C)
    share_host: export the build host's / read-only over 9p (mounted at /host)
    host_python: interpreter that vm.python() runs in dom0 (default sys.executable)

    QEMU gets PR_SET_PDEATHSIG, so it dies with the thread that called boot():
    call boot() from a thread that outlives the VM (normally the main thread).
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        manifest: dict,
        *,
        log_path: str | os.PathLike | None = None,
        memory_mb: int = 2048,
        smp: int = 2,
        dom0_mem_mb: int = 768,
        xen_args: str = "",
        dom0_args: str = "",
        xenstored: str = "oxenstored",
        share_host: bool = True,
        max_lifetime_s: float = 1800,
        qemu: str | None = None,
        host_python: str | None = None,
    ):
        self.manifest = manifest
        self.memory_mb = memory_mb
        self.smp = smp
        self.dom0_mem_mb = dom0_mem_mb
        self.xen_args = xen_args
        self.dom0_args = dom0_args
        self.xenstored = xenstored
        self.share_host = share_host
        self.max_lifetime_s = max_lifetime_s
        self.qemu = qemu or os.environ.get("SQUEEZED_XEN_QEMU") or "qemu-system-x86_64"
        self.host_python = host_python or sys.executable
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="squeezed-xen-console-", suffix=".log")
            os.close(fd)
        self.log_path = str(log_path)
        self.proc: subprocess.Popen | None = None
        self.boot_seconds: float | None = None
        self.host_mounted = False
        self.host_writable = False
        self.timings: dict[str, float] = {}  # filled by boot() and by tests, for reports
        self._text = ""  # console output, decoded, '\r' removed
        self._cond = threading.Condition()
        self._eof = False
        self._reader: threading.Thread | None = None
        self._watchdog: threading.Timer | None = None
        self._logf = None
        self._seq = itertools.count(1)
        self._tag = f"{os.getpid():x}x{next(self._ids)}"
        self._killed_by_watchdog = False
        self._broken: str | None = None

    # ------------------------------------------------------------------ process

    def qemu_argv(self) -> list[str]:
        m = self.manifest
        for key in ("xen", "vmlinuz", "dom0_initrd"):
            if "," in m[key] or " " in m[key]:
                raise XenBootUnavailable(f"image path contains ',' or ' ' (QEMU -initrd): {m[key]}")
        xen_cmd = (
            f"dom0_mem={self.dom0_mem_mb}M,max:{self.dom0_mem_mb}M console=com1 "
            f"noreboot {self.xen_args}"
        ).strip()
        dom0_cmd = (
            f"console=hvc0 earlyprintk=xen sqz.xenstored={self.xenstored} {self.dom0_args}"
        ).strip()
        argv = [
            self.qemu,
            "-accel",
            "tcg",
            "-cpu",
            "qemu64",
            "-m",
            str(self.memory_mb),
            "-smp",
            str(self.smp),
            "-nodefaults",
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-kernel",
            m["xen"],
            "-append",
            xen_cmd,
            "-initrd",
            f"{m['vmlinuz']} {dom0_cmd},{m['dom0_initrd']}",
        ]
        if self.share_host:
            argv += [
                "-virtfs",
                "local,path=/,mount_tag=hostfs,security_model=none,readonly=on,multidevs=remap",
            ]
        return argv

    def _start(self) -> None:
        if shutil.which(self.qemu) is None:
            raise XenBootUnavailable(f"no QEMU binary ({self.qemu}) on PATH")
        argv = self.qemu_argv()
        self._logf = open(self.log_path, "wb")
        self._logf.write(("# " + " ".join(shlex.quote(a) for a in argv) + "\n").encode())
        self._logf.flush()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig,
                bufsize=0,
            )
        except OSError as e:
            raise XenBootUnavailable(f"cannot start QEMU: {e}", self.log_path) from e
        _live_vms.add(self)
        self._reader = threading.Thread(target=self._read_loop, name="xenvm-console", daemon=True)
        self._reader.start()
        self._watchdog = threading.Timer(self.max_lifetime_s, self._watchdog_fire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _watchdog_fire(self) -> None:
        self._killed_by_watchdog = True
        self._note(f"hard time limit ({self.max_lifetime_s:.0f}s) reached: killing QEMU")
        self.kill()

    def _read_loop(self) -> None:
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                break
            if self._logf:
                try:
                    self._logf.write(data)
                    self._logf.flush()
                except (ValueError, OSError):
                    pass
            text = data.decode("utf-8", "replace").replace("\r", "")
            with self._cond:
                self._text += text
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _note(self, msg: str) -> None:
        """Annotate the console log (lines starting '# [xenvm]')."""
        if self._logf:
            try:
                self._logf.write(f"\n# [xenvm] {msg}\n".encode())
                self._logf.flush()
            except (ValueError, OSError):
                pass

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def qemu_peak_rss_mb(self) -> float | None:
        """QEMU's peak resident memory so far (VmHWM), in MiB; None if gone."""
        if not self.alive or self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def kill(self) -> None:
        """SIGKILL QEMU (idempotent, safe from any thread)."""
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        _live_vms.discard(self)

    def shutdown(self) -> None:
        """Stop QEMU (nothing in dom0 is worth syncing: it is killed), close the log."""
        if self._watchdog:
            self._watchdog.cancel()
        self.kill()
        if self._reader:
            self._reader.join(5)
        if self._logf:
            try:
                self._logf.close()
            except OSError:
                pass
            self._logf = None

    def __enter__(self) -> XenVM:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ console

    @property
    def console_text(self) -> str:
        """Everything read from the console so far ('\\r' removed)."""
        with self._cond:
            return self._text

    def _pos(self) -> int:
        with self._cond:
            return len(self._text)

    def wait_for(
        self,
        pattern: str | re.Pattern,
        timeout_s: float,
        start: int = 0,
        fatal: re.Pattern | None = None,
    ) -> re.Match | None:
        """Wait until the regex matches the console text from offset start.
        Returns the match, or None on timeout, on EOF (QEMU gone) or when the
        fatal regex matches first."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                m = rx.search(self._text, start)
                if m:
                    return m
                if fatal is not None and fatal.search(self._text, start):
                    return None
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._cond.wait(min(left, 1.0))

    def _write(self, data: bytes) -> None:
        if not self.alive or self.proc is None or self.proc.stdin is None:
            raise XenVMError(
                f"QEMU is not running ({self._why_dead()}); console log: {self.log_path}"
            )
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError as e:
            raise XenVMError(f"writing to the console failed: {e} ({self._why_dead()})") from e

    def send_line(
        self, line: str, chunk: int = 64, echo_timeout_s: float = 5.0, attempts: int = 3
    ) -> None:
        """Type one line into the dom0 console, chunk by chunk, each waiting for
        its tty echo (Xen drops console input beyond its 128-byte ring).

        The newline goes only once every chunk came back verbatim. Input can
        arrive garbled: rarely, a character is lost or changed on its way to
        dom0, and the echo shows it (e.g. ``echo "e_SQZ_E_…`` typed as
        ``echo "__SQZ_E_…``). Then the pending line is erased with ^U (the
        tty's VKILL; the shell has not read it yet) and typed again, so a
        garbled command never runs. An echo split by other console output
        looks the same and is retyped too."""
        if any(ord(c) < 32 or ord(c) > 126 for c in line):
            raise ValueError("send_line takes one line of printable ASCII")
        for attempt in range(1, attempts + 1):
            if self._type_verified(line, chunk, echo_timeout_s):
                break
            if attempt < attempts:
                self._note(f"console echo differs from the input; retyping (attempt {attempt + 1})")
                self._write(b"\x15")  # ^U: kill the pending input line
                time.sleep(0.3)
            else:  # as before: carry on, slowly (the echo may be lost among other output)
                self._note("console echo never matched; sending the line anyway")
                time.sleep(0.2)
        start = self._pos()
        self._write(b"\n")
        self.wait_for(r"\n", echo_timeout_s, start)

    def _type_verified(self, line: str, chunk: int, echo_timeout_s: float) -> bool:
        """Type line (no newline); True if every chunk was echoed verbatim."""
        for i in range(0, len(line), chunk):
            piece = line[i : i + chunk]
            start = self._pos()
            self._write(piece.encode())
            if self.wait_for(re.escape(piece), echo_timeout_s, start) is None:
                if not self.alive:
                    raise XenVMError(
                        f"QEMU died ({self._why_dead()}); console log: {self.log_path}"
                    )
                return False
        return True

    def _why_dead(self) -> str:
        if self._killed_by_watchdog:
            return f"killed at the hard time limit of {self.max_lifetime_s:.0f}s"
        if self.proc is None:
            return "not started"
        rc = self.proc.poll()
        return "running" if rc is None else f"QEMU exited with status {rc}"

    # ------------------------------------------------------------------ API

    def boot(self, timeout_s: float = 300) -> float:
        """Start QEMU and wait for the dom0 shell; returns seconds to prompt.
        Raises XenBootUnavailable on any failure before the prompt."""
        if self.proc is not None:
            raise RuntimeError("XenVM.boot() called twice")
        t0 = time.monotonic()
        self._start()
        m = self.wait_for(re.escape(READY_MARKER) + r"\n", timeout_s, fatal=_BOOT_FATAL)
        if m is None:
            tail = "\n".join(self.console_text.strip().splitlines()[-15:])
            fatal = _BOOT_FATAL.search(self.console_text)
            if fatal:
                reason = f"xen or dom0 died during boot ({fatal.group(0).strip()})"
            elif not self.alive:
                reason = f"QEMU exited before the dom0 prompt ({self._why_dead()})"
            else:
                reason = f"no dom0 prompt within {timeout_s:.0f}s"
            self._note(f"boot failed: {reason}")
            self.shutdown()
            raise XenBootUnavailable(reason, self.log_path, tail)
        hm = re.search(r"sqz-init: host filesystem mounted at /host \((.*?)\)", self.console_text)
        self.host_mounted = hm is not None
        self.host_writable = hm is not None and hm.group(1) == "writable overlay"
        # Synchronise with the shell once.
        try:
            rc, out = self.run("echo sync-ok", timeout_s=60)
        except XenVMError as e:
            self.shutdown()
            raise XenBootUnavailable(f"dom0 shell does not answer: {e}", self.log_path) from e
        if rc != 0 or out.strip() != "sync-ok":
            self.shutdown()
            raise XenBootUnavailable(f"dom0 shell answers garbage: {out!r}", self.log_path)
        self.boot_seconds = time.monotonic() - t0
        self.timings["boot_to_prompt_s"] = round(self.boot_seconds, 1)
        return self.boot_seconds

    def run(self, cmd: str, timeout_s: float = 60, check: bool = False) -> tuple[int, str]:
        """Run a shell command (any text: several lines, quotes...) in dom0.

        It runs as ``sh FILE </dev/null 2>&1`` in a fresh busybox sh (cwd /,
        nothing persists between calls but the filesystem and processes left
        in the background).  Returns (status, combined stdout+stderr, CRs dropped).
        On timeout the console shell gets ^C and XenCommandTimeout is raised.
        check=True raises XenVMError when the status is not 0.
        """
        if self._broken:
            raise XenVMError(f"console unusable: {self._broken}")
        n = f"{self._tag}_{next(self._seq)}"
        begin, end = f"__SQZ_B_{n}__", f"__SQZ_E_{n}__"
        payload = base64.b64encode(cmd.encode()).decode()
        f = f"/tmp/.sqz-cmd-{n}"
        self._note(f"run[{n}]: {cmd[:400]}")
        start = self._pos()
        # One complete shell command per line: the console shell is a read/eval loop.
        self.send_line(f": > {f}.b64")
        for i in range(0, len(payload), 192):
            self.send_line(f"echo {payload[i : i + 192]} >> {f}.b64")
        # The markers are spelt with quotes inside, so the tty echo of this
        # line cannot match them.
        self.send_line(
            f"echo '__SQZ_B_''{n}__'; base64 -d {f}.b64 > {f}; sh {f} </dev/null 2>&1; "
            f'sqzrc=$?; echo \'\'; echo "__SQZ_E_""{n}__ $sqzrc"; rm -f {f} {f}.b64'
        )
        # Console: BEGIN\n <output> \n(from `echo ''`) END rc\n -> group 1 is the exact output.
        rx = re.compile(re.escape(begin) + r"\n(.*?)\n" + re.escape(end) + r" (\d+)\n", re.S)
        m = self.wait_for(rx, timeout_s, start)
        if m is None:
            partial = self.console_text[start:]
            if not self.alive:
                raise XenVMError(
                    f"QEMU died running {cmd!r} ({self._why_dead()}); console log: {self.log_path}"
                )
            self._interrupt()
            raise XenCommandTimeout(f"dom0 command timed out after {timeout_s}s: {cmd!r}", partial)
        rc, out = int(m.group(2)), m.group(1)
        if check and rc != 0:
            raise XenVMError(f"dom0 command failed (rc {rc}): {cmd!r}\n{out}")
        return rc, out

    def run_ok(self, cmd: str, timeout_s: float = 60) -> str:
        """run() that raises XenVMError unless the status is 0; returns the output."""
        return self.run(cmd, timeout_s, check=True)[1]

    def _interrupt(self) -> None:
        start = self._pos()
        self._note("interrupting the console shell (^C)")
        try:
            self._write(b"\x03")
        except XenVMError:
            return
        if self.wait_for(re.escape(READY_MARKER) + r"\n", 20, start) is None:
            self._broken = "the console shell did not come back after ^C"

    def spawn(self, cmd: str, log: str = "/dev/null") -> int:
        """Start a long-running shell command in dom0, detached (own session,
        so a ^C on the console shell cannot reach it), output to log (a dom0
        path).  Returns its pid; stop it with run(f"kill {pid}")."""
        out = self.run_ok(
            f"setsid sh -c {shlex.quote(cmd)} </dev/null >{shlex.quote(log)} 2>&1 &\necho $!"
        )
        return int(out.strip().splitlines()[-1])

    # ------------------------------------------------------------------ python in dom0

    def dom0_python_cmd(
        self,
        args: list[str] | str,
        *,
        project_dir: str | os.PathLike | None = None,
        python: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> str:
        """Shell command (for run()) that runs the build host's Python inside
        dom0, chrooted into the 9p view of the host (/host), with
        LD_LIBRARY_PATH at the Xen 4.17 libraries (libxenctrl.so.4.17 ...) and
        PYTHONPATH at project_dir.  args: argv after the interpreter (a str is
        split with shlex).  python defaults to this process's sys.executable
        (e.g. the project venv, so its site-packages come along).  Host paths
        are unchanged inside the chroot."""
        if isinstance(args, str):
            args = shlex.split(args)
        full_env = {
            "LD_LIBRARY_PATH": self.manifest["xen_libdir"],
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8",
        }
        if project_dir is not None:
            full_env["PYTHONPATH"] = str(project_dir)
        full_env.update(env or {})
        inner = "cd {} && exec env {} {} {}".format(
            shlex.quote(cwd or str(project_dir or "/")),
            " ".join(shlex.quote(f"{k}={v}") for k, v in full_env.items()),
            shlex.quote(python or self.host_python),
            " ".join(shlex.quote(a) for a in args),
        )
        return f"chroot /host /bin/sh -c {shlex.quote(inner)}"

    def python(
        self,
        code: str,
        *,
        project_dir: str | os.PathLike | None = None,
        timeout_s: float = 120,
        **kw,
    ) -> tuple[int, str]:
        """Run Python source code with the host's interpreter inside dom0."""
        if not self.host_mounted:
            raise XenVMError("the host filesystem is not mounted in dom0 (/host)")
        return self.run(
            self.dom0_python_cmd(["-c", code], project_dir=project_dir, **kw), timeout_s=timeout_s
        )

    # ------------------------------------------------------------------ helpers

    def xl_list(self) -> dict[str, dict]:
        """`xl list` -> {name: {"id", "mem", "vcpus", "state"}} (mem in MiB)."""
        out = self.run_ok("xl list")
        doms: dict[str, dict] = {}
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 5 and f[1].isdigit() and f[2].isdigit():
                doms[f[0]] = {"id": int(f[1]), "mem": int(f[2]), "vcpus": int(f[3]), "state": f[4]}
        return doms

    def xl_info(self) -> dict[str, str]:
        """`xl info` -> {key: value} (memory values in MiB, as xl prints them)."""
        out = self.run_ok("xl info")
        info = {}
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
        return info

    def xenstore_read(self, path: str) -> str | None:
        rc, out = self.run(f"xenstore-read {shlex.quote(path)}")
        return out.strip() if rc == 0 else None

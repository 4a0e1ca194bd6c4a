#!/usr/bin/env python3
"""Build the images for the real-Xen test tier (Xen 4.17 under QEMU/TCG).

Everything comes from Debian's own packages, downloaded (``apt-get download``)
and unpacked (``dpkg-deb -x``) into a cache directory -- nothing is installed
on the build host except QEMU and busybox-static, and nothing downloaded is
ever committed to the repository.

Outputs, in ``$SQUEEZED_XEN_CACHE/<inputs-hash>/`` (default cache
``/var/cache/squeezed-xen-test``):

``xen.elf``            the uncompressed hypervisor (a multiboot ELF QEMU's
                       ``-kernel`` loads directly)
``vmlinuz``            the Debian 6.1 kernel, used for dom0 *and* the PV guest
``dom0.cpio``          the dom0 initramfs: busybox, xl, (o)xenstored,
                       xenconsoled, xen-init-dom0, the xenstore tools, their
                       shared libraries, the Xen/virtio/9p kernel modules, an
                       ``/init`` that brings the toolstack up and mounts the
                       build host's ``/`` (read-only, 9p) at ``/host``
``guest.cpio``         a tiny initramfs for PV guests (busybox, sleeps)
``stage/``             the unpacked packages; ``stage/usr/lib/x86_64-linux-gnu``
                       holds libxenctrl & co, visible from dom0 through the 9p
                       share at the same path (see ``manifest["xen_libdir"]``)
``manifest.json``      paths, versions and the inputs hash

The directory name is a hash of the package versions (as apt resolves them
now), the host packages whose files are copied in, and this file's own source,
so a new Debian point release or an edit here triggers a rebuild, while
repeated runs reuse the cache.  ``$SQUEEZED_XEN_CACHE/latest.json`` points at
the newest complete build and is used when apt cannot resolve versions (e.g.
offline).

Usage: ``python tests/xen/build_images.py [--cache DIR] [--force] [--quiet]``;
from Python: ``build_images.ensure_images() -> dict`` (the manifest).
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

XEN_VERSION = "4.17"
DEFAULT_CACHE = "/var/cache/squeezed-xen-test"
CACHE_ENV = "SQUEEZED_XEN_CACHE"
KERNEL_PKG_ENV = "SQUEEZED_XEN_KERNEL_PKG"  # e.g. linux-image-6.1.0-56-amd64

# Debian packages unpacked (never installed) into the stage directory.
XEN_DEBS = [
    f"xen-hypervisor-{XEN_VERSION}-amd64",
    f"xen-utils-{XEN_VERSION}",
    "xen-utils-common",
    f"libxenmisc{XEN_VERSION}",
    "libxenstore4",
    "libxentoollog1",
    "libxencall1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxendevicemodel1",
    "libxentoolcore1",
    "libxenhypfs1",
    "libyajl2",
    "xenstore-utils",
]

# Host packages installed with apt-get when missing: name -> file that proves it.
HOST_PACKAGES = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "busybox-static": "/bin/busybox",
}
# Host packages whose files are copied into the images (part of the inputs hash).
HOST_COPIED_PACKAGES = [
    "busybox-static",
    "libc6",
    "libgcc-s1",
    "libuuid1",
    "zlib1g",
    "liblzma5",
    "libzstd1",
]

# Toolstack binaries (from /usr/lib/xen-4.17/bin) copied into dom0.
XEN_BINARIES = [
    "xl",
    "xenstored",
    "oxenstored",
    "xenconsoled",
    "xenconsole",
    "xen-init-dom0",
    "xenstore-control",
    "libxl-save-helper",
    "lsevtchn",
]
XENSTORE_TOOLS = [
    "xenstore",
    "xenstore-chmod",
    "xenstore-exists",
    "xenstore-list",
    "xenstore-ls",
    "xenstore-read",
    "xenstore-rm",
    "xenstore-watch",
    "xenstore-write",
]
# Libraries dlopen()ed rather than linked (glibc's pthread_cancel needs libgcc_s).
EXTRA_HOST_LIBS = ["libgcc_s.so.1"]

# Kernel modules for dom0, in the order wanted; dependencies are resolved from
# each module's .modinfo "depends=" and inserted before it.
DOM0_MODULES = [
    "xen-evtchn",
    "xen-privcmd",
    "xenfs",
    "xen-gntdev",
    "xen-gntalloc",
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
]

DOM0_PROMPT_READY = "SQZ-DOM0-READY"
GUEST_READY = "SQZ-GUEST-READY"

MULTIARCH = "x86_64-linux-gnu"


class BuildError(RuntimeError):
    """The images cannot be built on this host (no apt, no packages, ...)."""


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[build_images] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(cmd, **kw)
    except FileNotFoundError as e:
        raise BuildError(f"{cmd[0]}: not found") from e
    except subprocess.CalledProcessError as e:
        raise BuildError(
            f"{' '.join(cmd)} failed (rc {e.returncode}): {(e.stderr or '')[-2000:]}"
        ) from e


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    return Path(cache or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


# --------------------------------------------------------------------------- host


def _apt_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DEBIAN_FRONTEND"] = "noninteractive"
    env["LC_ALL"] = "C"
    return env


_apt_updated = False


def _apt_update(quiet: bool) -> None:
    global _apt_updated
    if _apt_updated:
        return
    log("apt-get update", quiet)
    _run(["apt-get", "update", "-q"], env=_apt_env())
    _apt_updated = True


def ensure_host_packages(quiet: bool = False) -> None:
    missing = [p for p, f in HOST_PACKAGES.items() if not os.path.exists(f)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise BuildError(f"host packages missing and not root: {' '.join(missing)}")
    log(f"apt-get install {' '.join(missing)}", quiet)
    try:
        _run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=_apt_env()
        )
    except BuildError:
        _apt_update(quiet)
        _run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=_apt_env()
        )


def _candidates(pkgs: list[str]) -> dict[str, str | None]:
    """apt-cache policy -> {pkg: candidate version or None}."""
    out = _run(["apt-cache", "policy", *pkgs], env=_apt_env(), check=False).stdout
    res: dict[str, str | None] = {p: None for p in pkgs}
    cur = None
    for line in out.splitlines():
        m = re.match(r"^(\S+):$", line)
        if m:
            cur = m.group(1)
            continue
        m = re.match(r"^\s+Candidate:\s+(\S+)", line)
        if m and cur in res:
            res[cur] = None if m.group(1) == "(none)" else m.group(1)
    return res


def _kernel_package() -> str:
    if os.environ.get(KERNEL_PKG_ENV):
        return os.environ[KERNEL_PKG_ENV]
    out = _run(["apt-cache", "depends", "linux-image-amd64"], env=_apt_env(), check=False).stdout
    m = re.search(r"Depends:\s+(linux-image-6\.1\.0-\d+-amd64)\s*$", out, re.M)
    if m:
        return m.group(1)
    out = _run(["apt-cache", "pkgnames", "linux-image-6.1.0-"], env=_apt_env(), check=False).stdout
    names = [n for n in out.split() if re.fullmatch(r"linux-image-6\.1\.0-\d+-amd64", n)]
    if not names:
        raise BuildError("no linux-image-6.1.0-*-amd64 package known to apt")
    return max(names, key=lambda n: int(n.split("-")[4]))


def resolve_versions(quiet: bool = False) -> dict[str, str]:
    """Package -> candidate version for everything downloaded; apt-get update if needed."""
    for attempt in range(2):
        try:
            kpkg = _kernel_package()
            pkgs = [*XEN_DEBS, kpkg]
            cands = _candidates(pkgs)
            missing = [p for p, v in cands.items() if v is None]
            if not missing:
                return {p: v for p, v in cands.items() if v is not None}
            err = f"apt has no candidate for: {' '.join(missing)}"
        except BuildError as e:
            err = str(e)
        if attempt == 0 and os.geteuid() == 0:
            try:
                _apt_update(quiet)
            except BuildError as e:
                err = f"{err}; {e}"
                break
    raise BuildError(err)


def _host_versions() -> dict[str, str]:
    out = _run(
        ["dpkg-query", "-W", "-f", "${Package}=${Version}\n", *HOST_COPIED_PACKAGES], check=False
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def inputs_hash(versions: dict[str, str], host_versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"debs": versions, "host": host_versions}, sort_keys=True).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- modules


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        out = _run(["zstd", "-dc", str(path)], text=False).stdout
        return out
    return data


def _modname(filename: str) -> str:
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", filename).replace("-", "_")


def _modinfo_depends(blob: bytes) -> list[str]:
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", blob)
    if not m or not m.group(1):
        return []
    return [d for d in m.group(1).decode().split(",") if d]


def resolve_modules(moddir: Path, wanted: list[str]) -> list[tuple[str, bytes]]:
    """Return [(name, uncompressed .ko)] in load order (dependencies first)."""
    index: dict[str, Path] = {}
    for p in moddir.rglob("*.ko*"):
        index[_modname(p.name)] = p
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {_modname(Path(line.strip()).name) for line in bfile.read_text().splitlines()}
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        if name in chain:
            raise BuildError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in index:
            if name in builtin:
                seen.add(name)
                return
            raise BuildError(f"kernel module {name} not found under {moddir}")
        blob = _read_module(index[name])
        for dep in _modinfo_depends(blob):
            visit(dep, chain + (name,))
        seen.add(name)
        order.append((name, blob))

    for w in wanted:
        visit(w, ())
    return order


# --------------------------------------------------------------------------- cpio


class Cpio:
    """Minimal newc (SVR4, no CRC) archive writer: no cpio binary, no root
    ownership or mknod needed on the build host."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._names: set[str] = set()

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        rdev: tuple[int, int] = (0, 0),
        nlink: int = 1,
    ) -> None:
        name = name.lstrip("/") or "."
        if name in self._names:
            return
        self._names.add(name)
        bname = name.encode() + b"\x00"
        fields = [self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(bname), 0]
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts.append(hdr + bname + b"\x00" * ((-(len(hdr) + len(bname))) % 4))
        self._parts.append(data + b"\x00" * ((-len(data)) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def add_tree(self, root: Path) -> None:
        """Add a directory tree (regular files, dirs, symlinks) as the archive root."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            if rel != ".":
                self.dir(rel, stat.S_IMODE(os.lstat(dirpath).st_mode))
            for fn in sorted(
                filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            ):
                full = os.path.join(dirpath, fn)
                name = os.path.normpath(os.path.join(rel, fn))
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(name, os.readlink(full))
                elif stat.S_ISREG(st.st_mode):
                    self.file(name, Path(full).read_bytes(), stat.S_IMODE(st.st_mode))

    def bytes(self) -> bytes:
        trailer = Cpio()
        trailer._ino = 0
        trailer._entry("TRAILER!!!", 0)
        return b"".join(self._parts + trailer._parts)


# --------------------------------------------------------------------------- rootfs


def _ldd_closure(binaries: list[Path], libdirs: list[Path]) -> dict[str, Path]:
    """soname -> resolved file, for the shared libraries the binaries need."""
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(str(d) for d in libdirs), LC_ALL="C")
    libs: dict[str, Path] = {}
    for b in binaries:
        out = _run(["ldd", str(b)], env=env).stdout
        for line in out.splitlines():
            line = line.strip()
            if "not found" in line:
                raise BuildError(f"ldd {b}: {line}")
            m = re.match(r"^(\S+)\s+=>\s+(\S+)\s+\(", line)
            if m:
                libs[m.group(1)] = Path(m.group(2)).resolve()
            m = re.match(r"^(/\S*ld-linux[^\s]*)\s+\(", line)
            if m:
                libs["__interp__:" + m.group(1)] = Path(m.group(1)).resolve()
    return libs


def _busybox_into(root: Path) -> None:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    out = _run(["/bin/busybox", "--list-full"]).stdout
    for applet in out.split():
        dest = root / applet
        if dest.exists() or dest.is_symlink():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", dest)


DOM0_INIT = r"""#!/bin/sh
# dom0 /init for the squeezed real-Xen test tier (generated by tests/xen/build_images.py).
export PATH=/usr/lib/xen-@XENVER@/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
log() { echo "sqz-init: $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/xenstored /run/xen /run/lock /var/lib/xen /var/lib/xenstored /var/log/xen /root

XENSTORED=oxenstored
for a in $(cat /proc/cmdline); do
    case "$a" in
        sqz.xenstored=*) XENSTORED="${a#*=}" ;;
    esac
done

for m in $(cat /etc/sqz-modules); do
    insmod "/lib/modules/sqz/$m.ko" || log "insmod $m failed"
done
mount -t xenfs xenfs /proc/xen || log "mounting xenfs failed"

log "starting $XENSTORED"
"$XENSTORED" --pid-file /run/xenstored.pid
ok=
for i in $(seq 1 150); do
    if xenstore-list -s / >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
done
[ -n "$ok" ] || log "xenstored did not come up"
xen-init-dom0 || log "xen-init-dom0 failed"
mkdir -p /var/log/xen/console
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console \
    || log "xenconsoled failed"

# The build host's / : read-only 9p at /hostfs, made writable (copy-on-write
# into dom0 RAM, never reaching the host) by an overlay mounted at /host, with
# the live dom0 /proc /sys /dev /run bound inside it -- so 'chroot /host
# <host python>' sees every host path unchanged and runs against the real
# hypervisor, /dev/xen/* and the xenstored socket (/run/xenstored/socket).
mkdir -p /hostfs /host /overlay
mounted=
[ -n "$(ls /sys/bus/virtio/devices 2>/dev/null)" ] && tries=100 || tries=0
for i in $(seq 1 $tries); do
    if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostfs /hostfs 2>/dev/null; then
        mounted=1; break
    fi
    sleep 0.1
done
if [ -n "$mounted" ]; then
    mount -t tmpfs -o mode=755 tmpfs /overlay
    mkdir -p /overlay/upper /overlay/work
    if mount -t overlay overlay \
        -o lowerdir=/hostfs,upperdir=/overlay/upper,workdir=/overlay/work /host; then
        how="writable overlay"
    else
        mount -o bind /hostfs /host
        how="read-only"
    fi
    for d in proc sys dev run; do
        [ -d "/host/$d" ] && mount -o rbind "/$d" "/host/$d"
    done
    log "host filesystem mounted at /host ($how)"
else
    log "no 9p host share (hostfs) -- /host unavailable"
fi

v=/sys/hypervisor/version
log "dom0 ready: xen $(cat $v/major 2>/dev/null).$(cat $v/minor 2>/dev/null), xenstored=$XENSTORED"
# Quieten the kernel console (the boot log above stays in the console log).
echo 4 > /proc/sys/kernel/printk
# The console shell: a non-interactive read/eval loop on the serial console
# (sh -s on a tty would be interactive, with line editing; sh -s on a pipe
# lags one line behind); the tty echoes input.  ^C kills it; this loop
# restarts it.
while :; do
    echo "@READY@"
    setsid cttyhack sh -c 'cd /; while IFS= read -r l; do eval "$l"; done'
    sleep 0.2
done
"""

GUEST_INIT = r"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "@GUEST_READY@ $(cat /sys/devices/system/xen_memory/xen_memory0/target_kb 2>/dev/null)"
while :; do sleep 3600; done
"""

GUEST_CFG = """# PV guest for the squeezed real-Xen test tier (paths are dom0 paths).
name = "sqzguest"
type = "pv"
kernel = "/guest/vmlinuz"
ramdisk = "/guest/initrd.cpio"
extra = "console=hvc0 quiet"
memory = 128
maxmem = 256
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
"""


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    os.chmod(path, mode)


def build_guest_initramfs(out: Path) -> None:
    with tempfile.TemporaryDirectory() as td:
        root = Path(td)
        _busybox_into(root)
        _write(root / "init", GUEST_INIT.replace("@GUEST_READY@", GUEST_READY), 0o755)
        cp = Cpio()
        for d in ("dev", "proc", "sys", "tmp"):
            cp.dir(d)
        cp.chardev("dev/console", 5, 1)
        cp.add_tree(root)
        out.write_bytes(cp.bytes())


def build_dom0_initramfs(
    stage: Path, kver: str, vmlinuz: Path, guest_cpio: Path, root: Path, out: Path
) -> list[str]:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    xenbin = stage / f"usr/lib/xen-{XEN_VERSION}/bin"
    libdirs = [stage / f"usr/lib/{MULTIARCH}", stage / f"usr/lib/xen-{XEN_VERSION}/lib/{MULTIARCH}"]

    _busybox_into(root)
    bins: list[Path] = []
    dst_xenbin = root / f"usr/lib/xen-{XEN_VERSION}/bin"
    dst_xenbin.mkdir(parents=True)
    for b in XEN_BINARIES:
        src = xenbin / b
        if not src.exists():
            raise BuildError(f"{src} missing from the xen packages")
        shutil.copy2(src, dst_xenbin / b)
        bins.append(src)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    for t in XENSTORE_TOOLS:
        dest = root / "usr/bin" / t
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        if t == "xenstore":
            shutil.copy2(stage / "usr/bin/xenstore", dest)
            bins.append(stage / "usr/bin/xenstore")
        else:
            os.symlink("xenstore", dest)
    (root / "usr/sbin").mkdir(parents=True, exist_ok=True)
    for b in XEN_BINARIES:  # also on the usual Debian paths
        dest = root / "usr/sbin" / b
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        os.symlink(f"/usr/lib/xen-{XEN_VERSION}/bin/{b}", dest)

    libs = _ldd_closure(bins, libdirs)
    dst_lib = root / f"lib/{MULTIARCH}"
    dst_lib.mkdir(parents=True, exist_ok=True)
    for soname, path in libs.items():
        if soname.startswith("__interp__:"):
            interp = Path(soname.split(":", 1)[1])
            dest = root / interp.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            if not (dst_lib / path.name).exists():
                shutil.copy2(path, dst_lib / path.name)
            continue
        shutil.copy2(path, dst_lib / soname)
    for extra in EXTRA_HOST_LIBS:
        for d in (Path(f"/lib/{MULTIARCH}"), Path(f"/usr/lib/{MULTIARCH}")):
            if (d / extra).exists():
                shutil.copy2((d / extra).resolve(), dst_lib / extra)
                break
        else:
            raise BuildError(f"host library {extra} not found")
    _write(root / "etc/ld.so.conf", f"/lib/{MULTIARCH}\n/usr/lib/{MULTIARCH}\n")
    _run(["ldconfig", "-r", str(root)])

    # /etc/xen (xl.conf, oxenstored.conf, scripts)
    shutil.copytree(stage / "etc/xen", root / "etc/xen", symlinks=True)
    _write(root / "etc/xen/sqzguest.cfg", GUEST_CFG)
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _write(root / "etc/group", "root:x:0:\n")
    _write(root / "etc/hostname", "sqz-dom0\n")

    # kernel modules (uncompressed: busybox insmod need not handle xz)
    moddir = stage / "lib/modules" / kver
    mods = resolve_modules(moddir, DOM0_MODULES)
    dst_mod = root / "lib/modules/sqz"
    dst_mod.mkdir(parents=True)
    for name, blob in mods:
        (dst_mod / f"{name}.ko").write_bytes(blob)
    _write(root / "etc/sqz-modules", "".join(f"{n}\n" for n, _ in mods))

    # PV guest kernel + initramfs
    (root / "guest").mkdir()
    shutil.copy2(vmlinuz, root / "guest/vmlinuz")
    shutil.copy2(guest_cpio, root / "guest/initrd.cpio")

    _write(
        root / "init",
        DOM0_INIT.replace("@XENVER@", XEN_VERSION).replace("@READY@", DOM0_PROMPT_READY),
        0o755,
    )
    for d in ("proc", "sys", "dev", "run", "tmp", "host", "var"):
        (root / d).mkdir(exist_ok=True)
    for link, target in (("var/run", "/run"), ("var/lock", "/run/lock")):
        if not (root / link).is_symlink():
            os.symlink(target, root / link)

    cp = Cpio()
    cp.dir("dev")
    cp.chardev("dev/console", 5, 1)
    cp.chardev("dev/null", 1, 3, 0o666)
    cp.add_tree(root)
    out.write_bytes(cp.bytes())
    return [n for n, _ in mods]


# --------------------------------------------------------------------------- main


def _manifest_ok(d: Path) -> dict | None:
    mf = d / "manifest.json"
    if not mf.exists():
        return None
    try:
        m = json.loads(mf.read_text())
    except ValueError:
        return None
    for key in ("xen", "vmlinuz", "dom0_initrd", "guest_initrd"):
        if not Path(m.get(key, "/nonexistent")).exists():
            return None
    return m


def ensure_images(
    cache: str | os.PathLike | None = None, force: bool = False, quiet: bool = False
) -> dict:
    """Build (or reuse) the images; returns the manifest dict.  Raises BuildError.
    Concurrent callers (several sessions on one machine) serialise on a lock
    file in the cache directory."""
    root = cache_root(cache)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lockf = open(root / ".lock", "w")
    except OSError as e:
        raise BuildError(f"cache directory {root} unusable: {e}") from e
    with lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        return _ensure_images_locked(root, force, quiet)


def _ensure_images_locked(root: Path, force: bool, quiet: bool) -> dict:
    t0 = time.monotonic()
    ensure_host_packages(quiet)
    try:
        versions = resolve_versions(quiet)
    except BuildError as e:
        latest = root / "latest.json"
        if latest.exists() and not force:
            d = Path(json.loads(latest.read_text())["dir"])
            m = _manifest_ok(d)
            if m:
                log(f"apt cannot resolve versions ({e}); reusing {d}", quiet)
                return m
        raise
    host_versions = _host_versions()
    digest = inputs_hash(versions, host_versions)
    out = root / digest
    if not force:
        m = _manifest_ok(out)
        if m:
            log(f"cached images {out} ({time.monotonic() - t0:.1f}s)", quiet)
            return m

    log(f"building images into {out}", quiet)
    if "," in str(root):
        raise BuildError(f"cache path must not contain ',' (QEMU -initrd syntax): {root}")
    tmp = root / f"{digest}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "debs").mkdir(parents=True)
    debs = [f"{p}={v}" for p, v in versions.items()]
    dl = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *debs]
    try:
        _run(dl, cwd=tmp / "debs", env=_apt_env())
    except BuildError:
        _apt_update(quiet)
        _run(dl, cwd=tmp / "debs", env=_apt_env())
    stage = tmp / "stage"
    stage.mkdir()
    for deb in sorted((tmp / "debs").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(stage)])
    shutil.rmtree(tmp / "debs")

    kpkg = next(p for p in versions if p.startswith("linux-image-"))
    kver = kpkg[len("linux-image-") :]
    vmlinuz = stage / f"boot/vmlinuz-{kver}"
    xen_gz = stage / f"boot/xen-{XEN_VERSION}-amd64.gz"
    for f in (vmlinuz, xen_gz):
        if not f.exists():
            raise BuildError(f"{f} missing after unpacking")
    (tmp / "xen.elf").write_bytes(gzip.decompress(xen_gz.read_bytes()))
    shutil.copy2(vmlinuz, tmp / "vmlinuz")
    build_guest_initramfs(tmp / "guest.cpio")
    mods = build_dom0_initramfs(
        stage, kver, tmp / "vmlinuz", tmp / "guest.cpio", tmp / "dom0-root", tmp / "dom0.cpio"
    )
    # The kernel module tree is large and no longer needed.
    shutil.rmtree(stage / "lib/modules", ignore_errors=True)
    shutil.rmtree(stage / "usr/share", ignore_errors=True)

    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    manifest = {
        "hash": digest,
        "dir": str(out),
        "xen_version": XEN_VERSION,
        "xen": str(out / "xen.elf"),
        "vmlinuz": str(out / "vmlinuz"),
        "dom0_initrd": str(out / "dom0.cpio"),
        "guest_initrd": str(out / "guest.cpio"),
        "dom0_root": str(out / "dom0-root"),
        "stage": str(out / "stage"),
        "xen_libdir": str(out / f"stage/usr/lib/{MULTIARCH}"),
        "xen_pythondir": str(out / f"stage/usr/lib/xen-{XEN_VERSION}/lib/python"),
        "kernel_version": kver,
        "packages": versions,
        "host_packages": host_versions,
        "dom0_modules": mods,
        "dom0_ready_marker": DOM0_PROMPT_READY,
        "guest_ready_marker": GUEST_READY,
        "guest_cfg": "/etc/xen/sqzguest.cfg",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "build_seconds": round(time.monotonic() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (root / "latest.json").write_text(json.dumps({"dir": str(out)}) + "\n")
    # Drop stale builds (other hashes).
    for old in root.iterdir():
        if old.is_dir() and old != out and re.fullmatch(r"[0-9a-f]{16}(\.tmp)?", old.name):
            shutil.rmtree(old, ignore_errors=True)
    log(f"built in {manifest['build_seconds']}s", quiet)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help=f"cache dir (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        m = ensure_images(args.cache, force=args.force, quiet=args.quiet)
    except BuildError as e:
        print(f"build_images: {e}", file=sys.stderr)
        return 1
    print(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

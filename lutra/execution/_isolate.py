"""Filesystem isolation for the Python sandbox: a private root in a mount namespace, Landlock, capability drop.

Two mechanisms, chosen once per process by `sandbox.capabilities()` (`isolation`):

- `mount_namespace` (root, or any user allowed to create user namespaces): the zygote starts under
  `unshare --mount --pid --net` and, before it serves anything, builds a new root on a tmpfs that holds only
  read-only, nosuid, nodev bind mounts of what an interpreter needs (/usr, /lib*, /bin, /sbin, /etc, the
  Python prefixes and the site-packages on sys.path), a fresh /proc of its own PID namespace, a read-only
  /sys, a few device nodes and an empty /sbx tmpfs for task dirs; it then pivots into it and detaches the old
  root. Whatever is not bound does not exist in there: the project, the run dir, $HOME, the host's /tmp and
  /dev/shm, other processes. Each program's process then enters a mount namespace of its own in which its
  task dir is bound at /tmp and a second one at /dev/shm (its only writable places, thrown away afterwards)
  and /sbx is covered by an empty read-only tmpfs, drops every capability (bounding set included), sets
  no_new_privs, and as root also changes to an unprivileged uid.
- `landlock` (no namespaces, kernel >= 5.13): the program's process restricts itself: it may read only the
  same allow-list (plus /proc, /sys, /dev), write only beneath its task dir, and, where the ABI has them,
  neither connect nor bind TCP sockets (ABI 4) nor signal or reach abstract sockets outside its domain
  (ABI 6). Landlock also denies ptrace-class access to processes outside the domain, so
  `/proc/<pid>/environ` of the trainer is unreadable. Applied on top of the mount namespace too, when present.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
CLONE_NEWNS = 0x00020000
MNT_DETACH = 2
SYS_PIVOT_ROOT, SYS_MOUNT_SETATTR, SYS_CAPSET = 155, 442, 126
SYS_LL_CREATE, SYS_LL_ADD, SYS_LL_RESTRICT = 444, 445, 446
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_DUMPABLE = 38, 24, 4
SBX = "/sbx"
"""Inside the private root: the zygote's task dirs (one tmpfs per zygote)."""
DEVICES = ("null", "zero", "full", "random", "urandom")


class IsolationError(OSError):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise IsolationError(e, f"{what}: {os.strerror(e)}")


def _enc(s):
    return s.encode() if isinstance(s, str) else s


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = _enc
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _readonly(path: str, recursive: bool = True) -> None:
    """Make the mount at `path` (and every mount below it) read-only, nosuid, nodev."""
    attr = struct.pack("QQQQ", MS_RDONLY | MS_NOSUID | MS_NODEV, 0, 0, 0)  # MOUNT_ATTR_* share MS_* values here
    buf = ctypes.create_string_buffer(attr, len(attr))
    rc = _libc.syscall(SYS_MOUNT_SETATTR, -100, path.encode(), 0x8000 if recursive else 0, buf, len(attr))
    if rc == 0:
        return
    # Kernels before 5.12: remount each mount point under `path`, deepest last is fine for bind remounts.
    points = [path]
    if recursive:
        with open("/proc/self/mountinfo") as f:
            points += [ln.split()[4] for ln in f if ln.split()[4].startswith(path.rstrip("/") + "/")]
    for p in points:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
        for extra in (0, MS_NOEXEC):  # a mount locked noexec in a user namespace must keep it
            if _libc.mount(None, p.encode(), None, flags | extra, None) == 0:
                break
        else:
            _check(-1, f"read-only remount of {p}")


SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


@functools.lru_cache(maxsize=1)
def _keep() -> tuple[str, ...]:
    return tuple(_keep_paths())


def keep_paths() -> list[str]:
    """What a program may read (cached: sys.path does not change in a zygote)."""
    return list(_keep())


def _keep_paths() -> list[str]:
    """What a program may read: system dirs and this interpreter's prefixes and package dirs (not the project)."""
    keep = list(SYSTEM)
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}:
        keep.append(p)
    for p in sys.path:
        if p and ("site-packages" in p or "dist-packages" in p or p.startswith(sys.base_prefix)):
            keep.append(p)
    out: list[str] = []
    for p in sorted({os.path.realpath(p) for p in keep if os.path.exists(p)}, key=len):
        if not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


_HIDDEN: dict[str, int] = {}
"""Kept paths under /tmp or /dev/shm (a venv in a clone under /tmp, as CI's may be): an O_PATH fd opened before
the private tmpfs covers them, so build_root can still bind them through /proc/self/fd."""


def private_tmp() -> None:
    """Zygote, first thing in its new mount namespace: private /tmp and /dev/shm before any import writes there."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for p in keep_paths():  # computed (and cached) while /tmp is still the host's
        if p.startswith(("/tmp/", "/dev/shm/")):
            _HIDDEN[p] = os.open(p, os.O_PATH | (os.O_DIRECTORY if os.path.isdir(p) else 0))
    for d in ("/tmp", "/dev/shm"):
        if os.path.isdir(d):
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")


def _bind_readonly(src: str, dst: str) -> None:
    """Bind `src` (a path, or /proc/self/fd/N of an O_PATH fd) read-only at `dst`, creating the mount point."""
    if os.path.isdir(src):
        os.makedirs(dst, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
        open(dst, "w").close()
    _mount(src, dst, None, MS_BIND | MS_REC)
    _readonly(dst)


def build_root(keep: list[str], sbx_size_mb: int = 1024) -> None:
    """Zygote, after its imports: pivot into a tmpfs root holding only read-only binds of `keep`."""
    new = "/tmp/.root"
    os.mkdir(new, 0o755)
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    for link in SYSTEM:  # merged-/usr systems: /bin -> usr/bin, /lib64 -> usr/lib64 (the ELF loader's path)
        if os.path.islink(link):
            os.symlink(os.readlink(link), new + link)
    for src in keep:
        _bind_readonly(f"/proc/self/fd/{_HIDDEN[src]}" if src in _HIDDEN else src, new + src)  # under /tmp: by fd
    for fd in _HIDDEN.values():
        os.close(fd)
    _HIDDEN.clear()
    for d in ("proc", "sys", "dev", "dev/shm", "tmp", SBX[1:], ".old"):
        os.makedirs(f"{new}/{d}", 0o755, exist_ok=True)
    _mount("proc", f"{new}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("/sys", f"{new}/sys", None, MS_BIND | MS_REC)
    _readonly(f"{new}/sys")
    for dev in DEVICES:
        if os.path.exists(f"/dev/{dev}"):
            open(f"{new}/dev/{dev}", "w").close()
            _mount(f"/dev/{dev}", f"{new}/dev/{dev}", None, MS_BIND)
    _mount("tmpfs", f"{new}{SBX}", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0711,size={sbx_size_mb}m,nr_inodes=200000")
    os.chdir(new)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b".old"), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "detach the old root")
    os.rmdir("/.old")
    _readonly("/", recursive=False)  # the root tmpfs itself; the binds below are read-only already
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # our /proc entries (mem, environ) stay root-only


def enter_task(task_dir: str, uid: int | None) -> str:
    """Program process, mount-namespace mode: its own /tmp and /dev/shm, /sbx hidden. Returns the new cwd."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # kept package dirs that live under /tmp (a venv in a clone there): the task's /tmp would cover them, so they
    # are bound again, read-only, on top of it
    under = {p: os.open(p, os.O_PATH) for p in keep_paths() if p.startswith(("/tmp/", "/dev/shm/"))}
    _mount(f"{task_dir}/work", "/tmp", None, MS_BIND)
    _mount(f"{task_dir}/shm", "/dev/shm", None, MS_BIND)
    for p, fd in under.items():
        _bind_readonly(f"/proc/self/fd/{fd}", p)
        os.close(fd)
    _mount("tmpfs", SBX, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
    return "/tmp"


def drop_privileges(uid: int | None) -> None:
    """Every capability gone (bounding set too, so exec cannot bring them back), no_new_privs, then the uid."""
    last = 40
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        pass
    for cap in range(last + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: nothing to drop then
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    hdr = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = bytes(24)
    _check(_libc.syscall(SYS_CAPSET, hdr, data), "capset")


# ----------------------------------------------------------------------------------------------- Landlock

FS_FILE = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # execute, write, read, truncate, ioctl_dev
FS_READ = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir


def landlock_abi() -> int:
    """Landlock ABI version of this kernel (0: unavailable)."""
    rc = _libc.syscall(SYS_LL_CREATE, None, 0, 1)
    return max(0, int(rc))


def _fs_mask(abi: int) -> int:
    return (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)) - 1


def landlock(read: list[str], write: list[str], abi: int) -> None:
    """Restrict this process (and what it execs): read `read`, write beneath `write`; TCP and signals scoped."""
    fs = _fs_mask(abi)
    net = 3 if abi >= 4 else 0  # bind + connect TCP: no rule grants them
    scoped = 3 if abi >= 6 else 0  # abstract unix sockets + signals outside the domain
    attr = struct.pack("QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    fd = _libc.syscall(SYS_LL_CREATE, attr, len(attr), 0)
    if fd < 0:
        _check(-1, "landlock_create_ruleset")
    try:
        rules = [(p, FS_READ) for p in read] + [(p, fs) for p in write]
        rules += [(f"/dev/{d}", (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)) for d in ("null", "zero", "full")]
        rules += [(f"/dev/{d}", 1 << 2) for d in ("random", "urandom")]
        for path, access in rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not os.path.isdir(path):
                    access &= FS_FILE
                rule = struct.pack("=Qi", access & fs, pfd)
                _check(_libc.syscall(SYS_LL_ADD, fd, 1, rule, 0), f"landlock rule for {path}")
            finally:
                os.close(pfd)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        _check(_libc.syscall(SYS_LL_RESTRICT, fd, 0), "landlock_restrict_self")
    finally:
        os.close(fd)


def readonly_world() -> None:
    """SQL worker, first thing under `unshare --mount --net`: every mount read-only (/tmp too: databases may lie
    there), no_new_privs, and Landlock (when present) denying every write. SQLite reads the databases in place."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _readonly("/")
    abi = landlock_abi()
    if abi:
        landlock(["/"], [], abi)
    else:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")

"""The syscall filter of every sandboxed process, built by libseccomp (the system's libseccomp.so.2, via ctypes).

Why ctypes over the system library and not a PyPI binding: pyseccomp is itself a ctypes wrapper of the same
library (last release 2021), and the official binding (Debian's python3-seccomp) is built for the system
interpreter only; the DS-1000 interpreter (benchmark.options.python) may be another venv, which imports lutra but
not lutra's dependencies. libseccomp's C ABI (.so.2) has been stable since 2012.

The filter allows every syscall except the ones below (a deny-list: the scientific stack's syscall set is
large and changes with glibc and the kernel; the namespaces, the dropped capabilities and the rlimits stay the
boundary, the filter keeps the kernel code behind these calls out of reach). A denied call fails with EPERM, so
the program sees an ordinary error and its verdict stays honest; clone3 fails with ENOSYS, because its flags
sit in memory a filter cannot read and glibc falls back to clone(2) on ENOSYS (as Docker does). Syscalls of any
ABI other than the native one (ia32 `int 0x80`, x32 numbers on x86-64; arm32 on aarch64) kill the process:
no sandboxed program makes them, and a deny-list would have to be repeated, with other numbers, per ABI.
docs/sandbox.md compares the list with Docker's default profile and nsjail.

The zygote (and each SQL worker) builds the filter once (`prepare`); a program's process loads the compiled
BPF with one seccomp(2) call (`install`), after its own set-up (mounts, Landlock, uid drop) and before any
untrusted code.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os

LIBRARY = os.environ.get("LUTRA_LIBSECCOMP", "libseccomp.so.2")
"""Where libseccomp is; LUTRA_LIBSECCOMP=none behaves as if it were missing (tests of the fallback)."""

DENY = {
    "io_uring": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    "namespaces": ("unshare", "setns"),
    "mount": ("mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
              "open_tree", "open_tree_attr", "mount_setattr"),
    "bpf": ("bpf",),
    "perf": ("perf_event_open",),
    "userfaultfd": ("userfaultfd",),
    "keyring": ("keyctl", "add_key", "request_key"),
    "ptrace": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise"),
    "kexec": ("kexec_load", "kexec_file_load"),
    "modules": ("init_module", "finit_module", "delete_module"),
    "reboot": ("reboot",),
    "swap": ("swapon", "swapoff"),
    "ioport": ("ioperm", "iopl"),
    # what Docker allows only with a capability lutra drops anyway: denied here too, so that their code is not
    # reached at all (and because the SQL workers and the DS-1000 checker keep root's capabilities)
    "admin": ("acct", "quotactl", "quotactl_fd", "syslog", "sethostname", "setdomainname", "settimeofday",
              "clock_settime", "open_by_handle_at", "fanotify_init", "lookup_dcookie", "vhangup", "uselib"),
}
"""Denied with EPERM, by family. Names this architecture lacks (ioperm on aarch64) are skipped."""
NS_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
            "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
            "CLONE_NEWNET": 0x40000000}
"""clone(2) with any of these fails with EPERM (CLONE_NEWTIME only exists for clone3 and unshare)."""
AF_VSOCK = 40
"""socket(AF_VSOCK) fails with EPERM: vsock is not confined by a network namespace (in a VM it reaches the host)."""
UNIFIED = {"open_tree_attr": 467, "mount_setattr": 442, "quotactl_fd": 443, "process_madvise": 440,
           "pidfd_getfd": 438, "clone3": 435, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
           "move_mount": 429, "open_tree": 428, "io_uring_setup": 425, "io_uring_enter": 426,
           "io_uring_register": 427}
"""Numbers shared by every architecture since Linux 5.1, for names an older libseccomp cannot resolve yet."""

_ALLOW, _KILL_PROCESS = 0x7FFF0000, 0x80000000
_FLTATR_ACT_BADARCH, _FLTATR_CTL_OPTIMIZE = 2, 8
_CMP_EQ, _CMP_MASKED_EQ = 4, 7
_SET_MODE_FILTER, _FILTER_FLAG_TSYNC = 1, 1
PR_SET_NO_NEW_PRIVS = 38


def _errno(e: int) -> int:
    return 0x00050000 | e


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


@functools.lru_cache(maxsize=1)
def _lib():
    """(library, None) or (None, why it is missing)."""
    if LIBRARY in ("", "none"):
        return None, "LUTRA_LIBSECCOMP=none"
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as e:
        return None, f"libseccomp not found ({e}); install the system package libseccomp2"
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_Cmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    return lib, None


def missing() -> str | None:
    """Why no filter can be built here (None: libseccomp is loadable)."""
    return _lib()[1]


def version() -> str | None:
    lib = _lib()[0]
    if lib is None:
        return None
    v = lib.seccomp_version().contents
    return f"{v.major}.{v.minor}.{v.micro}"


def resolve(name: str) -> int | None:
    """This architecture's number for `name` (None where the architecture has no such syscall)."""
    nr = _lib()[0].seccomp_syscall_resolve_name(name.encode())
    if nr == -1:  # unknown to this libseccomp: the unified numbers of new syscalls
        return UNIFIED.get(name)
    return nr if nr >= 0 else None  # negative: a pseudo-number, no such syscall here


def _rule(lib, ctx, action: int, nr: int, *cmps: tuple[int, int, int, int]) -> None:
    arr = (_Cmp * len(cmps))(*[_Cmp(*c) for c in cmps]) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
    if rc < 0:
        raise OSError(-rc, f"seccomp_rule_add({nr}): {os.strerror(-rc)}")


@functools.lru_cache(maxsize=1)
def program() -> tuple[bytes, int]:
    """(BPF program, number of the seccomp syscall), built by libseccomp for the native architecture."""
    lib, why = _lib()
    if lib is None:
        raise OSError(errno.ENOSYS, why)
    ctx = lib.seccomp_init(_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, _KILL_PROCESS)
        lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, 2)  # binary tree over syscall numbers (libseccomp >= 2.5)
        for names in DENY.values():
            for name in names:
                nr = resolve(name)
                if nr is not None:
                    _rule(lib, ctx, _errno(errno.EPERM), nr)
        _rule(lib, ctx, _errno(errno.ENOSYS), resolve("clone3"))
        low = 0xFFFFFFFF  # int / unsigned int arguments: the kernel ignores the upper half of the register
        for flag in NS_FLAGS.values():  # clone's flags are arg 0 on x86-64 and aarch64
            _rule(lib, ctx, _errno(errno.EPERM), resolve("clone"), (0, _CMP_MASKED_EQ, flag, flag))
        _rule(lib, ctx, _errno(errno.EPERM), resolve("socket"), (0, _CMP_MASKED_EQ, low, AF_VSOCK))
        # personality: only PER_LINUX (0) and the query 0xffffffff. A 32-bit value is neither all zeros nor all
        # ones exactly when some set bit is followed (cyclically) by a clear one: one masked rule per bit pair
        for i in range(32):
            pair = (1 << i) | (1 << ((i + 1) % 32))
            _rule(lib, ctx, _errno(errno.EPERM), resolve("personality"), (0, _CMP_MASKED_EQ, pair, 1 << i))
        fd = os.memfd_create("lutra-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            bpf = os.pread(fd, 1 << 20, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    return bpf, resolve("seccomp")


_LOADED: dict = {}


def prepare() -> None:
    """Build the filter now (the zygote, once), so each forked program only loads it."""
    if not _LOADED:
        bpf, nr = program()
        buf = ctypes.create_string_buffer(bpf, len(bpf))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        _LOADED.update(buf=buf, prog=_Fprog(len(bpf) // 8, ctypes.addressof(buf)), nr=nr, libc=libc)


def install() -> None:
    """Confine this process (every thread of it) and all it starts from now on; raises OSError if it cannot."""
    prepare()
    libc = _LOADED["libc"]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # without CAP_SYS_ADMIN the kernel requires it
        e = ctypes.get_errno()
        raise OSError(e, f"PR_SET_NO_NEW_PRIVS: {os.strerror(e)}")
    rc = libc.syscall(_LOADED["nr"], _SET_MODE_FILTER, _FILTER_FLAG_TSYNC, ctypes.byref(_LOADED["prog"]))
    if rc != 0:
        e = ctypes.get_errno() if rc < 0 else errno.EBUSY  # > 0: a thread that could not be synchronised
        raise OSError(e, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(e)}")


def probe() -> str:
    """Run in a throwaway process by sandbox.capabilities(): load the filter, check it refuses. JSON."""
    why = missing()
    if why is None:
        try:
            install()
            libc = _LOADED["libc"]
            got = [libc.syscall(resolve(n), 0, 0) == -1 and ctypes.get_errno() for n in ("unshare", "clone3")]
            if got != [errno.EPERM, errno.ENOSYS]:
                why = f"the loaded filter did not refuse unshare(0) / clone3 (errno {got})"
        except OSError as e:
            why = str(e)
    denied = sum(resolve(n) is not None for ns in DENY.values() for n in ns) if why is None else 0
    return json.dumps({"active": why is None, "why": why, "libseccomp": version(), "denied": denied})

"""Isolation layers for untrusted Python, detected once per process; `capabilities()` reports what is in force.

Layers (reliability.md 3.2), each applied only when this machine allows it, and reported either way:
- `isolation` (filesystem; lutra.execution._isolate): `mount_namespace` (as root, or unprivileged through a user
  namespace) gives every program a private read-only root holding only the system and Python directories, with
  its own scratch dir as /tmp and /dev/shm, a /proc of its own PID namespace, every capability dropped and
  no_new_privs; `landlock` (no namespaces) confines reads to the same allow-list and writes to the scratch dir,
  and scopes signals and abstract sockets; `none` makes `benchmark.executor=python` refuse to run (fail closed,
  `require_isolation`) unless `benchmark.options.allow_unisolated=true` or LUTRA_ALLOW_UNISOLATED=1.
- `pid_namespace` / `net_namespace`: the zygote runs under `unshare --mount --pid --fork --kill-child --net`
  (root) or `unshare --user --map-root-user ...`; it is PID 1 of its namespace, so `kill(-1)` after each program
  reaps every descendant, double-forked daemons included, and the network namespace has no interface but a
  downed loopback. Without them: session + process-group kill and a child-subreaper scan (a daemon that escapes
  its session can survive), and the network is reachable (Landlock ABI >= 4 still denies TCP).
- `uid_drop`: as root, untrusted code runs as uid SANDBOX_UID_BASE + worker slot (no groups), so RLIMIT_NPROC
  counts only its own processes and root's files are not its own. Inside the private root the interpreter is
  always reachable; without it the interpreter must be readable by other users (uid_drop_blocker).
- `rlimits`: CPU, address space, file size, open files, process count (per slot uid, or per user namespace),
  core size.
- `seccomp` (lutra.execution._seccomp): a libseccomp filter, loaded last, refuses with EPERM the syscalls
  behind most kernel privilege escalations (io_uring, new namespaces, mounts, bpf, perf, userfaultfd, keyrings,
  ptrace, modules, kexec...) and kills on a foreign syscall ABI. Without libseccomp the sandbox runs on the
  layers above and says so (`seccomp_blocker`), unless `benchmark.options.require_seccomp=true`.
- always: fresh scratch working dir (HOME and TMPDIR there), environment allow-list, stdin from /dev/null,
  output to size-capped files, CUDA_VISIBLE_DEVICES="".

Protects against (tests/test_sandbox_adversarial.py, as root and as nobody): deleting, truncating, renaming or
writing any file outside the scratch dir (os, posix, a reloaded os, ctypes, subprocesses, symlinks, hardlinks,
/proc/*/root), reading the project, the run dir, $HOME or other processes' /proc/<pid>/environ, signalling or
ptracing anything outside, reaching the host's loopback or abstract sockets, leaving processes behind, filling
the host's /tmp or /dev/shm, remounting or unsharing its way out, and poisoning the zygote for later programs.
Does not protect against: kernel exploits through the syscalls the filter allows (a deny-list: file, memory,
socket and process calls stay reachable, and a syscall newer than the list is allowed; without libseccomp the
whole surface is reachable);
reading world-readable system files (/etc, /usr: they are in the root, read-only); CPU and memory contention
with other programs (rlimits per program, no cgroup). With Landlock only (measured by forcing it on this
machine: LUTRA_ADV_ISOLATION=landlock pytest tests/test_sandbox_adversarial.py): mode and owner changes
(chmod, chown, utime are outside Landlock: as root without the uid drop a program can chmod a host file), the
host's /proc (other processes' command lines are readable; environ is not), connecting to a pathname unix
socket, UDP, and abstract sockets and signals on kernels before ABI 6.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import shutil
import sqlite3
import stat
import subprocess
import sys

SANDBOX_UID_BASE = 61000
OUTPUT_CAP = 64 * 2**20
"""RLIMIT_FSIZE: no file, stdout and stderr included, may grow past this (SIGXFSZ -> output_flood)."""
NOFILE = 256
NPROC = 64


SECCOMP = False
"""Set in the zygote (and by bench/execution.py): confine() ends by loading the syscall filter."""
EXTRA_READ: list[str] = []
"""Set in the zygote: more read-only paths for programs (dataset caches), from python.Setup."""
EXTRA_ENV: dict[str, str] = {}


def sandbox_env(workdir: str) -> dict:
    return EXTRA_ENV | {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _blocked_ancestor(path: str) -> str | None:
    """The first directory above `path` that other users cannot traverse (None if all can)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        d = os.sep.join(parts[:i])
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return d
        except OSError:
            return d
    return None


@functools.lru_cache(maxsize=1)
def uid_drop_blocker() -> str | None:
    """Why untrusted code cannot run as an unprivileged uid here (None: it can).

    Not root; or the interpreter, its libraries or lutra live under a directory other users cannot traverse
    (e.g. a pyenv under /root, mode 0700): the dropped child could not import anything not yet imported.
    """
    if os.geteuid() != 0:
        return "not running as root"
    import sysconfig

    from lutra.execution.pool import _PKG_PARENT

    for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], _PKG_PARENT):
        b = _blocked_ancestor(p)
        if b:
            return f"{p} is under {b}, which other users cannot traverse"
    return None


def _unshare_argv(root: bool, mount: bool = True) -> list[str]:
    flags = (["--mount"] if mount else []) + ["--pid", "--fork", "--kill-child", "--net"]
    return ["unshare"] + flags if root else ["unshare", "--user", "--map-root-user"] + flags


_PROBE = ("import sys; sys.path.insert(0, {root!r}); import os; from lutra.execution import _isolate as I; "
          "I.private_tmp(); I.build_root(I.keep_paths())\n"
          "try:\n    open('/lutra-probe', 'w')\nexcept OSError:\n    print(os.getpid())")


_SECCOMP_PROBE = "import sys; sys.path.insert(0, {root!r}); from lutra.execution import _seccomp; print(_seccomp.probe())"


def _probe_seccomp(root: str) -> dict:
    """Load the filter in a throwaway process and check that it refuses; never in this one."""
    try:
        r = subprocess.run([sys.executable, "-I", "-c", _SECCOMP_PROBE.format(root=root)], capture_output=True,
                           text=True, timeout=30, cwd="/")
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return {"active": False, "why": "the seccomp probe process failed", "libseccomp": None, "denied": 0}


def _probe(argv: list[str], code: str) -> bool:
    try:
        r = subprocess.run(argv + [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=30,
                           cwd="/")
        return r.returncode == 0 and r.stdout.strip() == "1"
    except (OSError, subprocess.TimeoutExpired):
        return False


def allow_unisolated() -> bool:
    """The explicit override (`benchmark.options.allow_unisolated=true` or LUTRA_ALLOW_UNISOLATED=1)."""
    return os.environ.get("LUTRA_ALLOW_UNISOLATED", "") in ("1", "true", "yes")


class SandboxUnavailable(RuntimeError):
    """No filesystem isolation (or no required syscall filter) can be set up here, and running without it was
    not allowed."""


def require_seccomp(required: bool) -> bool:
    """Whether the syscall filter is in force; raises SandboxUnavailable when it is not and `required` is set."""
    caps = capabilities()
    if required and not caps["seccomp"]:
        raise SandboxUnavailable(
            f"benchmark.options.require_seccomp=true, but no seccomp filter can be loaded here: "
            f"{caps['seccomp_blocker']}. Install libseccomp2 (Debian/Ubuntu: apt-get install libseccomp2), or run "
            "on the namespaces alone with benchmark.options.require_seccomp=false.")
    return caps["seccomp"]


def require_isolation(allow: bool = False) -> str:
    """The isolation in force; raises SandboxUnavailable (fail closed) when there is none and `allow` is off."""
    caps = capabilities()
    if caps["isolation"] == "none" and not (allow or allow_unisolated()):
        raise SandboxUnavailable(
            "benchmark.executor=python: no filesystem isolation is available here (no mount namespace: "
            f"{caps['isolation_blocker']}; no Landlock: the kernel reports ABI {caps['landlock_abi']}), so "
            "generated programs could delete or overwrite any file this user can. Run where `unshare --user "
            "--mount` or Landlock works (root, or a kernel with user namespaces / Landlock enabled), or accept "
            "the risk with benchmark.options.allow_unisolated=true (or LUTRA_ALLOW_UNISOLATED=1).")
    return caps["isolation"]


@functools.lru_cache(maxsize=1)
def capabilities() -> dict:
    """What isolation is actually in force for Python programs (and the SQL engine's versions).

    isolation: `mount_namespace` (private read-only root, see lutra.execution._isolate), `landlock`, or `none`.
    seccomp: the syscall filter loads here and refuses (else seccomp_blocker says why).
    """
    from lutra.execution import _isolate
    from lutra.execution.pool import _PKG_PARENT

    root = os.geteuid() == 0
    ns_argv: list[str] = []
    isolation, why = "none", ""
    if not shutil.which("unshare"):
        why = "util-linux `unshare` not found"
    elif _probe(_unshare_argv(root), _PROBE.format(root=_PKG_PARENT)):
        ns_argv, isolation = _unshare_argv(root), "mount_namespace"
    else:
        why = "`" + " ".join(_unshare_argv(root)) + "` with a private root failed (user namespaces disabled?)"
        if _probe(_unshare_argv(root, mount=False), "import os; print(os.getpid())"):
            ns_argv = _unshare_argv(root, mount=False)
    abi = _isolate.landlock_abi()
    if isolation == "none" and abi >= 1:
        isolation = "landlock"
    blocker = uid_drop_blocker() if isolation != "mount_namespace" or not root else None
    if not root:
        blocker = "not running as root"
    sec = _probe_seccomp(_PKG_PARENT)
    return {
        "isolation": isolation,
        "isolation_blocker": why or None,
        "landlock_abi": abi,
        "uid_drop": blocker is None,
        "uid_drop_blocker": blocker,
        "sandbox_uid_base": SANDBOX_UID_BASE if blocker is None else os.geteuid(),
        "pid_namespace": bool(ns_argv),
        "net_namespace": bool(ns_argv),
        "unshare_argv": ns_argv,
        "rlimits": ["CPU", "AS", "FSIZE", "NOFILE", "CORE"] + (
            ["NPROC"] if blocker is None or isolation == "mount_namespace" else []),
        "seccomp": sec["active"],
        "seccomp_blocker": sec["why"],
        "libseccomp": sec["libseccomp"],
        "seccomp_denied_syscalls": sec["denied"],
        "env_allowlist": True,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "euid": os.geteuid(),
    }


def _lim(res, value):
    soft, hard = resource.getrlimit(res)
    v = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(res, (v, v if os.geteuid() == 0 else hard))


def vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def confine(task_dir: str, uid: int | None, cpu_s: float, memory_mb: int, isolation: str) -> None:
    """In the forked child, before any untrusted code: rlimits, filesystem isolation, privileges, environment,
    then the syscall filter (when SECCOMP)."""
    from lutra.execution import _isolate

    _lim(resource.RLIMIT_CPU, int(cpu_s) + 1)
    _lim(resource.RLIMIT_AS, vm_bytes() + memory_mb * 2**20)  # the pre-imported stack is already mapped
    _lim(resource.RLIMIT_FSIZE, OUTPUT_CAP)
    _lim(resource.RLIMIT_NOFILE, NOFILE)
    _lim(resource.RLIMIT_CORE, 0)
    if uid is not None or isolation == "mount_namespace":  # a user namespace counts NPROC on its own
        _lim(resource.RLIMIT_NPROC, NPROC)
    work = os.path.join(task_dir, "work")
    abi = _isolate.landlock_abi()
    if isolation == "mount_namespace":
        work = _isolate.enter_task(task_dir, uid)
        _isolate.drop_privileges(uid)
        if abi:
            _isolate.landlock(["/"], ["/tmp", "/dev/shm"], abi)
    else:
        if uid is not None or isolation == "landlock":  # Landlock alone: root keeps no capability either
            _isolate.drop_privileges(uid)
        if isolation == "landlock":
            _isolate.landlock(_isolate.keep_paths() + EXTRA_READ + ["/proc", "/sys", "/dev"], [work], abi)
    os.chdir(work)
    os.environ.clear()
    os.environ.update(sandbox_env(work))
    if SECCOMP:  # last: the set-up above needs mount, unshare and landlock
        from lutra.execution import _seccomp

        _seccomp.install()


def rmtree(path: str) -> None:
    """Remove a sandbox dir even after the program chmod-ed its contents to 000 (never follows symlinks)."""
    def onerror(func, p, exc):
        try:
            parent = os.path.dirname(p)
            os.chmod(parent, stat.S_IRWXU)
            if not os.path.islink(p) and os.path.isdir(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)

"""The sandbox's syscall filter (lutra.execution._seccomp), judged by what the kernel answers.

One program makes every denied call with arguments that are harmless where it is allowed (a path that does not
exist, fd -1, an invalid flag, a bad magic number); it runs (1) inside the sandbox, where each call must fail with
EPERM (clone3: ENOSYS); (2) outside, as the test's user with nothing loaded: the control, where the call must reach
the kernel's own code (success, or an errno other than the filter's; skipped with the kernel's answer where the
kernel refuses it anyway); (3) outside as root with only the filter loaded (every capability kept): the filter alone
refuses. The sandbox's program runs as its dropped uid when the test runs as root; `test_sandbox_as_nobody` re-runs
the sandbox tests as uid 65534, where the program is root of its own user namespace. The DS-1000 checker (root,
capabilities kept) and the SQL workers carry the same filter; the scientific stack still imports and runs; and
without libseccomp the sandbox still runs and says so, unless benchmark.options.require_seccomp is set.
"""

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lutra.execution import _seccomp, capabilities
from lutra.execution import python as P
from lutra.execution.pool import _PKG_PARENT

CAPS = capabilities()
needs_filter = pytest.mark.skipif(not CAPS["seccomp"], reason=f"no seccomp filter here: {CAPS['seccomp_blocker']}")
NOPE = "b'/nonexistent-lutra'"
F = _seccomp.NS_FLAGS

# (family, label, call); `sc(name, *args)` is syscall(2) by name, `clone(flags)` a fork-like raw clone.
# Calls that change the calling process (personality, unshare) come last, so the control sees the rest unchanged.
CALLS = [
    ("io_uring", "io_uring_setup", "sc('io_uring_setup', 1, B)"),
    ("io_uring", "io_uring_enter", "sc('io_uring_enter', -1, 0, 0, 0, 0, 0)"),
    ("io_uring", "io_uring_register", "sc('io_uring_register', -1, 0, 0, 0)"),
    ("namespaces", "setns", "sc('setns', -1, 0)"),
    *[("namespaces", f"clone({k})", f"clone({v})") for k, v in F.items()],
    ("namespaces", "clone3", "sc('clone3', 0, 0)"),
    ("mount", "mount", f"sc('mount', 0, {NOPE}, 0, 0x20, 0)"),
    ("mount", "umount2", f"sc('umount2', {NOPE}, 0)"),
    ("mount", "pivot_root", f"sc('pivot_root', {NOPE}, {NOPE})"),
    ("mount", "chroot", f"sc('chroot', {NOPE})"),
    ("mount", "fsopen", "sc('fsopen', b'lutra-nofs', 0)"),
    ("mount", "fsconfig", "sc('fsconfig', -1, 0, 0, 0, 0)"),
    ("mount", "fsmount", "sc('fsmount', -1, 0, 0)"),
    ("mount", "fspick", f"sc('fspick', -100, {NOPE}, 0)"),
    ("mount", "move_mount", f"sc('move_mount', -100, {NOPE}, -100, {NOPE}, 0)"),
    ("mount", "open_tree", f"sc('open_tree', -100, {NOPE}, 0)"),
    ("mount", "open_tree_attr", f"sc('open_tree_attr', -100, {NOPE}, 0, 0, 0)"),
    ("mount", "mount_setattr", f"sc('mount_setattr', -100, {NOPE}, 0, B, 32)"),
    ("bpf", "bpf", "sc('bpf', 0xdead, 0, 0)"),
    ("perf", "perf_event_open", "sc('perf_event_open', B, 0, -1, -1, 0)"),
    ("userfaultfd", "userfaultfd", "sc('userfaultfd', os.O_CLOEXEC)"),
    ("keyring", "keyctl", "sc('keyctl', 0, -3, 0)"),
    ("keyring", "add_key", "sc('add_key', 0, 0, 0, 0, 0)"),
    ("keyring", "request_key", "sc('request_key', b'user', b'lutra-no-such-key', 0, 0)"),
    ("ptrace", "ptrace", "sc('ptrace', 3, os.getpid(), 0, 0)"),
    ("ptrace", "process_vm_readv", "sc('process_vm_readv', os.getpid(), 0, 0, 0, 0, 0)"),
    ("ptrace", "process_vm_writev", "sc('process_vm_writev', os.getpid(), 0, 0, 0, 0, 0)"),
    ("ptrace", "kcmp", "sc('kcmp', os.getpid(), os.getpid(), 0, 0, 0)"),
    ("ptrace", "pidfd_getfd", "sc('pidfd_getfd', -1, 0, 0)"),
    ("ptrace", "process_madvise", "sc('process_madvise', -1, 0, 0, 0, 0)"),
    ("kexec", "kexec_load", "sc('kexec_load', 0, 1000, 0, 0xdead0000)"),
    ("kexec", "kexec_file_load", "sc('kexec_file_load', -1, -1, 0, 0, 0xffff)"),
    ("modules", "init_module", "sc('init_module', 0, 0, b'')"),
    ("modules", "finit_module", "sc('finit_module', -1, b'', 0)"),
    ("modules", "delete_module", "sc('delete_module', b'lutra_no_such_module', os.O_NONBLOCK)"),
    ("reboot", "reboot", "sc('reboot', 0, 0, 0, 0)"),
    ("swap", "swapon", "sc('swapon', 0, 0)"),
    ("swap", "swapoff", "sc('swapoff', 0)"),
    ("ioport", "ioperm", "sc('ioperm', 65536, 1, 0)"),
    ("ioport", "iopl", "sc('iopl', 4)"),
    ("admin", "acct", f"sc('acct', {NOPE})"),
    ("admin", "quotactl", "sc('quotactl', 0, 0, 0, 0)"),
    ("admin", "quotactl_fd", "sc('quotactl_fd', -1, 0, 0, 0)"),
    ("admin", "syslog", "sc('syslog', 10, 0, 0)"),
    ("admin", "sethostname", "sc('sethostname', 0, 100000)"),
    ("admin", "setdomainname", "sc('setdomainname', 0, 100000)"),
    ("admin", "settimeofday", "sc('settimeofday', 0, 0)"),
    ("admin", "clock_settime", "sc('clock_settime', 1, B)"),
    ("admin", "open_by_handle_at", "sc('open_by_handle_at', -1, 0, 0)"),
    ("admin", "fanotify_init", "sc('fanotify_init', 0xffffffff, 0)"),
    ("admin", "lookup_dcookie", "sc('lookup_dcookie', 0, 0, 0)"),
    ("admin", "vhangup", "sc('vhangup')"),
    ("admin", "uselib", "sc('uselib', 0)"),
    ("vsock", "socket(AF_VSOCK)", "sc('socket', 40, 1, 0)"),
    ("vsock", "socket(AF_VSOCK, upper bits set)", "sc('socket', (1 << 32) | 40, 1, 0)"),
    ("personality", "personality(PER_LINUX32)", "sc('personality', 8)"),
    ("personality", "personality(ADDR_NO_RANDOMIZE)", "sc('personality', 0x0040000)"),
    ("personality", "personality(PER_LINUX32, upper bits set)", "sc('personality', (1 << 32) | 8)"),
    ("namespaces", "unshare(0)", "sc('unshare', 0)"),
    ("namespaces", "unshare(CLONE_NEWNS)", "sc('unshare', 0x20000)"),
    ("namespaces", "unshare(CLONE_NEWUSER)", "sc('unshare', 0x10000000)"),
]
ALLOWED = [  # must keep working under the filter
    ("personality(PER_LINUX)", "sc('personality', 0)"),
    ("personality(query)", "sc('personality', 0xffffffff)"),
    ("fork", "clone(0)"),
    ("clone(CLONE_FILES)", "clone(0x400)"),
    ("socket(AF_UNIX)", "sc('socket', 1, 1, 0)"),
    ("socket(AF_INET)", "sc('socket', 2, 1, 0)"),
    ("getpid", "sc('getpid')"),
]
NAMES = {n for _, _, c in CALLS + [("", *a) for a in ALLOWED] for n in re.findall(r"sc\('(\w+)'", c)} | {"clone"}
NR = {n: _seccomp.resolve(n) for n in sorted(NAMES)} if CAPS["seccomp"] else {}

PROGRAM = r'''
import ctypes, errno, json, os
_l = ctypes.CDLL(None, use_errno=True)
_l.syscall.restype = ctypes.c_long
NR = {nr!r}
def _errno():
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def sc(name, *args):
    if NR.get(name) is None:
        return "absent"
    r = _l.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return "ok" if r >= 0 else _errno()
def clone(flags):
    r = _l.syscall(ctypes.c_long(NR["clone"]), ctypes.c_long(flags | 17), 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    if r < 0:
        return _errno()
    os.waitpid(r, 0)
    return "ok"
B = ctypes.create_string_buffer(4096)
out = {{"euid": os.geteuid(), "seccomp": [x.split()[1] for x in open("/proc/self/status") if x.startswith("Seccomp:")]}}
for label, call in {calls!r}:
    try:
        out[label] = eval(call)
    except Exception as e:
        out[label] = "raised " + type(e).__name__
print("RESULT" + json.dumps(out))
'''


def _program(calls) -> str:
    return PROGRAM.format(nr=NR, calls=[(label, call) for label, call in calls])


def _parse(text: str) -> dict:
    line = [ln for ln in text.splitlines() if ln.startswith("RESULT")]
    assert line, text[-2000:]
    return json.loads(line[-1][len("RESULT"):])


def _outside(code: str, with_filter: bool) -> dict:
    pre = f"import sys; sys.path.insert(0, {_PKG_PARENT!r})\nfrom lutra.execution import _seccomp\n_seccomp.install()\n"
    r = subprocess.run([sys.executable, "-I", "-c", (pre if with_filter else "") + code], capture_output=True,
                       text=True, timeout=60, start_new_session=True, cwd="/")  # no controlling tty: vhangup
    return _parse(r.stdout + r.stderr)


def _inside(code: str, setup: P.Setup = P.Setup()) -> dict:
    r = P.run(code, timeout_s=20, setup=setup)
    assert r.status == "ok", (r.status, r.error[-2000:])
    return _parse(r.stdout)


@pytest.fixture(scope="module")
def world():
    if not CAPS["seccomp"]:
        pytest.skip(f"no seccomp filter here: {CAPS['seccomp_blocker']}")
    calls = [(label, call) for _, label, call in CALLS]
    return {"inside": _inside(_program(calls)), "outside": _outside(_program(calls), False),
            "filter_only": _outside(_program(calls), True) if os.geteuid() == 0 else None,
            "unfiltered_sandbox": _inside(_program(calls), P.Setup(seccomp=False)),
            "allowed": _inside(_program(ALLOWED))}


def _expected(label: str) -> str:
    return "ENOSYS" if label == "clone3" else "EPERM"


def _absent(world, label):
    if world["outside"][label] == "absent":
        pytest.skip(f"{label}: no such syscall on this architecture")


@pytest.mark.parametrize("family, label", [(f, la) for f, la, _ in CALLS], ids=[la for _, la, _ in CALLS])
def test_sandbox_refuses(world, family, label):
    _absent(world, label)
    assert world["inside"]["seccomp"] == ["2"], world["inside"]["seccomp"]
    assert world["inside"][label] == _expected(label), (family, label, world["inside"][label])


@pytest.mark.parametrize("family, label", [(f, la) for f, la, _ in CALLS], ids=[la for _, la, _ in CALLS])
def test_control_outside_reaches_the_kernel(world, family, label):
    _absent(world, label)
    got = world["outside"][label]
    if got in ("EPERM", "EACCES", "ENOSYS", "EOPNOTSUPP", "EAFNOSUPPORT"):
        pytest.skip(f"{label}: the kernel refuses it outside the sandbox too ({got}, euid {os.geteuid()})")
    assert got != _expected(label), (label, got)


@pytest.mark.parametrize("family, label", [(f, la) for f, la, _ in CALLS], ids=[la for _, la, _ in CALLS])
def test_filter_alone_refuses_root(world, family, label):
    """Root with every capability, no namespace: only the filter stands between the call and the kernel."""
    if world["filter_only"] is None:
        pytest.skip("not root")
    _absent(world, label)
    assert world["filter_only"]["euid"] == 0
    assert world["filter_only"][label] == _expected(label), (label, world["filter_only"][label])


def test_headline_calls_need_the_filter(world):
    """Without the filter the same sandbox lets io_uring_setup and unshare(CLONE_NEWUSER) through."""
    bare = world["unfiltered_sandbox"]
    assert bare["seccomp"] == ["0"]
    through = [la for la in ("io_uring_setup", "unshare(CLONE_NEWUSER)") if bare[la] == "ok"]
    if not through:
        pytest.skip(f"this kernel refuses both even without the filter: {bare['io_uring_setup']}, "
                    f"{bare['unshare(CLONE_NEWUSER)']}")
    assert all(world["inside"][la] == "EPERM" for la in through)


@pytest.mark.parametrize("label", [a[0] for a in ALLOWED])
def test_ordinary_calls_still_work(world, label):
    assert world["allowed"][label] == "ok", (label, world["allowed"][label])


def test_program_identity_is_reported(world):
    """As root the program runs as its slot's uid; as a user, as root of its own user namespace."""
    euid = world["inside"]["euid"]
    assert (euid >= 61000) if CAPS["uid_drop"] else euid == 0, euid


@needs_filter
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 syscall numbers exist on x86-64 only")
def test_foreign_abi_kills_the_program():
    """An x32 syscall (getpid | __X32_SYSCALL_BIT) is of no ABI the filter knows: SIGSYS, never a pass."""
    r = P.run("import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 39)\nprint('survived')")
    assert r.status == "error" and "signal 31" in r.error and "survived" not in r.stdout, r


LIBS = r'''
import subprocess, sys, threading, multiprocessing, concurrent.futures as cf
import numpy as np, pandas as pd, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
a = np.random.default_rng(0).normal(size=(200, 200)); assert np.allclose(a @ np.linalg.inv(a), np.eye(200), atol=1e-6)
df = pd.DataFrame({"k": np.arange(100) % 7, "v": np.arange(100)}); assert df.groupby("k").v.sum().sum() == 4950
plt.plot([1, 2, 3]); plt.savefig("f.png"); plt.close("all")
with cf.ThreadPoolExecutor(4) as ex:
    assert list(ex.map(lambda x: x * x, range(8)))[-1] == 49
with multiprocessing.get_context("fork").Pool(2) as pool:
    assert pool.map(abs, [-1, -2]) == [1, 2]
assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout.strip() == "42"
{extra}
print("LIBS OK")
'''
TORCH = ("import torch\ntorch.set_num_threads(2)\nx = torch.randn(256, 256)\n"
         "assert torch.allclose(x @ torch.eye(256), x)\nassert torch.nn.Linear(4, 2)(torch.ones(1, 4)).shape == (1, 2)")
SKLEARN = ("from sklearn.linear_model import LogisticRegression\nX = np.arange(40).reshape(20, 2) / 40\n"
           "y = (X[:, 0] > 0.5).astype(int)\nassert LogisticRegression().fit(X, y).score(X, y) > 0.7")


@needs_filter
def test_scientific_stack_runs_under_the_filter():
    extra = [TORCH] + ([SKLEARN] if importlib.util.find_spec("sklearn") else [])
    r = P.run(LIBS.replace("{extra}", "\n".join(extra)), timeout_s=60)
    assert r.status == "ok" and "LIBS OK" in r.stdout, (r.status, r.error[-2000:])


CHECKER = '''
import ctypes, errno, os
_l = ctypes.CDLL(None, use_errno=True)
_l.syscall.restype = ctypes.c_long
B = ctypes.create_string_buffer(4096)
got = {{}}
for name, nr, args in (("io_uring_setup", {io}, (1, B)), ("unshare", {un}, (0x10000000,))):
    got[name] = _l.syscall(nr, *args) == -1 and errno.errorcode.get(ctypes.get_errno())
status = [x.split()[1] for x in open("/proc/self/status") if x.startswith("Seccomp:")]
assert got == {{"io_uring_setup": "EPERM", "unshare": "EPERM"}} and status == ["2"], (got, status)
assert os.geteuid() == {euid}, os.geteuid()
exec_context = "[insert]"
def generate_test_case(i):
    return None, 1
def exec_test(result, ans):
    return result == ans
def test_execution(solution: str):
    code = exec_context.replace("[insert]", solution)
    for i in range(1):
        test_input, expected_result = generate_test_case(i + 1)
        test_env = {{"test_input": test_input}}
        exec(code, test_env)
        assert exec_test(test_env["result"], expected_result)
'''


@needs_filter
def test_ds1000_checker_is_filtered():
    """The trusted checker runs the record's code_context as the zygote's user (root, when lutra runs as root,
    with the capabilities of the zygote's namespaces): the filter refuses it the same calls."""
    ctx = CHECKER.format(io=NR["io_uring_setup"], un=NR["unshare"], euid=os.geteuid())
    r = P.run_ds1000(ctx, "result = 1", timeout_s=30)
    assert r.passed is True and r.path == "isolated", (r.status, r.error[-2000:])


@needs_filter
def test_sql_workers_are_filtered():
    from lutra.execution import sql

    assert sql.run(":memory:", "SELECT 1").status in ("ok", "error")  # starts the pool
    found = {}
    todo = list(sql.pool().pids())
    while todo:  # the workers, and under `unshare --fork` the unshare process's child
        p = todo.pop()
        try:
            if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] != b"unshare":
                found[p] = [x.split()[1] for x in Path(f"/proc/{p}/status").read_text().splitlines()
                            if x.startswith("Seccomp:")]
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
    assert found and all(s == ["2"] for s in found.values()), found


def test_capabilities_report_the_filter():
    assert isinstance(CAPS["seccomp"], bool)
    if CAPS["seccomp"]:
        assert CAPS["seccomp_blocker"] is None and re.fullmatch(r"\d+\.\d+\.\d+", CAPS["libseccomp"])
        assert CAPS["seccomp_denied_syscalls"] >= 40
    else:
        assert CAPS["seccomp_blocker"]


MISSING = r'''
import sys; sys.path.insert(0, {root!r})
from lutra.config import BenchmarkConfig
from lutra.execution import capabilities, python as P, sql
from lutra.execution.sandbox import SandboxUnavailable
c = capabilities()
print("CAPS", c["seccomp"], c["seccomp_blocker"], c["isolation"])
r = P.run("print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])")
print("RUN", r.status, r.stdout.strip())
for what, f in (("python", lambda: P.run("pass", setup=P.Setup(require_seccomp=True))),
                ("sql", lambda: sql.judge([], BenchmarkConfig(name="spider", options={{"require_seccomp": True}}),
                                          progress=False))):
    try:
        f()
        print("REQUIRE", what, "ran")
    except SandboxUnavailable as e:
        print("REQUIRE", what, "refused:", e)
'''


def test_missing_libseccomp_runs_and_says_so():
    env = dict(os.environ, LUTRA_LIBSECCOMP="none")
    r = subprocess.run([sys.executable, "-c", MISSING.format(root=_PKG_PARENT)], capture_output=True, text=True,
                       timeout=180, env=env, cwd="/")
    out = r.stdout
    assert "CAPS False LUTRA_LIBSECCOMP=none" in out, out + r.stderr[-2000:]
    if "CAPS False LUTRA_LIBSECCOMP=none none" not in out:  # isolation none: python refuses before the filter
        assert "RUN ok 0" in out, out + r.stderr[-2000:]
    for what in ("python", "sql"):
        line = [ln for ln in out.splitlines() if ln.startswith(f"REQUIRE {what}")]
        assert line and "refused" in line[0] and "benchmark.options.require_seccomp=true" in line[0], out


@pytest.mark.skipif(os.environ.get("LUTRA_SECCOMP_NESTED") == "1", reason="already the nested run")
def test_sandbox_as_nobody():
    """The sandbox tests as uid 65534 (as a non-root user runs lutra): the program is root of a user namespace."""
    if os.geteuid() != 0:
        pytest.skip("not root: this run already is the unprivileged case")
    if not (shutil.which("setpriv") and shutil.which("unshare")):
        pytest.skip("needs util-linux setpriv and unshare to drop to nobody")
    prefix = os.path.realpath(sys.base_prefix)
    script = ["set -e", "mount --make-rprivate /"]
    if prefix.startswith("/root/"):  # nobody cannot enter /root: as in test_sandbox_adversarial, rebind the tree
        top = "/root/" + prefix.split("/")[2]
        script += [f"S=$(mktemp -d /dev/shm/lutra-sc-stash-XXXX); mount --bind {top} $S",
                   "mount -t tmpfs -o mode=0755 tmpfs /root", f"mkdir -p {top}", f"mount --move $S {top}", "rmdir $S"]
    home = f"/tmp/lutra-seccomp-nobody-{os.getpid()}"
    script += [f"mkdir -p {home} && chown 65534:65534 {home}",
               f"exec setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/bin:/bin HOME={home} "
               f"LUTRA_SECCOMP_NESTED=1 PYTHONDONTWRITEBYTECODE=1 {sys.executable} -m pytest -q -p no:cacheprovider "
               f"{__file__} -k 'sandbox_refuses or headline or identity or ordinary or stack'"]
    try:
        r = subprocess.run(["unshare", "--mount", "--fork", "sh", "-c", "\n".join(script)], capture_output=True,
                           text=True, timeout=240, cwd=str(Path(__file__).parents[1]))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0 and " passed" in tail and "failed" not in tail, tail
    print(tail.strip().splitlines()[-1])  # the nested run's summary

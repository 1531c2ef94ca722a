"""Hostile Python against the sandbox's filesystem, process and network isolation, judged by the world afterwards.

All programs run in one parallel batch (tests/_adversarial.py holds the list); each then has its own test that
looks at what it aimed at: its canary file outside the sandbox still there with its content and mode, its
marker name nowhere in the host's /tmp, /dev/shm, the parent's cwd, the run dir, /etc or /var/tmp, no process
left with its marker, no connection reached our listeners, the victim process alive and its secret never
printed, /etc/passwd and numpy's __init__.py unchanged, every zygote still the one it was. The verdict is
checked too, but never trusted on its own.

As root this runs as root; `test_suite_as_nobody` re-runs the same file as uid 65534 in a subprocess (where
setpriv exists), which exercises the unprivileged path (user namespace, or Landlock).
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from lutra.execution import capabilities
from lutra.execution import python as P

sys.path.insert(0, str(Path(__file__).parent))
from _adversarial import DETECT, POISON, PROGRAMS  # noqa: E402

T = 3.0
WORKERS = 4
CAPS = capabilities()
RUN = uuid.uuid4().hex[:10]
HOST = Path("/tmp") / f"lutra-adv-host-{RUN}"
RUNDIR = Path("/tmp") / f"lutra-adv-run-{RUN}"
TOKEN = f"tok{uuid.uuid4().hex}"
WATCH = [Path("/tmp"), Path("/dev/shm"), Path.cwd(), RUNDIR, HOST, Path("/etc"), Path("/var/tmp")]
NUMPY_INIT = Path(__import__("numpy").__file__)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


class _Listener:
    """TCP, UDP and abstract-unix listeners on the host: any byte or connection that reaches them is an escape."""

    def __init__(self):
        self.hits: list[str] = []
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.abstract = f"lutra-adv-{RUN}"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind("\0" + self.abstract)
        self.unix.listen(16)
        self.path = str(HOST / "sock")
        self.fsock = socket.socket(socket.AF_UNIX)
        self.fsock.bind(self.path)
        self.fsock.listen(16)
        for s in (self.tcp, self.udp, self.unix, self.fsock):
            s.settimeout(0.2)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()
        self.stop = False

    def _serve(self, s):
        while not getattr(self, "stop", False):
            try:
                if s.type == socket.SOCK_DGRAM:
                    self.hits.append(f"udp {s.recv(100)!r}")
                else:
                    self.hits.append(f"{s.family.name} {s.accept()[1]!r}")
            except OSError:
                continue

    def close(self):
        self.stop = True
        for s in (self.tcp, self.udp, self.unix, self.fsock):
            s.close()


def _subst(src: str, i: int, ctx: dict) -> str:
    return (src.replace("{C}", str(HOST / f"canary-{i}.txt")).replace("{H}", str(HOST))
            .replace("{R}", str(RUNDIR)).replace("{P}", str(Path.cwd())).replace("{M}", f"lutra-adv-m{i}-{RUN}")
            .replace("{PID}", str(os.getpid())).replace("{VICTIM}", str(ctx["victim"].pid))
            .replace("{TOK}", TOKEN).replace("{PORT}", str(ctx["listen"].port))
            .replace("{ABS}", ctx["listen"].abstract).replace("{SOCK}", ctx["listen"].path))


def _procs_with(marker: str) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if marker.encode() in open(f"/proc/{p}/cmdline", "rb").read():
                    out.append(int(p))
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def world():
    if CAPS["isolation"] == "none":
        pytest.skip("no filesystem isolation on this machine (capabilities()['isolation'] == 'none')")
    HOST.mkdir(mode=0o755)
    RUNDIR.mkdir(mode=0o755)
    (RUNDIR / "manifest.json").write_text(f'{{"secret": "{TOKEN}"}}')
    (HOST / "secret.txt").write_text(TOKEN)
    for i in range(len(PROGRAMS)):
        (HOST / f"canary-{i}.txt").write_text(f"intact {i}")
        os.chmod(HOST / f"canary-{i}.txt", 0o644)
    ctx = {"listen": _Listener()}
    # a process outside the sandbox with a secret in its environment and argv
    ctx["victim"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", TOKEN],
                                     env={"LUTRA_SECRET": TOKEN})
    before = {"passwd": _sha(Path("/etc/passwd")), "numpy": _sha(NUMPY_INIT)}
    forced = os.environ.get("LUTRA_ADV_ISOLATION", "")  # e.g. landlock: the fallback, on a machine that has more
    pool = P.pool(WORKERS, setup=P.Setup(isolation=forced)) if forced else P.pool(WORKERS)
    list(pool.map([({"op": "program", "code": "pass", "timeout_s": T, "memory_mb": 1024}, T + 5)] * WORKERS))
    zygotes, spawned = sorted(pool.pids()), pool.spawned
    tasks = [({"op": "program", "code": _subst(src, i, ctx), "timeout_s": T, "memory_mb": 1024}, T + 5)
             for i, (_, src, _) in enumerate(PROGRAMS)]
    t0 = time.monotonic()
    results = dict(pool.map(tasks, workers=WORKERS))
    # the poisoning programs first, then detectors that must find a clean world in every zygote
    poison = dict(pool.map([({"op": "program", "code": POISON, "timeout_s": T, "memory_mb": 1024}, T + 5)]
                           * (2 * WORKERS), workers=WORKERS))
    detect = dict(pool.map([({"op": "program", "code": DETECT, "timeout_s": T, "memory_mb": 1024}, T + 5)]
                           * (2 * WORKERS), workers=WORKERS))
    wall = time.monotonic() - t0
    time.sleep(0.3)
    if os.environ.get("LUTRA_ADV_DUMP"):
        for i, r in results.items():
            last = (r.get("error") or "").strip().splitlines()[-1:] or [""]
            print(f"{PROGRAMS[i][0]:<34} {r['status']:<13} {last[0][:90]} | {r.get('stdout', '')[:60]!r}")
    state = {"results": results, "poison": poison, "detect": detect, "wall": wall, "before": before,
             "zygotes": zygotes, "spawned": spawned, "pool": pool, "ctx": ctx,
             "entries": {str(d): sorted(os.listdir(d)) if d.is_dir() else [] for d in WATCH}}
    yield state
    ctx["victim"].kill()
    ctx["victim"].wait()
    ctx["listen"].close()
    shutil.rmtree(HOST, ignore_errors=True)
    shutil.rmtree(RUNDIR, ignore_errors=True)


def test_at_least_60_programs():
    assert len(PROGRAMS) >= 60


@pytest.mark.parametrize("i", range(len(PROGRAMS)), ids=[p[0] for p in PROGRAMS])
def test_hostile(world, i):
    name, _, allowed = PROGRAMS[i]
    r = world["results"][i]
    assert r["status"] in allowed, (name, r["status"], r.get("error", "")[-400:])
    assert r["seconds"] < T + 3, r
    canary = HOST / f"canary-{i}.txt"
    assert canary.is_file() and canary.read_text() == f"intact {i}", f"{name}: canary changed or gone"
    assert canary.stat().st_mode & 0o777 == 0o644, f"{name}: canary mode changed"
    marker = f"lutra-adv-m{i}-{RUN}"
    for d, names in world["entries"].items():
        assert not any(marker in n for n in names), f"{name}: {marker} appeared in {d}"
    assert not _procs_with(marker), f"{name}: a process with its marker survived"
    text = r.get("stdout", "") + r.get("stderr", "") + r.get("error", "")
    assert TOKEN not in text, f"{name}: read a secret from outside the sandbox"
    assert "ESCAPED" not in text, (name, text[-400:])


def test_world_after_the_batch(world):
    ctx = world["ctx"]
    assert ctx["victim"].poll() is None, "the victim process outside the sandbox was killed"
    assert not ctx["listen"].hits, f"connections reached the host: {ctx['listen'].hits}"
    assert _sha(Path("/etc/passwd")) == world["before"]["passwd"]
    assert _sha(NUMPY_INIT) == world["before"]["numpy"]
    pool = world["pool"]
    assert pool.spawned == world["spawned"] and sorted(pool.pids()) == world["zygotes"], "a zygote was replaced"
    for d in (Path("/tmp"), Path("/dev/shm")):  # nothing owned by a sandbox uid anywhere in the host's temp dirs
        for n in os.listdir(d):
            try:
                uid = os.lstat(d / n).st_uid
            except OSError:
                continue
            assert not 61000 <= uid < 62000, f"{d / n} was created by a sandboxed program"
    print(f"{len(PROGRAMS)} hostile programs in {world['wall']:.1f} s on {WORKERS} zygotes")  # speed: bench/


def test_no_cross_program_poisoning(world):
    assert all(r["status"] in ("ok", "error") for r in world["poison"].values())
    for r in world["detect"].values():
        assert r["status"] == "ok" and "CLEAN" in r["stdout"], (r["status"], r.get("stdout"), r.get("error"))


def test_isolation_is_reported():
    assert CAPS["isolation"] in ("mount_namespace", "landlock", "none")
    if os.geteuid() == 0 and shutil.which("unshare"):
        assert CAPS["isolation"] == "mount_namespace" and CAPS["uid_drop"], CAPS


@pytest.mark.skipif(os.environ.get("LUTRA_ADV_NESTED") == "1", reason="already the nested run")
def test_suite_as_nobody():
    """The same suite as uid 65534 (the machine's `nobody`), as a non-root user would run lutra."""
    if os.geteuid() != 0:
        pytest.skip("not root: this run already is the unprivileged case")
    if not (shutil.which("setpriv") and shutil.which("unshare")):
        pytest.skip("needs util-linux setpriv and unshare to drop to nobody")
    # the interpreter may live under a directory nobody cannot enter (a pyenv under /root): in a private mount
    # namespace for this run only, cover /root with an empty tmpfs and bind the interpreter's tree back
    prefix = os.path.realpath(sys.base_prefix)
    script = ["set -e", "mount --make-rprivate /"]
    if prefix.startswith("/root/"):
        top = "/root/" + prefix.split("/")[2]
        script += [f"S=$(mktemp -d /dev/shm/lutra-adv-stash-XXXX); mount --bind {top} $S",
                   "mount -t tmpfs -o mode=0755 tmpfs /root", f"mkdir -p {top}", f"mount --move $S {top}",
                   "rmdir $S"]
    home = f"/tmp/lutra-adv-nobody-{RUN}"
    script += [f"mkdir -p {home} && chown 65534:65534 {home}",
               f"exec setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/bin:/bin HOME={home} "
               f"LUTRA_ADV_NESTED=1 PYTHONDONTWRITEBYTECODE=1 {sys.executable} -m pytest -q -p no:cacheprovider "
               f"{__file__}"]
    try:
        r = subprocess.run(["unshare", "--mount", "--fork", "sh", "-c", "\n".join(script)], capture_output=True,
                           text=True, timeout=240, cwd=str(Path(__file__).parents[1]))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail

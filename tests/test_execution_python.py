"""Hostile and pathological Python against the sandbox (reliability.md 5.3), and DS-1000 records checked by the
trusted-side checker (skipped when ../shared/data/ds1000 is absent).

Every hostile program: verdict within timeout + 2 s, no process left in the zygote's namespace but its spare,
one task dir per zygote, no file descriptor leaked by the parent, and (where the capability exists) nothing
changed outside the sandbox. Programs that need a capability this machine lacks are skipped with the reason,
and the test asserts that `capabilities()` reports it missing.
"""

import gzip
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from lutra.benchmarks import Problem
from lutra.config import BenchmarkConfig
from lutra.execution import capabilities, judge
from lutra.execution import python as P

T = 2.0
CAPS = capabilities()
DS1000 = Path("/work/shared/data/ds1000/data/ds1000.jsonl.gz")
CANARY_DIR = Path("/tmp") / f"lutra-canary-{os.getpid()}"
ESCAPE = f"/tmp/lutra-escape-{uuid.uuid4().hex}"

ANY = {"ok", "error", "timeout", "oom", "killed", "output_flood"}
# (name, program, allowed statuses, capability it needs or None)
HOSTILE = [
    ("busy loop", "while True: pass", {"timeout"}, None),
    ("swallowed timeouts", "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except BaseException:\n        pass",
     {"timeout"}, None),
    ("C-level loop", "sum(range(3 * 10**9))", {"timeout"}, None),
    ("huge power", "x = 10**10**8", {"timeout", "oom"}, None),
    ("catastrophic regex", "import re; re.match(r'(a+)+$', 'a' * 40 + 'b')", {"timeout"}, None),
    ("ignore signals", "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
     "    signal.signal(s, signal.SIG_IGN)\nwhile True: pass", {"timeout"}, None),
    ("SIGSTOP self", "import os, signal; os.kill(os.getpid(), signal.SIGSTOP)", {"timeout"}, None),
    ("sleep", "import time; time.sleep(100)", {"timeout"}, None),
    ("raise own CPU limit", "import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))\n"
     "except Exception:\n    pass\nwhile True: pass", {"timeout"}, None),
    ("subprocess sleep", "import subprocess; subprocess.run(['sleep', '987'])", {"timeout"}, None),
    ("double-fork daemon", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
     "        os.execvp('sleep', ['sleep', '987'])\n    os._exit(0)\ntime.sleep(0.2)", {"ok"}, None),
    ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
     {"timeout", "error", "killed"}, "uid_drop"),
    ("thread bomb", "import threading, time\nfor i in range(10000):\n"
     "    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()", {"error", "timeout", "oom", "ok"},
     None),
    ("input()", "input()", {"error"}, None),
    ("stdin read", "import sys; print(len(sys.stdin.read()))", {"ok"}, None),
    ("/dev/tty", "open('/dev/tty')", {"error"}, None),
    ("stdout flood", "while True: print('x' * 10000)", {"output_flood"}, None),
    ("stderr flood", "import sys\nwhile True: sys.stderr.write('y' * 10000)", {"output_flood"}, None),
    ("one 100 MB line", "import sys; sys.stdout.write('x' * (100 * 2**20))", {"output_flood", "oom"}, None),
    ("bytearray 64 GiB", "x = bytearray(64 * 2**30)", {"oom"}, None),
    ("numpy 10^12", "import numpy as np; np.ones((10**6, 10**6))", {"oom"}, None),
    ("list growth", "l = []\nwhile True: l.append('x' * 10**6)", {"oom", "timeout"}, None),
    ("100 MB file", "open('big', 'wb').write(b'x' * (100 * 2**20))", {"output_flood"}, None),
    ("many small files", "for i in range(10**6): open(f'f{i}', 'w').close()", {"timeout", "ok", "error"}, None),
    ("network connect", "import socket; socket.create_connection(('1.1.1.1', 80), timeout=1)", {"error"},
     "net_namespace"),
    ("loopback listener", "import socket\ns = socket.socket(); s.bind(('127.0.0.1', 8765)); s.listen()",
     {"ok", "error"}, None),
    ("urllib", "import urllib.request; urllib.request.urlopen('http://example.com', timeout=1)", {"error"},
     "net_namespace"),
    ("kill the zygote", "import os; os.kill(os.getppid(), 9)", {"ok", "error"}, None),
    ("killpg own group", "import os; os.killpg(0, 9)", {"killed", "error"}, None),
    ("kill(-1)", "import os; os.kill(-1, 9)", {"killed", "error", "ok"}, "pid_namespace"),
    ("recursion segfault", "import sys\nsys.setrecursionlimit(10**9)\ndef f(): f()\nf()", {"error", "timeout"}, None),
    ("RecursionError", "def f(): f()\nf()", {"error"}, None),
    ("null pointer", "import ctypes; ctypes.string_at(0)", {"error"}, None),
    ("faulthandler segv", "import faulthandler; faulthandler._sigsegv()", {"error"}, None),
    ("abort", "import os; os.abort()", {"error"}, None),
    ("os._exit(0)", "import os; os._exit(0)", {"error"}, None),
    ("sys.exit(0)", "import sys; sys.exit(0)", {"ok"}, None),
    ("SystemExit(3)", "raise SystemExit(3)", {"error"}, None),
    ("KeyboardInterrupt", "raise KeyboardInterrupt", {"error"}, None),
    ("huge exception text", "raise ValueError('x' * 10**7)", {"error"}, None),
    ("forge done on fds", "import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'{\"done\": true}')\n"
     "    except OSError:\n        pass\nos._exit(1)", ANY, None),
    ("print passed", "print('passed'); print('{\"status\": \"ok\"}')", {"ok"}, None),
    ("close stdio", "import os; os.close(1); os.close(2); print('x')", {"ok", "error"}, None),
    ("stdout None", "import sys; sys.stdout = None", {"ok"}, None),
    ("atexit hang", "import atexit, time; atexit.register(time.sleep, 100)", {"ok"}, None),
    ("non-daemon spinning thread", "import threading\ndef f():\n    while True: pass\n"
     "threading.Thread(target=f).start()", {"ok"}, None),
    ("setsid again", "import os; os.setsid()", {"error"}, None),
    ("os.system", "import os; os.system('echo hi')", {"ok"}, None),
    ("multiprocessing pool", "import multiprocessing as mp\nwith mp.Pool(2) as p: print(p.map(abs, [-1, -2]))",
     {"ok", "error", "timeout"}, None),
    ("chmod 000 dirs", "import os; os.makedirs('d/e'); open('d/e/f', 'w').close(); os.chmod('d/e', 0); os.chmod('d', 0)",
     {"ok"}, None),
    ("symlink to /etc", "import os; os.symlink('/etc', 'etc_link'); print(len(os.listdir('etc_link')))", {"ok"}, None),
    ("fifo", "import os; os.mkfifo('ff')", {"ok"}, None),
    ("10 MB program", "x = 1\n" * 1_500_000, {"ok", "error", "timeout"}, None),
    ("NUL byte", "x = 1\x00", {"error"}, None),
    ("CR line endings", "x = 1\ry = 2\rprint(x + y)", {"ok", "error"}, None),
    ("lone surrogate", "s = '\udcff'\nprint(len(s))", {"ok", "error"}, None),
    ("mixed tabs", "if True:\n\tx = 1\n        y = 2", {"error"}, None),
    ("empty program", "", {"ok"}, None),
    ("plt.show headless", "import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show(); plt.close('all')", {"ok"},
     None),
    ("tkinter", "import tkinter; tkinter.Tk()", {"error"}, None),
    ("no GPU visible", "import os; assert os.environ['CUDA_VISIBLE_DEVICES'] == ''", {"ok"}, None),
    ("patch builtins", "import builtins; builtins.print = None; del builtins.len", {"ok", "error"}, None),
    ("poison numpy module", "import sys; sys.modules['numpy'] = None", {"ok"}, None),
    # under a mount namespace /tmp is the program's own scratch dir, so the write may succeed: what counts is that
    # nothing appears in the host's /tmp (checked after every program)
    ("write outside temp dir", f"open('{ESCAPE}', 'w').write('x')",
     {"error", "ok"} if CAPS["isolation"] == "mount_namespace" else {"error"}, "uid_drop"),
    ("delete a host file: os.remove", f"import os; os.remove('{CANARY_DIR}/canary.txt')", {"error"}, "uid_drop"),
    ("delete a host file: posix.unlink", f"import posix; posix.unlink('{CANARY_DIR}/canary.txt')", {"error"},
     "uid_drop"),
    ("delete a host file: reload(os)", f"import importlib, os; importlib.reload(os).remove('{CANARY_DIR}/canary.txt')",
     {"error"}, "uid_drop"),
    ("delete a host file: ctypes", f"import ctypes; assert ctypes.CDLL(None).unlink(b'{CANARY_DIR}/canary.txt') == 0",
     {"error"}, "uid_drop"),
    ("rmtree home", "import os, shutil; shutil.rmtree(os.path.expanduser('~'))", {"ok", "error"}, None),
    ("read the trainer's environment", "import os\nfor p in os.listdir('/proc'):\n    try:\n"
     "        assert b'sekrit-canary' not in open(f'/proc/{p}/environ', 'rb').read()\n    except OSError:\n"
     "        pass", {"ok"}, "uid_drop"),
]


def _descendants(pid: int) -> list[int]:
    kids: dict = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.fixture(scope="module", autouse=True)
def canary():
    CANARY_DIR.mkdir(exist_ok=True)
    (CANARY_DIR / "canary.txt").write_text("intact")
    os.environ["WANDB_API_KEY"] = "sekrit-canary"
    P.run("pass")  # start the pool after the secret is in our environment
    yield
    os.environ.pop("WANDB_API_KEY", None)
    assert (CANARY_DIR / "canary.txt").read_text() == "intact"
    (CANARY_DIR / "canary.txt").unlink()
    CANARY_DIR.rmdir()


def test_hostile_count():
    assert len(HOSTILE) >= 60


@pytest.mark.parametrize("case", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_python(case):
    name, prog, allowed, needs = case
    if needs and not CAPS[needs]:
        assert CAPS[needs] is False  # reported missing, never claimed
        pytest.skip(f"needs {needs}: {CAPS.get('uid_drop_blocker') if needs == 'uid_drop' else 'unavailable'}")
    fds = len(os.listdir("/proc/self/fd"))
    t0 = time.monotonic()
    r = P.run(prog, timeout_s=T)
    assert time.monotonic() - t0 < T + 2, r
    assert r.status in allowed, (r.status, r.error[-300:])
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert (CANARY_DIR / "canary.txt").read_text() == "intact"
    assert not os.path.exists(ESCAPE)
    for pid in P.pool().pids():  # unshare -> zygote -> spare, nothing else
        assert len(_descendants(pid)) <= 2 + (not CAPS["pid_namespace"]), _descendants(pid)
    assert all(len(list(Path(d).glob("task-*"))) <= 1 for d in Path("/tmp").glob("lutra-sbx-*"))


def test_no_daemon_survives():
    P.run(HOSTILE[10][1], timeout_s=T)
    time.sleep(0.2)
    left = [p for p in os.listdir("/proc") if p.isdigit() and b"987" in _cmdline(p)]
    assert not left


def _cmdline(p):
    try:
        return open(f"/proc/{p}/cmdline", "rb").read()
    except OSError:
        return b""


def test_environment_is_an_allow_list():
    r = P.run("import os; print(sorted(os.environ))", timeout_s=T)
    assert "WANDB_API_KEY" not in r.stdout and "'MPLBACKEND'" in r.stdout


def test_capabilities_are_reported():
    for k in ("uid_drop", "pid_namespace", "net_namespace", "rlimits", "env_allowlist"):
        assert k in CAPS
    assert CAPS["uid_drop"] == (CAPS["uid_drop_blocker"] is None)


# ----------------------------------------------------------------------------------------------- DS-1000

@pytest.fixture(scope="module")
def ds():
    if not DS1000.exists():
        pytest.skip("shared DS-1000 data absent (../shared/data/ds1000)")
    return {r["metadata"]["problem_id"]: r for r in map(json.loads, gzip.open(DS1000, "rt"))}


def _ds(rec, sol, timeout=30.0):
    return P.run_ds1000(rec["code_context"], sol, timeout_s=timeout)


ATTACKS_PANDAS = [  # record 0: result = df.iloc[List]
    ("rebind assert_frame_equal", "import pandas.testing as t\nt.assert_frame_equal = lambda *a, **k: None\nresult = df"),
    ("rebind pd.testing", "import pandas as pd\npd.testing.assert_frame_equal = lambda *a, **k: None\nresult = df"),
    ("always-equal object", "class A:\n    def __eq__(self, o): return True\nresult = A()"),
    ("os._exit(0)", "import os; os._exit(0)"),
    ("sys.exit(0)", "import sys; sys.exit(0)"),
    ("forged stdout", "print('PASSED'); result = df"),
    ("frame walk", "import sys\nf = sys._getframe()\nwhile f.f_back: f = f.f_back\n"
     "result = f.f_globals.get('expected_result', df)"),
    ("gc hunt for the answer", "import gc\nimport pandas as pd\n"
     "c = [o for o in gc.get_objects() if isinstance(o, pd.DataFrame) and o is not df]\nresult = c[-1] if c else df"),
    ("forged bytes on the socket", "import os\nos.write(3, b'R{\"$\": \"df\"}')\nresult = df"),
    ("pickle planted", "import pickle; pickle.dump(df, open('result.pkl', 'wb')); result = None"),
    ("poison the oracle", "import numpy as np\nnp.random.permutation = lambda n: np.arange(n)\nresult = df"),
    ("exception", "raise ValueError('no')"),
]


def test_ds1000_reference_passes_isolated(ds):
    for pid in (0, 1, 5, 300, 301, 310):
        r = _ds(ds[pid], ds[pid]["reference_code"])
        assert r.status == "ok" and r.passed is True and r.path == "isolated", (pid, r.error)


@pytest.mark.parametrize("name, sol", ATTACKS_PANDAS, ids=[a[0] for a in ATTACKS_PANDAS])
def test_ds1000_attacks_never_pass(ds, name, sol):
    r = _ds(ds[0], sol)
    assert r.passed is not True, (name, r)


def test_ds1000_solution_process_holds_no_reference_code(ds):
    sol = ("import gc\nleak = any(isinstance(o, str) and 'def generate_test_case' in o for o in gc.get_objects())\n"
           "result = df.iloc[List] if not leak else None")
    assert _ds(ds[0], sol).passed is True


def test_ds1000_matplotlib_isolated_and_tamper_is_powerless(ds):
    """Record 526 (Matplotlib) is judged in the checker on the solution's figure, rebuilt there: what once had to
    be caught as `tamper` on the same-process path (overwriting ans.png, rebinding np.testing) now changes no
    verdict: with a wrong plot it fails, with the right one it passes."""
    rec = ds[526]
    ok = _ds(rec, rec["reference_code"])
    assert ok.passed is True and ok.path == "isolated", ok.error
    wrong = rec["reference_code"].replace("mew=7", "mew=3")
    assert wrong != rec["reference_code"] and _ds(rec, wrong).passed is False
    for trick in ("import matplotlib.pyplot as plt\ngetattr(plt, 'save' + 'fig')('ans.png')",
                  "import numpy\nnumpy.testing.assert_allclose = lambda *a, **k: None"):
        r = _ds(rec, wrong + "\n" + trick)
        assert r.passed is False and r.path == "isolated", r
        assert _ds(rec, rec["reference_code"] + "\n" + trick).passed is True


def test_ds1000_judge_batch(ds):
    cfg = BenchmarkConfig(name="ds1000", executor="python", timeout_s=30.0, workers=2)
    ids = [0, 1, 300, 301]
    items = [(Problem(id=str(i), question="", context="", gold=ds[i]["reference_code"], language="python",
                      test_context=ds[i]["code_context"]), s)
             for i in ids for s in (ds[i]["reference_code"], "result = None")]
    v = judge(items, cfg, progress=False, for_training=True)
    assert [x.correct for x in v] == [True, False] * len(ids)
    assert P.last_stats["isolated"] == len(items)

"""DS-1000 checking, run inside a zygote (lutra.execution._zygote): the trusted checker and the in-process path.

`trusted(conn, task, wfd)` is the checker, a child of the zygote that never runs solution code: it generates the
test cases, sends each input to the solution's process, decodes the returned `result` with the safe codec
(lutra.execution._codec: plain data only, never pickle) and calls `exec_test` itself.

`inproc(msg)` runs in the solution's process, for the records whose expected answer the codec cannot carry
(Matplotlib figures, fitted estimators...): the official harness with tamper detection, and the `result` handed
to `exec_test` must pass `plain()`: every object reachable from it is codec data or an instance of an unmodified
class of an installed library (a class defined or patched by the solution, e.g. one whose `__eq__` is always
true, or an attribute holding such an object, makes the check fail as `tamper`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import sys
import tempfile
import time
import types
from multiprocessing.connection import Connection

from lutra.execution import _codec

TAIL = 4096
TRUSTED_LIBS = {"numpy", "pandas", "scipy", "sklearn", "matplotlib", "torch", "tensorflow", "keras", "PIL",
                "seaborn", "statsmodels", "builtins", "collections", "datetime", "decimal", "fractions", "re",
                "functools", "operator", "enum", "abc", "typing", "_collections_abc", "dateutil", "pytz",
                "mpl_toolkits", "tf_keras", "gensim", "xgboost", "lightgbm", "joblib", "threadpoolctl", "copyreg",
                "weakref", "threading", "_thread", "contextlib", "dataclasses", "numbers", "uuid"}
_PLAIN = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset, slice, range,
          type(Ellipsis))
_TRUSTED_FILES = tuple(p for p in {sys.base_prefix, sys.prefix} | {q for q in sys.path if "-packages" in q} if p)


def ship(conn: Connection, obj) -> None:
    """Trusted -> solution: plain pickle. Connection.send's ForkingPickler would hand torch tensors over as
    shared-memory handles, which the private root's read-only /dev/shm cannot hold (and need not)."""
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _same(a, b) -> bool:
    """Same types, dtypes, labels and values (NaN equal to NaN): the codec carried `b` faithfully."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    mod = type(a).__module__.split(".")[0]
    try:
        if mod == "pandas" and hasattr(a, "equals"):
            same = a.equals(b) and _same(getattr(a, "index", None), getattr(b, "index", None))
            if hasattr(a, "dtypes"):
                same = same and (list(a.dtypes) == list(b.dtypes) if hasattr(a.dtypes, "__iter__")
                                 else a.dtypes == b.dtypes)
            return bool(same) and _same(getattr(a, "columns", None), getattr(b, "columns", None))
        if mod == "numpy" and hasattr(a, "dtype"):
            import numpy as np

            if a.dtype != b.dtype or np.shape(a) != np.shape(b):
                return False
            return a.dtype == object and _same(list(np.ravel(a)), list(np.ravel(b))) or bool(
                np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
        return bool(a == b) or (a != a and b != b)
    except Exception:  # noqa: BLE001 - not comparable: not faithfully carried
        return False


def _made_files(d: str, cap: int = 64 * 2**20) -> dict[str, bytes]:
    """Files the record's own generate_test_case wrote into the checker's dir, for the solution's cwd (the
    official harness runs both in one dir). Trusted -> solution only: the checker never reads the solution's."""
    out, total = {}, 0
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if os.path.isfile(path) and not os.path.islink(path):
            total += os.path.getsize(path)
            if total > cap:
                break
            with open(path, "rb") as f:
                out[name] = f.read()
    return out


def _as_built(x) -> bytes | None:
    """A test input as codec bytes when they rebuild it faithfully, else None (it goes as pickle). Rebuilt
    frames are fresh constructions, as in the official harness: pandas 1.5 mutates an unpickled object block in
    `astype(str)` (records 112-114 fail through pickle and pass in-process)."""
    try:
        blob = _codec.encode(x)
        return blob if _same(_codec.decode(blob), x) else None
    except Exception:  # noqa: BLE001 - live objects (estimators, figures): pickle
        return None


def classes() -> dict[int, frozenset]:
    """Every class that exists now, with the ids of what its __dict__ holds: taken before the solution runs."""
    out: dict[int, frozenset] = {}
    todo = [object]
    while todo:
        c = todo.pop()
        if id(c) in out:
            continue
        try:
            out[id(c)] = frozenset(id(v) for v in vars(c).values())
        except TypeError:
            out[id(c)] = frozenset()
        try:
            todo.extend(type.__subclasses__(c))
        except TypeError:
            pass
    return out


def _real_code(f) -> bool:
    code = getattr(getattr(f, "__func__", f), "__code__", None)
    return code is None or (code.co_filename.startswith(_TRUSTED_FILES) and os.path.isfile(code.co_filename))


def _genuine_class(cls: type, before: dict, cache: dict) -> bool:
    """Existed before the solution ran (or is a library class it imported), and no method of it is the solution's."""
    if cls in cache:
        return cache[cls]
    ok = True
    for c in cls.__mro__:
        name = getattr(c, "__module__", "") or ""
        if id(c) not in before:  # created since: only a library's own class, reachable where it says it lives
            obj = sys.modules.get(name)
            for part in c.__qualname__.split("."):
                obj = getattr(obj, part, None)
            if obj is not c or name.split(".")[0] not in TRUSTED_LIBS:
                ok = False
        # a method added or replaced since (the snapshot lacks it) must come from a library file; methods the
        # library itself generated with exec (namedtuple-style result classes) were in the snapshot already
        old = before.get(id(c), frozenset())
        if ok and not all(id(v) in old or _real_code(v) for v in vars(c).values()):
            ok = False
        if not ok:
            break
    cache[cls] = ok
    return ok


def plain(x, before: dict, limit: int = 200_000) -> str | None:
    """None when everything reachable from `x` is plain data or genuine library objects, else what is not."""
    seen, todo, cache = set(), [x], {}
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        if len(seen) > limit:
            return f"more than {limit} objects to verify"
        seen.add(id(o))
        t = type(o)
        if t in _PLAIN:
            if t in (list, tuple, set, frozenset):
                todo.extend(o)
            elif t is dict:
                todo.extend(o.keys())
                todo.extend(o.values())
            continue
        if isinstance(o, (types.ModuleType, types.BuiltinFunctionType)) or t is type:
            continue
        if isinstance(o, types.FunctionType):
            if not _real_code(o):
                return f"a function defined by the solution ({o.__qualname__})"
            continue
        if not _genuine_class(t, before, cache):
            return f"an object of a class defined or modified by the solution ({t.__module__}.{t.__qualname__})"
        if getattr(t, "__module__", "").split(".")[0] == "numpy" and getattr(getattr(o, "dtype", None), "hasobject",
                                                                             False) and hasattr(o, "ravel"):
            todo.extend(o.ravel().tolist())
        d = getattr(o, "__dict__", None)
        if isinstance(d, dict) and not isinstance(o, type):
            todo.extend(d.values())
    return None
def inproc(msg: dict) -> dict:
    """Same-process DS-1000 check (Matplotlib and other live-object tests) with tamper detection."""
    watched = {}
    for mod, names in (("numpy.testing", ["assert_array_equal", "assert_allclose", "assert_equal",
                                          "assert_array_almost_equal", "assert_almost_equal"]),
                       ("numpy", ["allclose", "array_equal", "isclose", "testing"]),
                       ("pandas.testing", ["assert_frame_equal", "assert_series_equal", "assert_index_equal"]),
                       ("matplotlib.pyplot", ["savefig", "gca", "gcf"]), ("PIL.Image", ["open"]),
                       ("builtins", ["exec", "print", "isinstance", "open", "all", "any", "len"]),
                       ("os", ["_exit"]), ("sys", ["exit"])):
        try:
            m = __import__(mod, fromlist=["_"])
        except Exception:  # noqa: BLE001
            continue
        for n in names:
            if hasattr(m, n):
                watched[f"{mod}.{n}"] = (m, n, id(getattr(m, n)))
    ns: dict = {"__name__": "__ds1000__"}
    exec(msg["code_context"], ns)
    before = classes()
    png: dict = {}
    gen, check = ns.get("generate_test_case"), ns.get("exec_test")

    def gen_wrapped(i):
        r = gen(i)
        if os.path.exists("ans.png"):
            png["sha"] = hashlib.sha256(open("ans.png", "rb").read()).hexdigest()
        return r

    def check_wrapped(result, ans):
        if "sha" in png and (not os.path.exists("ans.png") or
                             hashlib.sha256(open("ans.png", "rb").read()).hexdigest() != png["sha"]):
            raise AssertionError("TAMPER: ans.png changed")
        bad = plain(result, before)
        if bad is not None:
            raise AssertionError(f"TAMPER: the result holds {bad}")
        return check(result, ans)

    if gen is not None and check is not None:
        ns["generate_test_case"], ns["exec_test"] = gen_wrapped, check_wrapped
    ns["test_execution"](msg["solution"])
    if "test_string" in ns:
        ns["test_string"](msg["solution"])
    changed = [k for k, (m, n, i) in watched.items() if id(getattr(m, n, None)) != i]
    return {"nonce": msg["nonce"], "passed": not changed, "tamper": changed}


def trusted(conn: Connection, task: dict, wfd: int) -> None:
    """The checker: generate cases, ship inputs to the spare, compare decoded results with exec_test here."""
    deadline = time.monotonic() + task["timeout_s"]
    out = {"status": "ok", "passed": False, "error": "", "path": "isolated"}
    try:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)
        os.dup2(null, 2)
        here = tempfile.mkdtemp(prefix="trusted-", dir=task["dir"])
        os.chdir(here)
        os.environ.update(TMPDIR=here, HOME=here)  # the private root's /tmp is read-only (torch caches there)
        tempfile.tempdir = None
        ctx, solution = task["code_context"], task["solution"]
        m = re.search(r"def test_execution\(solution: str\):\n"
                      r"    code = exec_context\.replace\(\"\[insert\]\", solution\)\n"
                      r"    for i in range\((\d+)\):\n", ctx)
        ns: dict = {"__name__": "__ds1000__"}
        try:
            exec(ctx, ns)
        except ImportError as e:  # the record's own imports: this environment lacks a library
            raise _Reply({"status": "env_error", "error": f"{type(e).__name__}: {e}"}) from None
        cases = []
        if m:
            cases = [ns["generate_test_case"](i + 1) for i in range(int(m.group(1)))]
            for _, exp in cases:
                try:
                    if not ns["exec_test"](_codec.decode(_codec.encode(exp)), exp):
                        raise ValueError
                except Exception:  # noqa: BLE001 - expected answer not representable: live-object path
                    m = None
                    break
        ship(conn, {"cpu_s": task["timeout_s"], "memory_mb": task["memory_mb"]})
        if m is None:
            out["path"] = "inproc"
            nonce = os.urandom(16).hex()
            ship(conn, {"kind": "inproc", "code_context": ctx, "solution": solution, "nonce": nonce})
            data = _answer(conn, deadline)
            rep = json.loads(data)
            out["passed"] = rep.get("nonce") == nonce and rep.get("passed") is True
            if rep.get("tamper"):
                out["status"], out["error"] = "tamper", f"changed: {rep['tamper']}"
        else:
            code = ns["exec_context"].replace("[insert]", solution)
            files = _made_files(here)  # e.g. record 993: generate_test_case saves the model the context loads
            for test_input, expected in cases:
                blob = _as_built(test_input)
                ship(conn, {"kind": "case", "code": code, "input": None if blob else test_input, "input_codec": blob,
                            "files": files})
                files = {}
                result = _codec.decode(_answer(conn, deadline))
                if not ns["exec_test"](result, expected):
                    raise AssertionError("exec_test returned a false value")
            if "test_string" in ns:
                ns["test_string"](solution)
            out["passed"] = True
    except _Reply as r:
        out.update(r.args[0])
        if "TAMPER:" in out["error"]:
            out["status"] = "tamper"
    except BaseException as e:  # noqa: BLE001 - a failing comparison is a verdict
        out["error"] = f"{type(e).__name__}: {e}"[-TAIL:]
        if "TAMPER" in str(e):
            out["status"] = "tamper"
    os.write(wfd, json.dumps(out).encode())


class _Reply(Exception):
    pass


def _answer(conn: Connection, deadline: float) -> bytes:
    if not conn.poll(max(0.0, deadline - time.monotonic())):
        raise _Reply({"status": "timeout", "error": "deadline"})
    try:
        data = conn.recv_bytes(256 * 2**20)
    except (EOFError, OSError) as e:
        raise _Reply({"status": "error", "error": f"solution process ended: {type(e).__name__}"}) from None
    if data[:1] == b"M":
        raise _Reply({"status": "oom", "error": "MemoryError"})
    if data[:1] == b"E":
        raise _Reply({"status": "error", "error": data[1:].decode(errors="replace")})
    return data[1:]



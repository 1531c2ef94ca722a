"""DS-1000 checking, run inside a zygote (lutra.execution._zygote): the trusted checker.

`trusted(conn, task, wfd)` is the checker, a child of the zygote that never runs solution code: it generates the
test cases (the reference runs here: `ans.png` is drawn here and never sent), sends each input to the solution's
process, decodes what comes back with the safe codec (lutra.execution._codec: data and allow-listed library
objects rebuilt here, never pickle) and calls the record's own `exec_test` itself, unchanged. For records whose
exec_test reads pyplot the solution's process returns its open figures and output.png's bytes (`figures_reply`),
which the checker installs into its own pyplot before exec_test runs. There is no same-process path: a record
whose expected answer does not survive the codec, or whose test_execution is not the official loop, is
`unverifiable` (passed None) and is never judged.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
import tempfile
import time
from multiprocessing.connection import Connection

from lutra.execution import _codec

TAIL = 4096


def ship(conn: Connection, obj) -> None:
    """Trusted -> solution: plain pickle. Connection.send's ForkingPickler would hand torch tensors over as
    shared-memory handles, which the private root's read-only /dev/shm cannot hold (and need not)."""
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _same(a, b) -> bool:
    """Same types, dtypes, labels and values (NaN equal to NaN): the codec carried `b` faithfully."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
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
        return blob if _codec.plain(blob) and _same(_codec.decode(blob), x) else None
    except Exception:  # noqa: BLE001 - live objects (estimators, figures): pickle
        return None


_LOOP = ("test_input, expected_result = generate_test_case(i + 1)\ntest_env = {'test_input': test_input}\n"
         "exec(code, test_env)")
"""The official loop's body before its assert (`assert exec_test(test_env['result'], expected_result)` in every
DS-1000 record; a bare comparison in some hand-made ones)."""
_OUTPUTS = ("ans.png", "output.png")
"""Files a record compares: `ans.png` is the checker's (drawn by the reference), never sent to the solution;
`output.png` comes back from the solution's process as bytes."""


def harness(ctx: str):
    """(cases, prefix, check) when the record's test_execution is the official loop, else None. `prefix`: the
    trusted statements before `code = exec_context.replace(...)` (Matplotlib's skip_plt_cmds filter, files the
    record writes), compiled as a function of the solution that returns the solution the loop inserts. `check`:
    the loop's final assert, compiled as `_lutra_check(test_input, expected_result, result)`, which the checker
    calls on the decoded result (test_env holds what the solution's `result` was)."""
    import ast

    try:
        tree = ast.parse(ctx)
    except SyntaxError:
        return None
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "test_execution"]
    if len(fn) != 1 or [a.arg for a in fn[0].args.args] != ["solution"]:
        return None
    body = fn[0].body
    at = [i for i, st in enumerate(body) if ast.unparse(st) == "code = exec_context.replace('[insert]', solution)"]
    if len(at) != 1 or len(body) != at[0] + 2 or not isinstance(body[-1], ast.For):
        return None
    loop = body[-1]
    try:
        n = int(ast.literal_eval(loop.iter.args[0]))
    except (AttributeError, IndexError, ValueError, TypeError):
        return None
    want = ast.parse(_LOOP).body
    if not (isinstance(loop.target, ast.Name) and loop.target.id == "i" and not loop.orelse
            and len(loop.body) == len(want) + 1 and isinstance(loop.body[-1], ast.Assert)
            and [ast.unparse(st) for st in loop.body[:-1]] == [ast.unparse(st) for st in want]):
        return None
    args = ast.parse("def _lutra_check(test_input, expected_result, result): pass").body[0]
    args.body = ast.parse("test_env = {'test_input': test_input, 'result': result}").body + [
        loop.body[-1], ast.Return(ast.Constant(True))]
    check = ast.fix_missing_locations(ast.Module(body=[args], type_ignores=[]))
    prefix = None
    if at[0]:
        f = ast.FunctionDef(name="_lutra_prefix", args=fn[0].args, body=body[:at[0]] + [
            ast.Return(ast.Name("solution", ast.Load()))], decorator_list=[], returns=None)
        prefix = ast.fix_missing_locations(ast.Module(body=[f], type_ignores=[]))
    return n, prefix, check


def _figures_wanted(ctx: str) -> bool:
    """exec_test reads pyplot's state or the saved images: the solution's figures come back to the checker."""
    return "matplotlib" in ctx and bool(re.search(r"\bplt\.|\.png\b|\bgc[af]\(", ctx))


def _install(rep) -> object:
    """Put the solution's figures (rebuilt by the codec as real Figures) into the checker's pyplot, as current as
    they were there, and its output.png into the checker's dir; returns the result."""
    import matplotlib.pyplot as plt
    from matplotlib import _pylab_helpers
    from matplotlib.figure import Figure

    plt.close("all")
    if os.path.lexists("output.png"):
        os.remove("output.png")
    if not isinstance(rep, dict) or set(rep) != {"result", "figs", "active", "png"}:
        raise AssertionError("the solution's process did not return its figures")
    figs, active, png = rep["figs"], rep["active"], rep["png"]
    if not isinstance(figs, list) or not all(type(f) is Figure for f in figs):
        raise AssertionError("the solution's figures are not matplotlib Figures")
    for f in figs:
        mgr = getattr(f.canvas, "manager", None)
        if mgr is None or mgr not in _pylab_helpers.Gcf.figs.values():
            nums = plt.get_fignums()
            mgr = plt._get_backend_mod().new_figure_manager_given_figure(max(nums) + 1 if nums else 1, f)
            _pylab_helpers.Gcf._set_new_active_manager(mgr)
    if type(active) is int and 0 <= active < len(figs):
        plt.figure(figs[active])
    if isinstance(png, bytes) and png.startswith(b"\x89PNG\r\n\x1a\n"):  # only a PNG reaches Pillow (by content
        with open("output.png", "wb") as fh:                            # it would open EPS through Ghostscript)
            fh.write(png)
    return rep["result"]


def _carried(exp, check, figures: bool) -> bool:
    """The expected answer survives the codec and the record's check (exec_test) accepts the carried copy."""
    if figures and exp is None:
        return True
    try:
        blob = _codec.encode(exp)
        copy = _codec.decode(blob, masked=figures)
        if _codec.plain(blob) and _same(copy, exp):  # plain data carried exactly (exec_test may compare it
            return True                              # with something else than the expected answer's form)
    except Exception:  # noqa: BLE001 - not representable: the record is unverifiable
        return False
    try:
        return bool(check(copy))
    except Exception:  # noqa: BLE001 - the carried copy is not what exec_test accepts: unverifiable
        return False


def trusted(conn: Connection, task: dict, wfd: int) -> None:
    """The checker: generate cases, ship inputs to the spare, compare decoded results with exec_test here.
    No solution code ever runs in this process; what the solution's process returns is data (the codec)."""
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
        ns: dict = {"__name__": "__ds1000__"}
        try:
            exec(ctx, ns)
        except ImportError as e:  # the record's own imports: this environment lacks a library
            raise _Reply({"status": "env_error", "error": f"{type(e).__name__}: {e}"}) from None
        h = harness(ctx)
        if h is None:
            raise _Reply(_UNVERIFIABLE | {"error": "test_execution is not the official harness loop"})
        n, prefix, check = h
        exec(compile(check, "<test_execution>", "exec"), ns)
        check = ns.pop("_lutra_check")
        inserted = solution
        if prefix is not None:
            exec(compile(prefix, "<test_execution>", "exec"), ns)
            inserted = ns.pop("_lutra_prefix")(solution)
        code = ns["exec_context"].replace("[insert]", inserted)
        figures = _figures_wanted(ctx)
        ship(conn, {"cpu_s": task["timeout_s"], "memory_mb": task["memory_mb"]})
        sent: dict[str, bytes] = {}
        for i in range(n):
            test_input, expected = ns["generate_test_case"](i + 1)
            if not _carried(expected, lambda copy, t=test_input, e=expected: check(t, e, copy), figures):
                raise _Reply(_UNVERIFIABLE | {"error": f"the expected answer ({type(expected).__module__}."
                                                       f"{type(expected).__qualname__}) does not cross the codec"})
            files = {k: v for k, v in _made_files(here).items() if k not in _OUTPUTS and sent.get(k) != v}
            sent.update(files)  # e.g. record 993: generate_test_case saves the model the context loads
            blob = _as_built(test_input)
            ship(conn, {"kind": "case", "code": code, "input": None if blob else test_input, "input_codec": blob,
                        "files": files, "figures": figures})
            result = _codec.decode(_answer(conn, deadline), masked=figures)
            if figures:
                result = _install(result)
            check(test_input, expected, result)  # the loop's own assert, here, on the decoded result
            if figures:
                import matplotlib.pyplot as plt

                plt.close("all")
        if "test_string" in ns:
            ns["test_string"](solution)
        out["passed"] = True
    except _Reply as r:
        out.update(r.args[0])
    except BaseException as e:  # noqa: BLE001 - a failing comparison is a verdict
        out["error"] = f"{type(e).__name__}: {e}"[-TAIL:]
    os.write(wfd, json.dumps(out).encode())


_UNVERIFIABLE = {"status": "unverifiable", "passed": None, "path": "unverifiable"}


def figures_reply(result) -> dict:
    """Solution side (the spare), for records whose exec_test reads pyplot: the result, every open pyplot figure
    (in pyplot's order), which one is current, and output.png's bytes. The checker trusts none of it."""
    out = {"result": result, "figs": [], "active": None, "png": None}
    if "matplotlib.pyplot" in sys.modules:
        from matplotlib import _pylab_helpers

        mgrs = _pylab_helpers.Gcf.get_all_fig_managers()
        cur = _pylab_helpers.Gcf.get_active()
        out["figs"] = [m.canvas.figure for m in mgrs]
        out["active"] = next((i for i, m in enumerate(mgrs) if m is cur), None)
    if os.path.isfile("output.png") and os.path.getsize("output.png") <= 64 * 2**20:
        with open("output.png", "rb") as f:
            out["png"] = f.read()
    return out


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



"""DS-1000 verdicts a solution cannot forge: no verdict is computed where solution code ran.

Each attack is a wrong solution with a trick appended: the test first checks that the solution is wrong without
its trick, then that the trick does not make it pass. The five kinds an attacker who reads lutra's source tried
against the old same-process path (a report forged on the answer socket with the nonce read from frames, the
expected answer read from a caller's frame, a trace function jumping past exec_test's asserts, a library method
swapped in place, a method added to a library base class whose code claims a library file), each against a
Matplotlib figure, a scipy.sparse matrix and a fitted estimator, and others: crafted codec bytes naming refused
classes, planted classes, masked arrays, a forged ans.png. The records are self-contained, in the official
format; the figure ones run in this interpreter, the scipy / sklearn ones in the DS-1000 environment
(LUTRA_DS1000_PYTHON or this interpreter when it has them), skipped with a reason otherwise.
"""

import json
import os
import subprocess
import sys

import pytest

from lutra.execution import python as P

DS_PYTHON = os.environ.get("LUTRA_DS1000_PYTHON", "/work/ds1000-venv/bin/python")


def _has(python: str, mods: str) -> bool:
    try:
        return subprocess.run([python, "-c", f"import {mods}"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_SCI = next((p for p in (DS_PYTHON, sys.executable) if os.path.exists(p) and _has(p, "scipy, sklearn, matplotlib")),
            None)
SCI = P.Setup(interpreter=_SCI) if _SCI else None
HERE = SCI or P.Setup()
"""Figure and array records run where the scipy ones do (one pool), else in this interpreter."""
needs_sci = pytest.mark.skipif(SCI is None, reason="needs scipy + scikit-learn (the ds1000 extra): set "
                               "LUTRA_DS1000_PYTHON to the DS-1000 environment's python")
needs_mpl = pytest.mark.skipif(not _has(sys.executable, "matplotlib, PIL"), reason="matplotlib / Pillow absent")

_HARNESS = '''

def test_execution(solution: str):
    {filt}code = exec_context.replace("[insert]", solution)
    for i in range({n}):
        test_input, expected_result = generate_test_case(i + 1)
        test_env = {{"test_input": test_input}}
        exec(code, test_env)
        assert exec_test(test_env["result"], expected_result)
'''

FIGURE = r'''
import numpy as np
import matplotlib.pyplot as plt
from PIL import Image


def skip_plt_cmds(l):
    return all(p not in l for p in ["plt.show()", "plt.clf()", "plt.close()", "savefig"])


def generate_test_case(test_case_id):
    x = np.arange(10)
    y = np.arange(10) ** 2
    plt.plot(x, y, "+", mew=7, ms=20)
    plt.title("squares")
    plt.savefig("ans.png", bbox_inches="tight")
    plt.close()
    return None, None


def exec_test(result, ans):
    code_img = np.array(Image.open("output.png"))
    oracle_img = np.array(Image.open("ans.png"))
    sample_image_stat = code_img.shape == oracle_img.shape and np.allclose(code_img, oracle_img)
    if not sample_image_stat:
        ax = plt.gca()
        assert len(ax.lines) == 1
        assert ax.lines[0].get_markeredgewidth() == 7
        np.testing.assert_array_equal(ax.lines[0].get_ydata(), np.arange(10) ** 2)
        assert ax.get_title() == "squares"
    return 1


exec_context = r"""
import numpy as np
import matplotlib.pyplot as plt
x = np.arange(10)
y = np.arange(10) ** 2
[insert]
plt.savefig('output.png', bbox_inches ='tight')
result = None
"""
''' + _HARNESS.format(filt='solution = "\\n".join(filter(skip_plt_cmds, solution.split("\\n")))\n    ', n=1)

SPARSE = r'''
import numpy as np
from scipy import sparse


def generate_test_case(test_case_id):
    M = sparse.random(6, 6, density=0.4, format="csr", random_state=test_case_id)
    return M, (M + M.T).tocsr()


def exec_test(result, ans):
    assert type(result) == sparse.csr_matrix
    assert len(sparse.find(result != ans)[0]) == 0
    return 1


exec_context = r"""
import numpy as np
from scipy import sparse
M = test_input
[insert]
"""
''' + _HARNESS.format(filt="", n=2)

ESTIMATOR = r'''
import numpy as np
from sklearn.linear_model import LinearRegression


def generate_test_case(test_case_id):
    X = np.arange(10.0).reshape(-1, 1)
    y = 2 * X.ravel() + 1
    return (X, y), LinearRegression().fit(X, y)


def exec_test(result, ans):
    assert result.coef_[0] == ans.coef_[0]
    assert result.intercept_ == ans.intercept_
    return 1


exec_context = r"""
import numpy as np
from sklearn.linear_model import LinearRegression
X, y = test_input
[insert]
"""
''' + _HARNESS.format(filt="", n=1)

ARRAY = r'''
import numpy as np


def generate_test_case(test_case_id):
    a = np.arange(12.0).reshape(3, 4) + test_case_id
    return a, a * 2


def exec_test(result, ans):
    np.testing.assert_array_equal(result, ans)
    return 1


exec_context = r"""
import numpy as np
a = test_input
[insert]
"""
''' + _HARNESS.format(filt="", n=2)

RECORDS = {  # context, reference, a wrong solution, the setup it runs under
    "figure": (FIGURE, 'plt.plot(x, y, "+", mew=7, ms=20)\nplt.title("squares")',
               'plt.plot(x, y, "+", mew=3, ms=20)\nplt.title("squares")', HERE),
    "sparse": (SPARSE, "result = (M + M.T).tocsr()", "result = M.tocsr()", SCI),
    "estimator": (ESTIMATOR, "result = LinearRegression().fit(X, y)",
                  "result = LinearRegression(fit_intercept=False).fit(X, y)", SCI),
    "array": (ARRAY, "result = a * 2", "result = a * 3", HERE),
}

_SEND = "import os as _os, struct as _st\ndef _send(p):\n    _os.write(3, _st.pack('!i', len(p)) + p)\n"
_FAKE_FILE = ("import types as _ty, numpy as _np\n"
              "def _libfn(f):\n"  # a function whose code object claims to live in numpy's own file
              "    return _ty.FunctionType(f.__code__.replace(co_filename=_np.__file__), f.__globals__, f.__name__)\n")
_EQ = "class _Eq:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n" \
      "    def __getitem__(self, i): return self\n    def __bool__(self): return True\n"

# kind 1: a passing report written straight onto the answer socket, the nonce taken from frames up the stack
K1 = _SEND + '''import sys as _s, json as _j
_n = None
_f = _s._getframe()
while _f is not None:
    for _d in (_f.f_locals, _f.f_globals):
        for _k in ("nonce", "msg", "task"):
            _v = _d.get(_k)
            _v = _v.get("nonce") if isinstance(_v, dict) else _v
            if isinstance(_v, str):
                _n = _v
    _f = _f.f_back
_send(b"R" + _j.dumps({"nonce": _n, "passed": True, "tamper": []}).encode())
_os._exit(0)
'''
# kind 2: the expected answer read from a caller's frame (or anywhere in memory) and returned as the result
K2 = '''import sys as _s, gc as _gc
_f = _s._getframe()
while _f is not None:
    for _k in ("expected_result", "expected", "ans", "exp"):
        if _f.f_locals.get(_k) is not None:
            result = _f.f_locals[_k]
    _f = _f.f_back
for _o in _gc.get_objects():
    if type(_o).__name__ in ("LinearRegression", "csr_matrix") and _o is not globals().get("result"):
        if getattr(_o, "intercept_", None) == 1.0 or (getattr(_o, "shape", None) == (6, 6) and _o is not M):
            result = _o
'''
# kind 3: a trace function that makes exec_test jump to its last line (return 1), past every assert
K3 = '''import sys as _s, threading as _th
def _tr(frame, event, arg):
    if frame.f_code.co_name != "exec_test":
        return _tr
    last = max(l for _, _, l in frame.f_code.co_lines() if l)
    def _line(fr, ev, a):
        if ev == "line" and fr.f_lineno != last:
            try:
                fr.f_lineno = last
            except ValueError:
                pass
        return _line
    return _line
_s.settrace(_tr)
_th.settrace(_tr)
_s.setprofile(lambda *a: None)
'''
# kind 4: library functions / methods swapped in place (identity kept, __code__ replaced; unwatched classes)
K4 = {
    "figure": '''import matplotlib.lines as _ml, numpy as _np, PIL.Image as _im
_ml.Line2D.get_markeredgewidth = lambda self: 7
_np.testing.assert_array_equal.__code__ = (lambda *a, **k: None).__code__
_np.allclose.__code__ = (lambda *a, **k: True).__code__
''',
    "sparse": '''from scipy import sparse as _sp
_sp.find.__code__ = (lambda A: ([], [], [])).__code__
_sp.csr_matrix.__ne__ = lambda s, o: _sp.csr_matrix(s.shape)
''',
    "estimator": '''from sklearn.linear_model import LinearRegression as _LR
_LR.intercept_ = property(lambda s: 1.0, lambda s, v: None)
_LR.fit.__code__ = (lambda self, X, y, sample_weight=None: self).__code__
''',
    "array": '''import numpy as _np
_np.testing.assert_array_equal.__code__ = (lambda *a, **k: None).__code__
''',
}
# kind 5: a method added to a library base class, its code object claiming a library file as co_filename
K5 = {
    "figure": _FAKE_FILE + '''import matplotlib.artist as _a, matplotlib.axes as _ax
_a.Artist.get_markeredgewidth = _libfn(lambda self: 7)
_ax.Axes.get_title = _libfn(lambda self, loc="center": "squares")
''',
    "sparse": _FAKE_FILE + '''from scipy.sparse import _base
_base._spbase.__ne__ = _libfn(lambda s, o: type(s)(s.shape))
''',
    "estimator": _FAKE_FILE + _EQ + '''import sklearn.base as _b
_b.BaseEstimator.__getattribute__ = _libfn(
    lambda s, n: _Eq() if n in ("coef_", "intercept_") else object.__getattribute__(s, n))
''',
    "array": _FAKE_FILE + '''import numpy as _np
_np.testing.assert_array_equal = _libfn(lambda *a, **k: None)
''',
}


def _graph(table, root=None):
    return json.dumps({"$": "g", "t": table, "o": list(range(len(table))), "v": [0] if root is None else root})


def _crafted(table) -> str:
    """A result forged as codec bytes by hand, sent before the spare could send its own."""
    return _SEND + f"_send(b'R' + {_graph(table)!r}.encode())\n_os._exit(0)\n"


OTHERS = [  # (record, name, trick)
    ("array", "a fully masked array (passes np.testing's asserts)", "result = np.ma.masked_array(result, mask=True)"),
    ("array", "np.matrix subclass", "result = np.asmatrix(result)"),
    ("array", "a class planted in numpy", _EQ + "import numpy\n_Eq.__module__ = 'numpy'\n_Eq.__qualname__ = "
     "'_Eq'\nnumpy._Eq = _Eq\nresult = _Eq()"),
    ("array", "a planted class named like ndarray", _EQ + "import numpy\n_Eq.__module__ = 'numpy'\n"
     "_Eq.__qualname__ = 'ndarray'\nresult = _Eq()"),
    ("array", "rebind np.testing in the solution", "np.testing.assert_array_equal = lambda *a, **k: None"),
    ("array", "crafted bytes: an object of a refused module",
     _crafted([{"$": "obj", "c": ["numpy.lib.npyio", "NpzFile"], "s": {"$": "r"}}])),
    ("array", "crafted bytes: a testing helper class",
     _crafted([{"$": "obj", "c": ["numpy.testing._private.utils", "IgnoreException"]}])),
    ("array", "crafted bytes: os.system as a function", _crafted([{"$": "fn", "c": ["os", "system"]}])),
    ("array", "crafted bytes: a method named __class__",
     _crafted([{"$": "meth", "self": [1], "name": "__class__"}, {"$": "list", "v": []}])),
    ("array", "crafted bytes: a reference to an unbuilt object",
     _crafted([{"$": "tuple", "v": [[1]]}, {"$": "tuple", "v": [[0]]}])),
    ("array", "crafted bytes: a defaultdict whose factory is a library class",
     _crafted([{"$": "coll", "k": "defaultdict", "v": [], "f": [1]},
               {"$": "type", "c": ["numpy.lib.npyio", "DataSource"]}])),
    ("array", "pickle bytes on the socket", _SEND + "import pickle\n_send(b'R' + pickle.dumps(a * 2))\n_os._exit(0)"),
    ("sparse", "a subclass with an always-empty difference",
     "class _C(sparse.csr_matrix):\n    def __ne__(self, o): return sparse.csr_matrix(self.shape)\n"
     "result = _C(result)"),
    ("sparse", "os._exit(0) after a wrong answer", "import os\nos._exit(0)"),
    ("estimator", "a genuine estimator holding always-equal objects", _EQ + "result.coef_ = _Eq()\n"
     "result.intercept_ = _Eq()"),
    ("estimator", "an object array of always-equal objects", _EQ + "result.coef_ = np.array([_Eq()], dtype=object)"),
    ("figure", "ans.png forged next to output.png", "import matplotlib.pyplot as _p\n"
     "getattr(_p, 'save' + 'fig')('output.png', bbox_inches='tight')\n"
     "import shutil\nshutil.copy('output.png', 'ans.png')"),
    ("figure", "a forged reply without figures", _SEND + "from lutra.execution import _codec\n"
     "_send(b'R' + _codec.encode({'result': None, 'figs': [], 'active': None, 'png': None}))\n_os._exit(0)"),
    ("figure", "output.png replaced by another image format (Pillow would run Ghostscript on EPS)",
     "import matplotlib.pyplot as _p\nsetattr(_p, 'save' + 'fig', lambda *a, **k: None)\nopen('output.png', 'wb').write("
     "b'%!PS-Adobe-3.0 EPSF-3.0\\n%%BoundingBox: 0 0 10 10\\nshowpage\\n')"),
    ("figure", "the line's data swapped for the expected one after savefig",
     "import matplotlib.pyplot as _p\n_l = _p.gca().lines[0]\n_l.__dict__['_markeredgewidth'] = 7\n"
     "_l.__class__ = type('L', (type(_l),), {})"),
]

ATTACKS = ([(rec, f"kind 1: forged report with the nonce from frames ({rec})", K1) for rec in RECORDS]
           + [(rec, f"kind 2: expected answer from a caller's frame ({rec})", K2) for rec in RECORDS]
           + [(rec, f"kind 3: trace function jumping past the asserts ({rec})", K3) for rec in RECORDS]
           + [(rec, f"kind 4: library method swapped in place ({rec})", K4[rec]) for rec in RECORDS]
           + [(rec, f"kind 5: method added to a base class with a library co_filename ({rec})", K5[rec])
              for rec in RECORDS]
           + OTHERS)


def _run(rec: str, solution: str):
    ctx, _, _, setup = RECORDS[rec]
    if setup is None:
        pytest.skip("needs scipy + scikit-learn (the ds1000 extra): set LUTRA_DS1000_PYTHON")
    return P.run_ds1000(ctx, solution, timeout_s=60, setup=setup)


@pytest.mark.parametrize("rec", list(RECORDS))
def test_reference_passes_isolated(rec):
    if rec in ("sparse", "estimator") and SCI is None:
        pytest.skip("needs scipy + scikit-learn (the ds1000 extra): set LUTRA_DS1000_PYTHON")
    r = _run(rec, RECORDS[rec][1])
    assert r.passed is True and r.status == "ok" and r.path == "isolated", r


def test_at_least_thirty_attacks_across_the_five_kinds():
    assert len(ATTACKS) >= 30 and all(any(f"kind {k}:" in a[1] for a in ATTACKS) for k in range(1, 6))


@pytest.mark.parametrize("rec, name, trick", ATTACKS, ids=[a[1] for a in ATTACKS])
def test_attack_is_scored_wrong(rec, name, trick):
    if rec in ("sparse", "estimator") and SCI is None:
        pytest.skip("needs scipy + scikit-learn (the ds1000 extra): set LUTRA_DS1000_PYTHON")
    wrong = RECORDS[rec][2]
    base = _run(rec, wrong)
    assert base.passed is False and base.path == "isolated", ("wrong without its trick", base)
    r = _run(rec, wrong + "\n" + trick)
    assert r.passed is not True, (name, r)
    assert r.path == "isolated", (name, r)


@needs_mpl
def test_figure_reference_passes_in_this_interpreter():
    """This interpreter's matplotlib (not the DS-1000 pins): a figure crosses here too."""
    r = P.run_ds1000(FIGURE, RECORDS["figure"][1], timeout_s=60)
    assert r.passed is True and r.path == "isolated", r
    assert P.run_ds1000(FIGURE, RECORDS["figure"][2], timeout_s=60).passed is False


@needs_mpl
def test_ans_png_is_never_visible_to_the_solution():
    sol = RECORDS["figure"][1] + "\nimport os\nassert not os.path.exists('ans.png'), 'ans.png is visible'"
    r = _run("figure", sol)
    assert r.passed is True, r


@needs_mpl
def test_tampering_with_a_correct_figure_is_powerless_not_flagged():
    """What the same-process path had to flag as `tamper` (a rebound np.testing, an extra save of ans.png) cannot
    change a verdict any more: a correct figure still passes, a wrong one still fails."""
    ok, wrong = RECORDS["figure"][1], RECORDS["figure"][2]
    for trick in ("import matplotlib.pyplot as _p\ngetattr(_p, 'save' + 'fig')('ans.png')",
                  "import numpy\nnumpy.testing.assert_allclose = lambda *a, **k: None"):
        assert _run("figure", ok + "\n" + trick).passed is True
        assert _run("figure", wrong + "\n" + trick).passed is False


UNCARRIED = ARRAY.replace("    return a, a * 2\n", "    return a, (v for v in a * 2)\n").replace(
    "    np.testing.assert_array_equal(result, ans)\n", "    np.testing.assert_array_equal(result, np.array(list(ans)))\n")
OTHER_LOOP = ARRAY.replace("    for i in range(2):\n", "    for i in [0, 1]:\n")


@pytest.mark.parametrize("ctx, why", [(UNCARRIED, "does not cross the codec"), (OTHER_LOOP, "harness loop")],
                         ids=["expected answer the codec cannot carry", "not the official loop"])
def test_a_record_that_cannot_be_carried_is_unverifiable_and_never_judged(ctx, why):
    from lutra.benchmarks import Problem
    from lutra.config import BenchmarkConfig
    from lutra.execution import judge
    from lutra.pairs import build_pairs

    assert ctx not in (ARRAY,)
    for sol in ("result = a * 2", "result = a * 3", K1):  # right, wrong, forged: none is judged
        r = P.run_ds1000(ctx, sol, timeout_s=60, setup=HERE)
        assert r.status == "unverifiable" and r.passed is None and r.path == "unverifiable", r
        assert why in r.error
    cfg = BenchmarkConfig(name="ds1000", executor="python", timeout_s=60.0, workers=1,
                          options={"python": HERE.interpreter} if HERE.interpreter else {})
    p = Problem(id="u", question="", context="", gold="result = a * 2", language="python", test_context=ctx)
    v = judge([(p, "result = a * 2"), (p, "result = a * 3")], cfg, progress=False)
    assert [(x.status, x.correct) for x in v] == [("unverifiable", None)] * 2
    assert P.last_stats["unverifiable"] == 2
    samples = [{"problem_id": "u", "text": t, "correct": x.correct} for t, x in zip(("a", "b"), v)]
    pairs, stats = build_pairs(samples, {"u": p}, pairs_per_problem=4, gold_as_chosen=True, seed=0, round_idx=0)
    assert pairs == [] and stats["unknown_gold"] == 1

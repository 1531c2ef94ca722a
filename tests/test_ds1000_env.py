"""DS-1000 environment handling: a missing library is `env_error` (correct=None), never a wrong label; only codec
data crosses from a solution to the checker (live library objects rebuilt there, never the solution's classes);
the environment check names the extra to install; and (when ../shared/data and the documented environment exist)
references pass per library.
"""

import gzip
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from lutra.benchmarks import BenchmarkError, Problem, ds1000
from lutra.config import BenchmarkConfig
from lutra.execution import judge
from lutra.execution import python as P

DS1000 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ds1000" / "data" / "ds1000.jsonl.gz"
if not DS1000.exists():
    DS1000 = Path("/work/shared/data/ds1000/data/ds1000.jsonl.gz")
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="scikit-learn not installed (the ds1000 extra)")
DS_PYTHON = os.environ.get("LUTRA_DS1000_PYTHON", "/work/ds1000-venv/bin/python")

# A record in the official format whose expected answer is a fitted estimator: the codec carries it as a live
# sklearn object (its class found in the checker, its state set the way pickle would), so exec_test runs in the
# checker on a real estimator and nothing of the solution's classes or methods comes with it.
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


def test_execution(solution: str):
    code = exec_context.replace("[insert]", solution)
    for i in range(1):
        test_input, expected_result = generate_test_case(i + 1)
        test_env = {"test_input": test_input}
        exec(code, test_env)
        assert exec_test(test_env["result"], expected_result)
'''

EQ = "class Eq:\n    def __eq__(self, o):\n        return True\n    def __getitem__(self, i):\n        return self\n"
FAKES = [
    ("a class of its own", EQ + "class Fake:\n    pass\nresult = Fake()\nresult.coef_ = Eq()\nresult.intercept_ = Eq()"),
    ("a genuine estimator holding fakes", EQ + "result = LinearRegression()\nresult.coef_ = Eq()\nresult.intercept_ = Eq()"),
    ("a subclass", EQ + "class L(LinearRegression):\n    pass\nresult = L()\nresult.coef_ = Eq()\nresult.intercept_ = Eq()"),
    ("a class planted in numpy", EQ + "Eq.__module__ = 'numpy'\nnp.Eq = Eq\nresult = LinearRegression()\n"
     "result.coef_ = Eq()\nresult.intercept_ = Eq()"),
    ("an object array of fakes", EQ + "result = LinearRegression()\nresult.coef_ = np.array([Eq()], dtype=object)\n"
     "result.intercept_ = Eq()"),
    ("a patched method of a genuine class", "LinearRegression.__eq__ = lambda s, o: True\n"
     "result = LinearRegression()\nresult.coef_ = np.array([2.0]); result.intercept_ = 99.0"),
]


@needs_sklearn
def test_genuine_estimator_passes_isolated():
    r = P.run_ds1000(ESTIMATOR, "result = LinearRegression().fit(X, y)", timeout_s=60)
    assert r.passed is True and r.path == "isolated", r


@needs_sklearn
@pytest.mark.parametrize("name, sol", FAKES, ids=[f[0] for f in FAKES])
def test_fake_objects_never_reach_a_passing_check(name, sol):
    """Once `tamper` on the same-process path; now the fakes cannot cross (the solution's classes are not
    library classes, a patched method stays in the solution's process) and the check runs in the checker."""
    r = P.run_ds1000(ESTIMATOR, sol, timeout_s=60)
    assert r.passed is False and r.path == "isolated", (name, r)


def _problem(context: str) -> Problem:
    return Problem(id="x", question="", context="", gold="", language="python", test_context=context)


CONTEXT_TF = ESTIMATOR.replace("import numpy as np\nfrom sklearn", "import numpy as np\nimport tensorflow\nfrom sklearn", 1)


@needs_sklearn
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="tensorflow is installed here")
def test_missing_library_in_the_record_is_env_error():
    cfg = BenchmarkConfig(name="ds1000", executor="python", timeout_s=60.0, workers=1)
    [v] = judge([(_problem(CONTEXT_TF), "result = LinearRegression().fit(X, y)")], cfg, progress=False)
    assert v.status == "env_error" and v.correct is None and "tensorflow" in v.error, v


@needs_sklearn
@pytest.mark.skipif(importlib.util.find_spec("xgboost") is not None, reason="xgboost is installed here")
def test_missing_library_in_the_solution():
    cfg = BenchmarkConfig(name="ds1000", executor="python", timeout_s=60.0, workers=1)
    items = [(_problem(ESTIMATOR), "import xgboost\nresult = None"),  # a DS-1000 library, absent: unknown
             (_problem(ESTIMATOR), "import sklearn.no_such_module\nresult = None"),  # the program's own fault
             (_problem(ESTIMATOR), "import surely_not_a_library\nresult = None")]
    v = judge(items, cfg, progress=False)
    assert (v[0].status, v[0].correct) == ("env_error", None), v[0]
    assert v[1].correct is False and v[1].status != "env_error", v[1]
    assert v[2].correct is False and v[2].status != "env_error", v[2]


def test_environment_check_names_the_extra(tmp_path):
    bare = Path(sys.base_prefix) / "bin" / "python3"
    cfg = BenchmarkConfig(name="ds1000", executor="python", options={"python": str(bare)})
    if ds1000.environment(cfg).get("pandas") is not None:
        pytest.skip(f"{bare} has pandas: no bare interpreter to test with")
    with pytest.raises(BenchmarkError, match=r"lutra\[ds1000\]"):
        ds1000.check_environment(cfg)


def test_datasets_dir_under_tmp_is_refused():
    with pytest.raises(ValueError, match="datasets_dir"):
        P.Setup.from_options({"datasets_dir": "/tmp/somewhere"})


@pytest.mark.skipif(not (DS1000.exists() and os.path.exists(DS_PYTHON)),
                    reason="needs ../shared/data/ds1000 and the documented DS-1000 environment (LUTRA_DS1000_PYTHON)")
def test_references_pass_in_the_documented_environment():
    """Two references per library (the full run is `python -m lutra.prepare benchmark=ds1000`)."""
    recs = [json.loads(line) for line in gzip.open(DS1000, "rt")]
    picked, seen = [], {}
    for r in recs:
        lib = r["metadata"]["library"]
        if seen.get(lib, 0) < 2 and r["metadata"]["problem_id"] not in (519, 539, 565, 566, 567, 577, 598, 624, 629,
                                                                          650, 654, 655, 656, 661, 819):
            seen[lib] = seen.get(lib, 0) + 1
            picked.append(r)
    cfg = BenchmarkConfig(name="ds1000", executor="python", timeout_s=120.0, workers=2,
                          options={"python": DS_PYTHON})
    assert ds1000.check_environment(cfg) == []
    items = [(Problem(id=str(r["metadata"]["problem_id"]), question="", context="", gold=r["reference_code"],
                      language="python", test_context=r["code_context"]), r["reference_code"]) for r in picked]
    v = judge(items, cfg, progress=False)
    assert [x.correct for x in v] == [True] * len(items), [(p.id, x.status, x.error[-200:])
                                                          for (p, _), x in zip(items, v) if not x.correct]

"""The safe codec (lutra/execution/_codec.py) on its own: what the checker rebuilds, and what it refuses to
decode whatever bytes a solution sends (no import, no pickle, no call of anything the data names beyond the
pickle protocol steps of allow-listed library classes)."""

import json
import sys

import numpy as np
import pandas as pd
import pytest

from lutra.execution import _codec as C


def rt(x, **kw):
    return C.decode(C.encode(x), **kw)


def graph(table, root=None):
    """Hand-made codec bytes; entries are built last first (an entry may refer to any later one)."""
    return json.dumps({"$": "g", "t": table, "o": list(range(len(table)))[::-1],
                       "v": [0] if root is None else root}).encode()


def test_plain_data_and_shared_references_round_trip():
    a = np.arange(6.0).reshape(2, 3)
    shared = [1, 2]
    x = {"a": a, "b": (a, shared, shared), "c": {1, 2}, "d": 2**80, "e": float("nan"), "f": b"\x00", "g": None,
         "h": np.float32(1.5), "i": np.dtype("<M8[ns]"), "j": slice(1, None, 2), "k": np.float64}
    y = rt(x)
    assert y["b"][0] is y["a"] and y["b"][1] is y["b"][2] and y["b"][1] == [1, 2]
    np.testing.assert_array_equal(y["a"], a)
    assert y["d"] == 2**80 and y["e"] != y["e"] and y["f"] == b"\x00" and y["j"] == slice(1, None, 2)
    assert type(y["h"]) is np.float32 and y["i"] == np.dtype("<M8[ns]") and y["k"] is np.float64
    cyc = []
    cyc.append(cyc)
    z = rt(cyc)
    assert z[0] is z


def test_pandas_kinds_round_trip():
    idx = pd.CategoricalIndex(pd.cut([1, 5, 9], [0, 4, 8, 12]))
    df = pd.DataFrame({"x": [1, 2, 3]}, index=idx)
    y = rt(df)
    assert y.index.equals(df.index) and y.equals(df)
    for v in (pd.period_range("2020-01", periods=3, freq="M"), pd.Period("2021-03", freq="M"), pd.NA,
              pd.offsets.Day(2), pd.timedelta_range("1 day", periods=2)):
        w = rt(v)
        assert (w is pd.NA) if v is pd.NA else (w == v if not hasattr(v, "equals") else w.equals(v))


def test_a_figure_crosses_as_a_real_figure():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [4, 5, 6], "r--", label="a")
    ax.bar(["x", "y"], [1, 2])
    ax.imshow(np.ma.masked_invalid([[1.0, np.nan]]))
    ax.legend()
    ax.set_title("t")
    fig.canvas.draw()
    blob = C.encode(fig)
    plt.close("all")
    with pytest.raises(ValueError, match="masked"):  # an image's data is a masked array: only in figures
        C.decode(blob)
    f2 = C.decode(blob, masked=True)
    assert type(f2) is Figure
    a2 = f2.axes[0]
    assert a2.get_title() == "t" and list(a2.lines[0].get_ydata()) == [4, 5, 6] and a2.lines[0].get_color() == "r"
    assert [t.get_text() for t in a2.get_legend().get_texts()] == ["a"]
    assert [t.get_text() for t in a2.get_xticklabels()][:2] == ["x", "y"]
    f2.canvas.draw()  # a working figure, not a description of one
    plt.close("all")


def test_the_solutions_functions_never_cross():
    x = {"f": lambda v: v, "g": np.mean, "h": len}
    y = rt(x)
    assert y["f"] is None and y["g"] is np.mean and y["h"] is None


def test_the_solutions_classes_do_not_encode():
    class Eq:
        def __eq__(self, o):
            return True

    with pytest.raises(C.Unencodable):
        C.encode(Eq())
    Eq.__module__, Eq.__qualname__ = "numpy", "Eq"
    np.Eq = Eq
    try:
        blob = C.encode(Eq())
    finally:
        del np.Eq
    with pytest.raises(ValueError):  # looked up in the decoder's numpy, where it does not exist
        C.decode(blob)


def test_a_fully_masked_array_is_refused_outside_figures():
    blob = C.encode(np.ma.masked_all(3))
    with pytest.raises(ValueError, match="masked"):
        C.decode(blob)


@pytest.mark.parametrize("table, why", [
    ([{"$": "obj", "c": ["numpy.lib.npyio", "NpzFile"]}], "allow-listed"),
    ([{"$": "obj", "c": ["numpy.testing._private.utils", "IgnoreException"]}], "allow-listed"),
    ([{"$": "obj", "c": ["os", "PathLike"]}], "allow-listed"),
    ([{"$": "fn", "c": ["os", "system"]}], "allow-listed"),
    ([{"$": "fn", "c": ["builtins", "eval"]}], "does not cross"),
    ([{"$": "type", "c": ["numpy", "__class__"]}], "bad name"),
    ([{"$": "type", "c": ["numpy", "<locals>.X"]}], "allow-listed"),
    ([{"$": "type", "c": ["numpy", "ndarray.__base__"]}], "bad name"),
    ([{"$": "type", "c": ["numpy", "int_"]}], "not a library type"),  # an alias: it lives as numpy.int64
    ([{"$": "meth", "self": [1], "name": "__class__"}, {"$": "list", "v": []}], "plain method"),
    ([{"$": "meth", "self": [1], "name": "T"}, {"$": "nd", "dtype": "<f8", "shape": [0], "b64": ""}], "plain method"),
    ([{"$": "coll", "k": "defaultdict", "v": [], "f": [1]}, {"$": "type", "c": ["numpy", "ndarray"]}], "factory"),
    ([{"$": "tuple", "v": [[1]]}, {"$": "tuple", "v": [[0]]}], "not built"),  # a cycle through tuples
    ([{"$": "nd", "dtype": "|O", "shape": [1], "b64": "AAAAAAAAAAA="}], "object"),
    ([{"$": "nd", "dtype": [["a", "|O"]], "shape": [1], "b64": "AAAAAAAAAAA="}], "object"),
    ([{"$": "obj", "c": ["numpy", "ndarray"], "a": [1]}], "non-tuple"),
    ([{"$": "enum", "c": ["numpy", "ndarray"], "name": "x"}], "not an enum"),
    ([{"$": "pickle", "v": "gASVAAAA"}], "unknown tag"),
])
def test_crafted_bytes_are_refused(table, why):
    before = set(sys.modules)
    with pytest.raises((ValueError, KeyError, TypeError), match=why):
        C.decode(graph(table))
    assert set(sys.modules) == before  # nothing imported


def test_decoding_never_imports_a_module():
    name = "numpy.polynomial.hermite_e" if "numpy.polynomial.hermite_e" not in sys.modules else "numpy.f2py"
    mod = name.split(".")
    before = set(sys.modules)
    with pytest.raises(ValueError):
        C.decode(graph([{"$": "type", "c": [name, "HermiteE"]}]))
    with pytest.raises(ValueError):  # a lazy module __getattr__ (numpy, scipy, sklearn have them) never runs
        C.decode(graph([{"$": "type", "c": [mod[0], "polynomial.hermite_e.HermiteE"]}]))
    assert set(sys.modules) == before


def test_sparse_and_estimator_round_trip():
    sp = pytest.importorskip("scipy.sparse")
    m = sp.random(5, 4, density=0.4, format="csr", random_state=0)
    for x in (m, m.tolil(), m.todok(), m.tocoo(), m.tocsc()):
        y = rt(x)
        assert type(y) is type(x) and (y != x).nnz == 0
    lm = pytest.importorskip("sklearn.linear_model")
    est = lm.LinearRegression().fit(np.arange(6.0).reshape(-1, 1), np.arange(6.0) * 3 + 2)
    y = rt(est)
    assert type(y) is lm.LinearRegression and y.predict([[10.0]])[0] == pytest.approx(32.0)
    stats = pytest.importorskip("scipy.stats")
    r = stats.ks_2samp([1.0, 2, 3, 4], [1.5, 2.5, 3.5, 9])
    y = rt(r)
    assert type(y) is type(r) and tuple(y) == tuple(r) and y.statistic_location == r.statistic_location

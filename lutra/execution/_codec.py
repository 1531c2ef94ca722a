"""A safe data format for values coming *out* of an untrusted process: tagged JSON with raw array bytes.

Decoding never imports or calls anything named by the data (no pickle): it builds only None, bool, int, float,
complex, str, bytes, list, tuple, dict, set, numpy arrays/scalars of non-object dtypes (object arrays are
rebuilt element by element), pandas Index/RangeIndex/MultiIndex/Series/DataFrame (values, dtype name, names) and
torch tensors (through numpy). Anything else is `Unencodable`: a solution returning it is wrong, and a problem
whose *expected* answer is not faithfully representable is checked on the documented same-process path.
"""

from __future__ import annotations

import base64
import json
import math

MAX_DEPTH = 64
_PD1_INDEX = ("Int64Index", "UInt64Index", "Float64Index")
"""pandas < 2 index classes (the DS-1000 environment's pandas 1.5); pd.Index(values, dtype) rebuilds them."""


class Unencodable(TypeError):
    pass


def _nd(a, depth):
    import numpy as np

    if a.dtype == object:
        return {"$": "ndo", "shape": list(a.shape), "items": [_enc(x, depth + 1) for x in a.ravel().tolist()]}
    if a.dtype.hasobject or a.dtype.fields is not None:
        raise Unencodable(f"numpy dtype {a.dtype}")
    return {"$": "nd", "dtype": a.dtype.str, "shape": list(a.shape),
            "b64": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()}


def _enc(x, depth=0):
    if depth > MAX_DEPTH:
        raise Unencodable("nesting too deep")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if abs(x) < 2**53 else {"$": "int", "v": str(x)}
    if t is float:
        return x if math.isfinite(x) else {"$": "float", "v": repr(x)}
    if t is complex:
        return {"$": "complex", "v": [_enc(x.real), _enc(x.imag)]}
    if t is bytes:
        return {"$": "bytes", "b64": base64.b64encode(x).decode()}
    if t is list:
        return [_enc(v, depth + 1) for v in x]
    if t in (tuple, set, frozenset):
        return {"$": t.__name__, "v": [_enc(v, depth + 1) for v in x]}
    if t is dict:
        return {"$": "dict", "v": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in x.items()]}
    mod = t.__module__.split(".")[0]
    if mod == "numpy":
        import numpy as np

        if isinstance(x, np.ndarray) and t is np.ndarray:
            return _nd(x, depth)
        if isinstance(x, np.generic) and x.dtype != object:
            return {"$": "npscalar", "v": _nd(np.asarray(x), depth)}
    if mod == "pandas":
        import pandas as pd

        if t is pd.MultiIndex:
            return {"$": "midx", "levels": [_enc(x.get_level_values(i), depth + 1) for i in range(x.nlevels)],
                    "names": _enc(list(x.names), depth + 1)}
        if t is pd.RangeIndex:
            return {"$": "ridx", "v": [x.start, x.stop, x.step], "name": _enc(x.name, depth + 1)}
        if isinstance(x, pd.Index) and (t in (pd.Index, pd.DatetimeIndex) or t.__name__ in _PD1_INDEX):
            return {"$": "idx", "v": _nd(x.to_numpy(), depth), "dtype": str(x.dtype), "name": _enc(x.name, depth + 1)}
        if t is pd.Series:
            return {"$": "ser", "v": _nd(x.to_numpy(), depth), "dtype": str(x.dtype), "name": _enc(x.name, depth + 1),
                    "index": _enc(x.index, depth + 1)}
        if t is pd.DataFrame:
            return {"$": "df", "cols": [[_nd(x.iloc[:, i].to_numpy(), depth), str(x.dtypes.iloc[i])]
                                        for i in range(x.shape[1])],
                    "columns": _enc(x.columns, depth + 1), "index": _enc(x.index, depth + 1)}
        if t is pd.Timestamp:
            return {"$": "ts", "v": x.isoformat()}
    if mod == "torch":
        import torch

        if t in (torch.Tensor, torch.nn.Parameter) and x.layout == torch.strided:
            return {"$": "torch", "dtype": str(x.dtype).split(".")[-1], "v": _nd(x.detach().cpu().numpy(), depth)}
    raise Unencodable(f"cannot represent a {t.__module__}.{t.__qualname__} safely")


def encode(x) -> bytes:
    return json.dumps(_enc(x), allow_nan=False).encode()


def _dnd(d):
    import numpy as np

    if d["$"] == "ndo":
        a = np.empty(len(d["items"]), dtype=object)
        a[:] = [_dec(v) for v in d["items"]] if d["items"] else []
        return a.reshape(d["shape"])
    dt = np.dtype(d["dtype"])
    if dt.hasobject:
        raise ValueError("object dtype in raw array")
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=dt).reshape(d["shape"]).copy()


def _dec(x):
    if isinstance(x, list):
        return [_dec(v) for v in x]
    if not isinstance(x, dict):
        return x
    tag = x["$"]
    if tag == "int":
        return int(x["v"])
    if tag == "float":
        return float(x["v"])
    if tag == "complex":
        return complex(_dec(x["v"][0]), _dec(x["v"][1]))
    if tag == "bytes":
        return base64.b64decode(x["b64"])
    if tag in ("tuple", "set", "frozenset"):
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](_dec(v) for v in x["v"])
    if tag == "dict":
        return {_dec(k): _dec(v) for k, v in x["v"]}
    if tag in ("nd", "ndo"):
        return _dnd(x)
    if tag == "npscalar":
        return _dnd(x["v"])[()]
    if tag == "torch":
        import torch

        return torch.from_numpy(_dnd(x["v"])).to(getattr(torch, x["dtype"]))
    import pandas as pd

    if tag == "ts":
        return pd.Timestamp(x["v"])
    if tag == "ridx":
        return pd.RangeIndex(*[int(v) for v in x["v"]], name=_dec(x["name"]))
    if tag == "idx":
        return pd.Index(_dnd(x["v"]), dtype=x["dtype"], name=_dec(x["name"]))
    if tag == "midx":
        return pd.MultiIndex.from_arrays([_dec(v) for v in x["levels"]], names=_dec(x["names"]))
    if tag == "ser":
        return pd.Series(_dnd(x["v"]), index=_dec(x["index"]), name=_dec(x["name"])).astype(x["dtype"])
    if tag == "df":
        cols = {i: pd.Series(_dnd(v)).astype(dt) for i, (v, dt) in enumerate(x["cols"])}
        df = pd.DataFrame(cols)
        df.columns = _dec(x["columns"])
        df.index = _dec(x["index"])
        return df
    raise ValueError(f"unknown tag {tag!r}")


def decode(data: bytes):
    return _dec(json.loads(data))

"""What the Python benchmarks share: comparing answers fetched over the wire, free ports."""

import datetime as dt
import math
import socket


def normal(v):
    """A fetched value as compared: timestamps as UTC text, dates as text, numbers as float."""
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    return float(v)


def same(a, b, rel_tol=1e-6):
    """Same rows of normal values, in any order, floats within `rel_tol` (sums may add in
    another order)."""
    if len(a) != len(b):
        return False
    key = lambda r: tuple("" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x)) for x in r)
    for ra, rb in zip(sorted(a, key=key), sorted(b, key=key)):
        for x, y in zip(ra, rb):
            if isinstance(x, float) and isinstance(y, float):
                if not math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9):
                    return False
            elif x != y:
                return False
    return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Results and their storage: what every probe returns, and the files it leaves behind.

`contract` is the protocol every result type follows (`Result`: save, load, summary, plots,
figure, to_xarray; `load_result` reopens any saved result); `plotspec` declares what a
result asks to be drawn; `drawing` draws those declarations with matplotlib; `store` is the
run directory (`RunDir`: configuration, environment, summary, arrays, resume, lock); `atomic`
writes every file durably and atomically.

Layer rule: imports only the core and `lossprobe.errors`.
"""

from lossprobe.results.contract import FORMAT, RESULT_TYPES, Record, Result, json_float, load_result, register, xarray

__all__ = ["FORMAT", "RESULT_TYPES", "Record", "Result", "json_float", "load_result", "register", "xarray"]

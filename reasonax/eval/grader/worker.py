"""Worker side: everything prefixed ``_w_`` runs inside a worker process only. LaTeX is parsed
by math-verify and compared by the strict structural comparator :func:`_w_equal`;
:func:`_worker_main` is the worker's loop. sympy and math-verify are imported inside the
functions, so importing this module in the calling process stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
from typing import Any, Sequence

from reasonax.eval.grader.caps import MAX_INT_DIGITS
from reasonax.eval.grader.fast import _constant_chain

WORKER_MEM_MB = int(os.environ.get("REASONAX_GRADER_MEM_MB", "4096"))

_W_CACHE: dict[str, Any] = {}
_W_CACHE_MAX = 4096


def _w_latex_config():
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig

    # units=False: math-verify's unit stripper removes single letters after numbers ("2t" -> 2)
    # and basic_latex removes quotes ("f'(x)" -> f(x)); units are stripped by normalize_answer.
    return LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    )


_W_CFG: list[Any] = []


def _w_parse(s: str) -> Any:
    """LaTeX -> sympy through math-verify (LaTeX parser only; no signals); None on failure."""
    if s in _W_CACHE:
        return _W_CACHE[s]
    from math_verify import parse

    if not _W_CFG:
        _W_CFG.append(_w_latex_config())
    text = re.sub(r"(?<![\\'])'", r"^{\\prime}", s)  # keep primes: f'(x) is not f(x)
    res = parse("\\boxed{" + text + "}", extraction_config=[_W_CFG[0]], fallback_mode="no_fallback",
                parsing_timeout=None, raise_on_error=False)
    out = next((r for r in res if not isinstance(r, str)), None)
    if out is not None:
        out = _w_prep(_w_set_assignment(out))
    if len(_W_CACHE) >= _W_CACHE_MAX:
        _W_CACHE.clear()
    _W_CACHE[s] = out
    return out


def _w_set_assignment(e: Any) -> Any:
    """``x \\in (1, 2)`` and ``x = \\pm 2`` parse as Eq(x, <set>); the answer is the set.
    (Rebuilding Eq(x, <set>) with real symbols would evaluate it to False.)"""
    from sympy import Eq, Set, Symbol

    if isinstance(e, Eq) and isinstance(e.rhs, Set) and isinstance(e.lhs, Symbol):
        return e.rhs
    return e


def _w_prep(e: Any) -> Any:
    """Exact rationals for decimals, uniform real symbols, i -> I, unevaluated ops evaluated."""
    import sympy
    from sympy import Float, ImmutableMatrix, MatrixBase, Rational, Symbol

    if isinstance(e, MatrixBase):
        e = ImmutableMatrix(e)
    if not isinstance(e, sympy.Basic):
        return e
    floats = {f: Rational(str(f)) for f in e.atoms(Float)}
    syms = {s: (sympy.I if s.name == "i" else Symbol(s.name, real=True)) for s in e.atoms(Symbol)}
    e = e.xreplace({**floats, **syms})
    try:
        e = e.doit()
    except Exception:  # noqa: BLE001
        pass
    if e.atoms(Float):  # doit can create floats from exact input only via float literals
        e = e.xreplace({f: Rational(str(f)) for f in e.atoms(Float)})
    return e


def _w_is_rel(e: Any) -> bool:
    from sympy import And
    from sympy.core.relational import Relational

    if isinstance(e, Relational):
        return True
    return isinstance(e, And) and len(e.args) > 0 and all(isinstance(a, Relational) for a in e.args)


def _w_rel_args(e: Any) -> list[Any]:
    return list(getattr(e, "_unsorted_args", None) or e.args)


def _w_is_assignment(e: Any) -> bool:
    from sympy import And, Eq, Symbol
    from sympy.core.function import AppliedUndef

    if isinstance(e, And):
        args = _w_rel_args(e)
        return all(isinstance(a, Eq) for a in args) and _w_is_assignment(args[0])
    return isinstance(e, Eq) and isinstance(e.lhs, (Symbol, AppliedUndef))


def _w_last_rhs(e: Any) -> Any:
    from sympy import And

    if isinstance(e, And):
        return _w_last_rhs(_w_rel_args(e)[-1])
    return e.rhs


def _w_bad(e: Any) -> bool:
    from sympy import nan, zoo

    try:
        return bool(e.has(nan) or e.has(zoo))
    except Exception:  # noqa: BLE001
        return True


def _w_abs_num(e: Any, subs: dict[Any, Any] | None = None, prec: int = 40) -> Any:
    v = e.evalf(prec, subs=subs) if subs else e.evalf(prec)
    if not v.is_number or _w_bad(v):
        return None
    return abs(v)


def _w_clearly_nonzero(d: Any, a: Any, b: Any, subs: dict[Any, Any] | None = None) -> bool:
    """True when |a - b| (at the point ``subs``) is far above the evaluation error relative
    to |a| and |b|.

    Sound as a refutation: sympy's evalf targets ~40 correct digits, so a true zero never
    evaluates to more than 1e-15 of the operands' magnitude.
    """
    from sympy import Float

    try:
        dv, av, bv = _w_abs_num(d, subs), _w_abs_num(a, subs), _w_abs_num(b, subs)
        if dv is None or av is None or bv is None:
            return False
        scale = max(av, bv)
        if scale == 0:
            return bool(dv > 0)
        return bool(dv > Float("1e-15", 40) * scale)
    except Exception:  # noqa: BLE001
        return False


def _w_proved_zero(d: Any) -> bool:
    import sympy

    if d == 0:
        return True
    steps = (sympy.expand, sympy.cancel, sympy.radsimp, sympy.sqrtdenest, sympy.simplify)
    for step in steps:
        try:
            r = step(d)
        except Exception:  # noqa: BLE001
            continue
        if r == 0:
            return True
    if not d.free_symbols:
        try:
            if d.is_algebraic:
                x = sympy.Dummy("x")
                return sympy.minimal_polynomial(d, x) == x
        except Exception:  # noqa: BLE001
            return False
    return False


_W_POINTS = ((7, 3), (11, 5), (13, 17))


def _w_expr_equal(a: Any, b: Any) -> bool:
    import sympy
    from sympy import Rational

    if a == b:
        return True
    if _w_bad(a) or _w_bad(b):
        return False
    if a.has(sympy.oo) or b.has(sympy.oo) or a.has(-sympy.oo) or b.has(-sympy.oo):
        return False
    d = a - b
    if d == 0:
        return True
    syms = sorted(d.free_symbols, key=lambda s: s.name)
    if not syms:
        if _w_clearly_nonzero(d, a, b):
            return False
        return _w_proved_zero(d)
    for k in range(2):  # refute numerically at rational points before trying to simplify
        point = {s: Rational(*_W_POINTS[(i + k) % len(_W_POINTS)]) for i, s in enumerate(syms)}
        if _w_clearly_nonzero(d, a, b, point):
            return False
    return _w_proved_zero(d)


def _w_constant_ratio(a: Any, b: Any) -> Any:
    """a / b when that is a finite nonzero constant, else None."""
    import sympy

    if b == 0 or a == 0:
        return None
    try:
        r = sympy.simplify(sympy.cancel(a / b))
    except Exception:  # noqa: BLE001
        return None
    if r.free_symbols or _w_bad(r) or r == 0 or not r.is_number or r.has(sympy.oo, -sympy.oo):
        return None
    return r


def _w_canonical_ineq(e: Any) -> tuple[Any, bool] | None:
    """x > 3 -> (x - 3, strict); x <= 3 -> (3 - x, non-strict); Eq/Ne -> None."""
    from sympy import GreaterThan, LessThan, StrictGreaterThan, StrictLessThan

    if isinstance(e, StrictGreaterThan):
        return e.lhs - e.rhs, True
    if isinstance(e, GreaterThan):
        return e.lhs - e.rhs, False
    if isinstance(e, StrictLessThan):
        return e.rhs - e.lhs, True
    if isinstance(e, LessThan):
        return e.rhs - e.lhs, False
    return None


def _w_single_var_set(e: Any) -> Any:
    syms = e.free_symbols
    if len(syms) != 1:
        return None
    try:
        return e.as_set()
    except Exception:  # noqa: BLE001
        return None


def _w_rel_equal(g: Any, p: Any) -> bool:
    from sympy import And, Eq, Ne

    if isinstance(g, And) or isinstance(p, And):
        if isinstance(g, And) and isinstance(p, And):
            ga, pa = _w_rel_args(g), _w_rel_args(p)
            if len(ga) == len(pa) and all(_w_rel_equal(x, y) for x, y in zip(ga, pa)):
                return True
        gs, ps = _w_single_var_set(g), _w_single_var_set(p)
        return gs is not None and ps is not None and g.free_symbols == p.free_symbols and _w_set_equal(gs, ps)
    if (isinstance(g, Eq) and isinstance(p, Eq)) or (isinstance(g, Ne) and isinstance(p, Ne)):
        dg, dp = g.lhs - g.rhs, p.lhs - p.rhs
        if _w_expr_equal(dg, dp) or _w_expr_equal(dg, -dp):
            return True
        return _w_constant_ratio(dg, dp) is not None
    cg, cp = _w_canonical_ineq(g), _w_canonical_ineq(p)
    if cg is not None and cp is not None:
        if cg[1] == cp[1]:
            if _w_expr_equal(cg[0], cp[0]):
                return True
            r = _w_constant_ratio(cg[0], cp[0])
            if r is not None and bool(r > 0):
                return True
        gs, ps = _w_single_var_set(g), _w_single_var_set(p)
        return gs is not None and ps is not None and g.free_symbols == p.free_symbols and _w_set_equal(gs, ps)
    return False


def _w_set_parts(s: Any) -> list[Any]:
    from sympy import Union

    return list(s.args) if isinstance(s, Union) else [s]


def _w_sort_key(s: Any) -> tuple:
    from sympy import FiniteSet, Interval

    try:
        if isinstance(s, Interval):
            return (0, float(s.start), float(s.end))
        if isinstance(s, FiniteSet) and len(s) > 0:
            return (1, float(min(s.args, key=lambda v: float(v))), 0.0)
    except Exception:  # noqa: BLE001
        pass
    return (2, 0.0, 0.0)


def _w_unordered_equal(ga: Sequence[Any], pa: Sequence[Any]) -> bool:
    if len(ga) != len(pa):
        return False
    used = [False] * len(pa)
    for x in ga:
        for j, y in enumerate(pa):
            if not used[j] and _w_equal(x, y):
                used[j] = True
                break
        else:
            return False
    return True


def _w_set_equal(g: Any, p: Any) -> bool:
    from sympy import EmptySet, FiniteSet, Interval, Set, Tuple, Union

    if isinstance(g, FiniteSet) and not isinstance(p, Set):
        return len(g) == 1 and _w_equal(g.args[0], p)
    if isinstance(p, FiniteSet) and not isinstance(g, Set):
        return len(p) == 1 and _w_equal(g, p.args[0])
    if isinstance(g, Interval) and isinstance(p, Interval):
        return (g.left_open == p.left_open and g.right_open == p.right_open
                and _w_equal(g.start, p.start) and _w_equal(g.end, p.end))
    for a, b in ((g, p), (p, g)):  # "(1,2)" parses as an open interval but may mean a point
        if isinstance(a, Interval) and isinstance(b, Tuple):
            return a.left_open and a.right_open and len(b) == 2 and _w_equal(a.start, b[0]) and _w_equal(a.end, b[1])
    if isinstance(g, FiniteSet) and isinstance(p, FiniteSet):
        return _w_unordered_equal(g.args, p.args)
    if g is EmptySet or p is EmptySet:
        return g is p
    if isinstance(g, Union) or isinstance(p, Union):
        gp, pp = _w_set_parts(g), _w_set_parts(p)
        if len(gp) != len(pp) or any(not isinstance(x, (Interval, FiniteSet)) for x in gp + pp):
            return False
        gp.sort(key=_w_sort_key)
        pp.sort(key=_w_sort_key)
        return all(_w_set_equal(x, y) for x, y in zip(gp, pp))
    try:
        return bool(g == p)
    except Exception:  # noqa: BLE001
        return False


def _w_matrix_equal(g: Any, p: Any) -> bool:
    from sympy import Interval, MatrixBase, Tuple

    def flat(m: Any) -> tuple[tuple[int, int], list[Any]] | None:
        if isinstance(m, MatrixBase):
            return m.shape, list(m)
        if isinstance(m, Tuple):
            return (len(m), 1), list(m)
        if isinstance(m, Interval) and m.left_open and m.right_open:  # "(1,2)" written for a vector
            return (2, 1), [m.start, m.end]
        return None

    fg, fp = flat(g), flat(p)
    if fg is None or fp is None:
        return False
    (gs, gv), (ps, pv) = fg, fp
    vector = 1 in gs and 1 in ps  # a row/column vector may be written as a tuple
    if gs != ps and not (vector and len(gv) == len(pv)):
        return False
    return all(_w_equal(x, y) for x, y in zip(gv, pv))


def _w_equal(g: Any, p: Any, depth: int = 0) -> bool:
    """Strict equality of two parsed answers (gold first)."""
    import sympy
    from sympy import Expr, MatrixBase, Set, Tuple

    if depth > 6:
        return False
    g_rel, p_rel = _w_is_rel(g), _w_is_rel(p)
    if p_rel and not g_rel and _w_is_assignment(p):  # "x = 3" vs gold "3"
        return _w_equal(g, _w_last_rhs(p), depth + 1)
    if g_rel and not p_rel and _w_is_assignment(g):  # gold "y = 2x + 1" vs "2x + 1"
        return _w_equal(_w_last_rhs(g), p, depth + 1)
    if g_rel and p_rel:
        return _w_rel_equal(g, p)
    if g_rel or p_rel:
        rel, other = (g, p) if g_rel else (p, g)
        if isinstance(other, Set):
            as_set = _w_single_var_set(rel)
            return as_set is not None and _w_set_equal(as_set, other)
        return False
    if isinstance(g, MatrixBase) or isinstance(p, MatrixBase):
        return _w_matrix_equal(g, p)
    if isinstance(g, Set) or isinstance(p, Set):
        return _w_set_equal(g, p)
    if isinstance(g, Tuple) or isinstance(p, Tuple):
        if not (isinstance(g, Tuple) and isinstance(p, Tuple)) or len(g) != len(p):
            return False
        return all(_w_equal(x, y, depth + 1) for x, y in zip(g, p))
    if isinstance(g, Expr) and isinstance(p, Expr):
        return _w_expr_equal(g, p)
    if isinstance(g, sympy.Basic) and isinstance(p, sympy.Basic):
        return g == p
    return False


def _w_compare(gold: str, pred: str) -> tuple[bool, str]:
    chain = _constant_chain(pred) if "=" not in gold else None
    if chain is not None:  # "30-12=18" states 18 only when every side is 18 ("2+2=5" is not 5)
        g = _w_parse(gold)
        sides = [_w_parse(x) for x in chain]
        if g is None or any(x is None for x in sides):
            return False, "parse_failure"
        return all(_w_equal(g, x) for x in sides), "ok"
    g = _w_parse(gold)
    p = _w_parse(pred)
    if g is None or p is None:
        return False, "parse_failure"
    return bool(_w_equal(g, p)), "ok"


def _w_math_verify(gold: str, pred: str) -> tuple[bool, str]:
    """math-verify's own verdict with its default tolerances (diagnostics only)."""
    from math_verify import LatexExtractionConfig, parse, verify

    g = parse("\\boxed{" + gold + "}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
              parsing_timeout=None)
    p = parse("\\boxed{" + pred + "}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
              parsing_timeout=None)
    if not g or not p:
        return False, "parse_failure"
    return bool(verify(g, p, timeout_seconds=None)), "ok"


_W_HANDLERS = {"eq": _w_compare, "mv": _w_math_verify}


def _w_setup() -> None:
    logging.disable(logging.WARNING)  # math-verify warns about disabled signal timeouts
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(max(MAX_INT_DIGITS * 4, 20_000))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4000))
    try:
        import resource

        limit = WORKER_MEM_MB * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass
    try:
        _w_compare("\\frac{1}{2}", "x+1")  # warm the ANTLR parser and sympy caches
    except Exception:  # noqa: BLE001
        pass
    _W_CACHE.clear()


def _worker_main() -> None:
    """Worker loop over stdin/stdout, one JSON message per line.

    Receives ``[kind, gold, pred]``; replies ``["ok", [verdict, status]]`` or
    ``["error", exception_name]``. Exits when stdin closes (the parent died or killed it).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and a group-wide SIGTERM (a preemption) reach
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent too: it decides; a worker ends when stdin closes
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    _w_setup()
    out.write(json.dumps(["ready", os.getpid()]) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            kind, gold, pred = json.loads(line)
            reply: list[Any] = ["ok", list(_W_HANDLERS[kind](gold, pred))]
        except BaseException as exc:  # noqa: BLE001 - MemoryError, RecursionError, anything
            reply = ["error", type(exc).__name__]
        try:
            out.write(json.dumps(reply) + "\n")
            out.flush()
        except (OSError, ValueError):
            return

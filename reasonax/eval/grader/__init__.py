"""Answer extraction and strict answer equivalence: the GRPO reward and the data filter.

A wrong "yes" here trains a model to be wrong and a hang here stalls a pod, so the grader is
built around three rules: (1) it never accepts an answer that is not exactly equal to the gold
one, (2) it never runs model text as code, (3) it never raises and never hangs.

Pipeline of :func:`is_equivalent` (all in the calling process unless said otherwise):

1. *Caps.* Inputs longer than :data:`MAX_INPUT_CHARS` are rejected (False, counted).
2. *Normalisation* (:func:`normalize_answer`, plain string work): ``$..$``/``\\boxed``
   wrappers (and ``$`` delimiters inside an answer: ``$28$ percent``), ``\\left``/``\\right``,
   ``\\dfrac``, spacing commands, ``\\text{units}``, squared units (``m²``), degrees, currency
   before or after the number (``1,000.99€``), percent signs, trailing dots, unicode operators,
   matrix spellings (``bmatrix``, ``array``/``matrix`` in brackets -> ``pmatrix``). A comma
   followed by a space stays a list separator (``32, 349`` is never 32349).
   Then *alignment* (:func:`_align`): the names come off assignments so that values meet values
   (gold ``(p,q)=(3,2)`` / ``V_1:V_2=11:21`` vs a bare value; gold ``AB=4,CD=5`` vs ``4, 5`` in
   the gold's order; a chain ``x = 5+5+1 = 11`` by its last right-hand side). A chain of
   constants (``30-12 = 18``) states a number only when every side equals it (``2+2=5`` is
   not 5), decided here for plain numbers and in the workers otherwise.
3. *Fast path* (:func:`_fast_compare`): identical normalised strings, or two plain numbers
   (integers, decimals, thousands separators, ``a/b``, ``\\frac{a}{b}``, mixed numbers,
   ``x \\times 10^{k}``) compared exactly as :class:`fractions.Fraction` -- no sympy, no
   floats. A prediction ``1000,99`` / ``2,74`` (one comma, not followed by exactly three digits)
   is read with a decimal comma against a gold that is one number; a gold is never read so
   (MATH golds such as ``1,3`` are lists). This is written here rather than taken from
   math-verify because math-verify decides numbers with sympy Floats rounded to 6 decimals
   (``0.333333 == 1/3``) and is ~30x slower; GSM8K-style rewards need >= 500 pairs/s on two
   cores (``bench/grader.py``: GSM8K golds at ~29,000 pairs/s in process, ~1,000 pairs/s
   through the sympy workers).
4. *Slow path* in a pool of worker processes (:class:`GraderPool`): LaTeX is parsed by
   math-verify (``math_verify.parse`` with a LaTeX-only extraction config: its ANTLR LaTeX
   parser, never ``parse_expr``/``sympify`` on model text) and compared by the strict
   structural comparator :func:`_w_equal` (``worker.py``). The comparator follows math-verify's strategy
   (assignment unwrapping, relation flipping, interval/relation conversion, unordered sets)
   but decides with exact arithmetic, because math-verify's ``verify`` is lenient where a
   reward must not be (``tests/test_grader.py::test_math_verify_is_lenient_where_we_are_not``
   pins the cases): with its default tolerances it accepts
   ``1/2004! == 1/2006!`` and ``10^{-20} == 2*10^{-20}`` (``evalf(chop=True)``),
   ``1/3 == 0.333333`` and ``\\sqrt2 == 1.41421356`` (6-decimal float rounding),
   ``(1,2) == \\{1,2\\}`` (interval vs set), ``5 == "2+2=5"`` (any equation's last side),
   ``9 == 9\\%`` and ``0.5 == 50\\%`` both, and, through its unit stripping, ``2 == 2t`` and
   ``f(x) == f'(x)``. Here decimals become exact rationals, constant differences are proved
   zero (simplify / minimal polynomial) or refuted numerically relative to the operands'
   size, and equations are equal only up to a constant factor.

The pool (``pool.py``) is written here (not ``concurrent.futures`` / ``multiprocessing.Pool``)
because a comparison that exceeds its wall-clock limit must have its worker *killed and replaced*;
``signal.alarm`` (math-verify's own timeout) only works on the main thread, so math-verify runs
inside the workers with its signal timeouts disabled. Workers are ``subprocess`` children
(fork+exec: safe from a threaded parent, and unlike ``multiprocessing`` spawn/forkserver they
never re-import the caller's ``__main__``, which in a trainer would import JAX and grab the
accelerator) speaking one JSON message per line over pipes; each has an address-space cap. The
pool is safe to call from many threads at once and from non-main threads.

Modules, one per stage; imports go one way (``counters``, ``text`` <- ``extract`` <-
``normalize`` <- ``fast`` <- ``worker`` (+ ``caps``) <- ``pool`` <- ``api``), and each piece
of state has one owner: the counters in ``counters``, the worker's parse cache in ``worker``,
the process pool and its defaults in ``pool``. Everything used outside the package is
re-exported here, so ``from reasonax.eval import grader; grader.grade(...)`` is the way in.

Public API: :func:`extract_answer`, :func:`normalize_answer`, :func:`answer_key`,
:func:`is_equivalent`, :func:`is_equivalent_batch`, :func:`grade`, :func:`grade_batch`,
:func:`stats`, :func:`reset_stats`, :func:`configure`, :func:`shutdown`,
:func:`math_verify_batch` (math-verify's own verdicts, for comparison only).
"""

from reasonax.eval.grader.api import grade, grade_batch, is_equivalent, is_equivalent_batch, math_verify_batch
from reasonax.eval.grader.counters import reset_stats, stats
from reasonax.eval.grader.extract import extract_answer
from reasonax.eval.grader.fast import answer_key
from reasonax.eval.grader.normalize import normalize_answer
from reasonax.eval.grader.pool import DEFAULT_TIMEOUT_S, GraderPool, configure, shutdown

# Importable as before, outside __all__: the format reward's box check and the limits.
from reasonax.eval.grader.caps import (  # noqa: F401
    MAX_ANSWER_CHARS,
    MAX_BRACE_DEPTH,
    MAX_FACTORIAL_ARG,
    MAX_INPUT_CHARS,
    MAX_INT_DIGITS,
)
from reasonax.eval.grader.extract import boxed_answer  # noqa: F401
from reasonax.eval.grader.pool import WORKER_START_TIMEOUT_S  # noqa: F401
from reasonax.eval.grader.worker import WORKER_MEM_MB  # noqa: F401

# Private names used outside the package: reasonax.eval.datasets (_last_boxed), the safety tests
# (_W_CACHE, _w_compare, _get_pool) and bench/grader.py --compare_with (_prepare, _align,
# _W_CACHE, _w_compare). Each is the owning module's object, not a copy (_W_CACHE.clear() clears
# the worker's cache).
from reasonax.eval.grader.api import _prepare  # noqa: F401
from reasonax.eval.grader.extract import _last_boxed  # noqa: F401
from reasonax.eval.grader.fast import _align  # noqa: F401
from reasonax.eval.grader.pool import _get_pool  # noqa: F401
from reasonax.eval.grader.worker import _W_CACHE, _w_compare  # noqa: F401

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "GraderPool",
    "answer_key",
    "configure",
    "extract_answer",
    "grade",
    "grade_batch",
    "is_equivalent",
    "is_equivalent_batch",
    "math_verify_batch",
    "normalize_answer",
    "reset_stats",
    "shutdown",
    "stats",
]

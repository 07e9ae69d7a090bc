"""reasonax.eval.grader under adversarial input: no code runs, nothing hangs, nothing raises.

Hang detectors only: a call must return within its limit plus generous slack (10 s); the
timeout path is checked through its counter, not through timings.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from reasonax.eval import grader, step_check

LIMIT = 1.0  # seconds per comparison in these tests
SLACK = 10.0
# Passes every cap and is far too slow for sympy: (1 + 1e-7)^(1e8) as an exact rational.
SLOW = r"\left(\frac{10000001}{10000000}\right)^{100000000}"


def _payloads(marker: str) -> list[str]:
    return [
        f'__import__("os").system("touch {marker}")',
        f"__import__('os').system('echo x > {marker}')",
        f"exec(\"open('{marker}', 'w').write('x')\")",
        f"eval(\"__import__('os').system('touch {marker}')\")",
        f"(lambda: open('{marker}', 'w'))()",
        "().__class__.__bases__[0].__subclasses__()",
        f"\\boxed{{__import__(\"os\").system(\"touch {marker}\")}}",
        f"x = __import__(\"subprocess\").call([\"touch\", \"{marker}\"])",
    ]


def test_model_text_is_never_executed(tmp_path):
    marker = str(tmp_path / "pwned")
    payloads = _payloads(marker)
    golds = ["1"] * len(payloads) + payloads + payloads
    preds = payloads + ["1"] * len(payloads) + [p + " + 1" for p in payloads]
    assert grader.is_equivalent_batch(golds, preds) == [False] * len(golds)
    assert grader.is_equivalent_batch(golds, preds, fast=False) == [False] * len(golds)
    for p in payloads:
        assert grader.grade(p, "1", fallback=True) in (False, True)  # may extract a digit; must not run
        assert grader.grade(f"\\boxed{{{p}}}", "0") is False
        step_check.check_steps(f"{p} = 1 and 2 + 2 = {p}")
    grader.math_verify_batch(payloads, payloads)
    assert not os.path.exists(marker)


def test_worker_parser_never_reaches_python_evaluation(monkeypatch):
    """Inside the worker code path, model text never reaches parse_expr / sympify-of-str."""
    import latex2sympy2_extended.latex2sympy2 as l2s
    import math_verify.parser as mvp

    calls = []

    def trap(*args, **kwargs):
        calls.append(args)
        raise AssertionError("parse_expr called on model text")

    monkeypatch.setattr(mvp, "parse_expr", trap)
    monkeypatch.setattr(l2s, "parse_expr", trap)
    grader._W_CACHE.clear()
    for text in ['__import__("os").getcwd()', "9**9**9", "1/2", "x^2 + 1", "(1,2)", r"\frac{1}{2}"]:
        grader._w_compare(grader.normalize_answer(text), "1")
    grader._W_CACHE.clear()
    assert calls == []


@pytest.mark.parametrize("gold,pred", [
    ("9**9**9", "9**9**9 + 1"),
    ("1", "9**9**9"),
    (r"10^{10^{10}}", r"10^{10^{10}} + 1"),
    (r"10^{10^{10}}", "1"),
    ("1", r"\frac{1}{10^{10^{10}}}"),
    ("1", "9^{9^{9}}"),
    ("1", r"(10^{5})!"),
    ("1", "1000000!"),
    ("1", "2^{100000}"),
    ("1" * 100_000, "1" * 100_000),
    ("1", "1" * 100_000),
    ("(" * 100_000, "1"),
    ("{" * 5_000 + "1" + "}" * 5_000, "1"),
    ("\\sqrt{" * 300 + "2" + "}" * 300, "2"),
    ("\udcff", "\udcff1"),
    ("5", "5\udcff"),
    ("\ud800\udc00", "1"),
])
def test_adversarial_inputs_return_false_within_limit(gold, pred):
    t0 = time.monotonic()
    assert grader.is_equivalent(gold, pred, timeout=LIMIT) is False
    assert time.monotonic() - t0 < LIMIT + SLACK


# Inputs aimed at the style rules: box joining, answer sentences, "is the answer", decimal
# commas, list commas, currency and unit suffixes, matrix spellings, assignments and chains.
STYLE_ADVERSARIAL = [
    r"\boxed{1}, " * 900,
    r"\boxed{1} or " * 800,
    r"\boxed{1, " * 1000,
    "$" * 10_000,
    "$1$ or " * 1400,
    "$x$ is the answer " * 500,
    "1 is the answer " * 600,
    "\\)" * 4000 + " is the answer",
    "\\[" * 3000 + "\\] is the solution",
    "The answer is " * 700,
    "Final Answer: " + "x is " * 2000,
    "Final Answer: " + "$x$ is $1$ " * 800,
    "the solution is " * 600,
    "1," * 5000,
    "1, " * 3300,
    "12,34 " * 1600,
    "1€" * 5000,
    "1m²" * 3000,
    "1" + " " * 9000 + "m²",
    r"[\begin{array}{cc}" * 500 + r"\end{array}]" * 300,
    r"\begin{bmatrix}" * 600,
    "x=" * 5000,
    "AB=1," * 2000,
    "(" * 5000 + "=" + ")" * 4000,
    "\\" * 10_000,
]


@pytest.mark.parametrize("text", STYLE_ADVERSARIAL)
def test_style_rules_never_hang(text):
    t0 = time.monotonic()
    ans = grader.extract_answer(text, fallback=True)
    assert ans is None or isinstance(ans, str)
    assert grader.grade(text, "1", timeout=LIMIT) in (False, True)
    assert grader.is_equivalent("1", text, timeout=LIMIT) in (False, True)
    assert grader.is_equivalent(text, "1", timeout=LIMIT) in (False, True)
    grader.answer_key(text)
    assert time.monotonic() - t0 < 3 * LIMIT + SLACK


def test_identical_huge_expressions_are_equal_without_evaluation():
    t0 = time.monotonic()
    assert grader.is_equivalent(r"10^{10^{10}}", r"10^{10^{10}}", timeout=LIMIT) is True
    assert grader.is_equivalent("9**9**9", "9**9**9", timeout=LIMIT) is True
    assert time.monotonic() - t0 < SLACK


def test_big_but_reasonable_factorials_are_exact():
    assert grader.is_equivalent("1000!", r"1000 \cdot 999!", timeout=30) is True
    assert grader.is_equivalent("1000!", r"999 \cdot 999!", timeout=30) is False


def test_timeout_kills_and_replaces_the_worker():
    before = grader.stats()
    t0 = time.monotonic()
    assert grader.is_equivalent(SLOW, "2", timeout=LIMIT) is False
    assert time.monotonic() - t0 < LIMIT + SLACK
    assert grader.stats()["timeouts"] == before["timeouts"] + 1
    assert grader.is_equivalent(r"\sqrt{8}", r"2\sqrt{2}", timeout=30) is True  # pool still works


def test_timeouts_from_many_threads_at_once():
    before = grader.stats()["timeouts"]
    n_slow = 4
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def slow(i: int) -> None:
        try:
            results[i] = grader.is_equivalent(SLOW, str(i), timeout=LIMIT)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def legit(i: int) -> None:
        try:
            results[100 + i] = grader.is_equivalent(r"\sqrt{8}", r"2\sqrt{2}", timeout=30)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(n_slow)]
    threads += [threading.Thread(target=legit, args=(i,)) for i in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    assert [results[i] for i in range(n_slow)] == [False] * n_slow
    assert [results[100 + i] for i in range(3)] == [True] * 3
    assert grader.stats()["timeouts"] == before + n_slow
    # 4 slow calls on a pool of cpu_count workers, each killed at LIMIT, plus restarts
    assert time.monotonic() - t0 < n_slow * (LIMIT + SLACK)


def test_works_from_a_non_main_thread():
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["equal"] = grader.is_equivalent(r"x \ge 3", r"[3, \infty)", timeout=30)
            out["slow"] = grader.is_equivalent(SLOW, "1", timeout=LIMIT)
            out["batch"] = grader.is_equivalent_batch([SLOW, r"\sqrt{8}"], ["1", r"2\sqrt2"], timeout=LIMIT)
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive()
    assert out == {"equal": True, "slow": False, "batch": [False, True]}


def test_dead_workers_are_replaced():
    assert grader.is_equivalent(r"\sqrt{12}", r"2\sqrt{3}", timeout=30) is True
    pool = grader._get_pool()
    with pool._all_lock:
        workers = list(pool._all)
    assert workers
    for w in workers:
        w.proc.kill()
        w.proc.wait(timeout=10)
    before = grader.stats()["worker_crashes"]
    for k in range(pool.size + 1):  # cycle through every slot, dead ones included
        assert grader.is_equivalent(rf"\sqrt{{{2 * (k + 2) ** 2}}}", rf"{k + 2}\sqrt{{2}}", timeout=30) is True
    assert grader.stats()["worker_crashes"] >= before + len(workers)


def test_step_checker_survives_adversarial_text():
    for text in ["9**9**9 = 1", "2^{99999999} = 1", "1" * 100_000 + " = 1", "(" * 100_000 + "1 = 1",
                 "1 = 1 = " * 20_000, "\udcff = 1", "1/0 = 1", "0^{-1} = 1", "1 = " + "+" * 10_000]:
        t0 = time.monotonic()
        out = step_check.check_steps(text)
        assert time.monotonic() - t0 < SLACK
        assert all(s.left_value == s.left_value for s in out)

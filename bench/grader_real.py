"""reasonax's grader against math-verify on real model completions (the evaluate CLI's output).

    .venv/bin/python bench/grader_real.py RUN_DIR [RUN_DIR ...] [--disagreements FILE.jsonl] [--show N]
    .venv/bin/python bench/grader_real.py --write_math_few_shot runs/grader_eval/math_fewshot.jsonl

Each RUN_DIR is an evaluate CLI output directory (``graded.jsonl``: one record per sample with
``text`` and ``gold``). Every completion is graded four ways against its gold:

* ``rx``: reasonax as a reward grades it (``grader.grade_batch``, no last-number fallback);
* ``rx+fb``: reasonax as the evaluate CLI grades it (``extract_answer(fallback=True)`` and
  ``is_equivalent_batch``);
* ``mv``: math-verify with its defaults: ``verify(parse("\\boxed{gold}"), parse(completion))``
  (LaTeX and plain-expression extraction, its default tolerances and timeouts);
* ``rec``: the verdict recorded in graded.jsonl when the run was made (the grader of that day,
  with the fallback), for a before/after view when the run predates a grader change.

Prints the agreement of rx+fb and rx with mv (overall and per run), the counts of each verdict,
every disagreement of rx+fb or rx with mv (id, gold, both extracted answers, verdicts) and every
completion any of them accepts: review them by hand. ``--disagreements`` writes the disagreements
as JSONL (completion text included) for that review.
math-verify runs in this process, in the main thread, so that its signal timeouts work; its
plain-expression extraction hands digits-and-operators strings to sympy's parse_expr.

``--write_math_few_shot PATH`` writes the 4 worked examples used for the few-shot MATH-500 run
(MATH test problems outside MATH-500, one per subject, whose reference solutions have no blank
line and end in one box), for ``evaluate --config.few_shot=PATH``; nothing else is done then.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reasonax import jsonl  # noqa: E402
from reasonax.eval import grader  # noqa: E402


def _math_verify(texts: list[str], golds: list[str]) -> tuple[list[bool], list[str | None]]:
    """math-verify's verdicts and the answers it extracted (its string form), defaults throughout."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    verdicts, answers = [], []
    gold_cache: dict[str, list] = {}
    for text, gold in zip(texts, golds):
        try:
            if gold not in gold_cache:
                gold_cache[gold] = parse("\\boxed{" + gold + "}")
            pred = parse(text)
            answers.append(str(pred[1]) if len(pred) > 1 else (str(pred[0]) if pred else None))
            verdicts.append(bool(gold_cache[gold]) and bool(pred) and bool(verify(gold_cache[gold], pred)))
        except Exception:  # noqa: BLE001 - a crash counts as a rejection, like a timeout
            answers.append(None)
            verdicts.append(False)
    return verdicts, answers


MATH_FEW_SHOT_IDS = ("math/algebra/0", "math/counting_and_probability/2", "math/geometry/45",
                     "math/intermediate_algebra/16")


def _write_math_few_shot(path: str) -> None:
    from reasonax.eval import datasets

    by_id = {p.id: p for p in datasets.load_math()}
    jsonl.rewrite(Path(path), [{"question": by_id[i].question, "answer": by_id[i].meta["solution"]}
                               for i in MATH_FEW_SHOT_IDS])
    print(f"wrote {len(MATH_FEW_SHOT_IDS)} worked examples to {path}")


def _pct(a: int, n: int) -> str:
    return f"{a}/{n} ({100.0 * a / n:.1f}%)" if n else "0/0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="evaluate CLI output directories")
    ap.add_argument("--write_math_few_shot", default="", help="write the few-shot MATH examples here and stop")
    ap.add_argument("--disagreements", default="", help="write every rx+fb or rx / mv disagreement here (JSONL)")
    ap.add_argument("--show", type=int, default=80, help="characters of completion tail to print per disagreement")
    args = ap.parse_args()
    if args.write_math_few_shot:
        _write_math_few_shot(args.write_math_few_shot)
        return
    if not args.runs:
        ap.error("give at least one evaluate CLI output directory")
    print(f"# grader_real: {platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")

    rows = []
    for run in args.runs:
        recs = [r for _, r in jsonl.read(Path(run) / "graded.jsonl")]
        texts, golds = [r["text"] for r in recs], [r["gold"] for r in recs]
        t0 = time.perf_counter()
        rx = grader.grade_batch(texts, golds, fallback=False)
        rx_ans = [grader.extract_answer(t, fallback=False) for t in texts]
        fb_ans = [grader.extract_answer(t, fallback=True) for t in texts]
        idx = [i for i, a in enumerate(fb_ans) if a is not None]
        fb_v = grader.is_equivalent_batch([golds[i] for i in idx], [fb_ans[i] for i in idx])
        rx_fb = [False] * len(texts)
        for i, v in zip(idx, fb_v):
            rx_fb[i] = v
        t_rx = time.perf_counter() - t0
        t0 = time.perf_counter()
        mv, mv_ans = _math_verify(texts, golds)
        t_mv = time.perf_counter() - t0
        name = Path(run).name
        for i, r in enumerate(recs):
            rows.append({"run": name, "id": f"{r['prompt_id']}#{r['sample_index']}", "gold": golds[i],
                         "rx_answer": rx_ans[i], "fb_answer": fb_ans[i], "mv_answer": mv_ans[i],
                         "rx": rx[i], "rx+fb": rx_fb[i], "mv": mv[i], "rec": bool(r.get("correct")),
                         "text": texts[i]})
        print(f"{name}: {len(recs)} completions; reasonax {t_rx:.1f} s, math-verify {t_mv:.1f} s")

    print("\n| run | n | rx accepts | rx+fb accepts | mv accepts | recorded accepts | rx+fb = mv | rx = mv |")
    print("|---|---|---|---|---|---|---|---|")
    for name in [Path(r).name for r in args.runs] + ["all"]:
        sel = [r for r in rows if name in ("all", r["run"])]
        n = len(sel)
        print(f"| {name} | {n} | {sum(r['rx'] for r in sel)} | {sum(r['rx+fb'] for r in sel)} | "
              f"{sum(r['mv'] for r in sel)} | {sum(r['rec'] for r in sel)} | "
              f"{_pct(sum(r['rx+fb'] == r['mv'] for r in sel), n)} | {_pct(sum(r['rx'] == r['mv'] for r in sel), n)} |")

    dis = [r for r in rows if r["rx+fb"] != r["mv"] or r["rx"] != r["mv"]]
    for key in ("rx+fb", "rx"):
        sel = [r for r in dis if r[key] != r["mv"]]
        print(f"\n{len(sel)} disagreements between {key} and mv (review each by hand):")
        for r in sel:
            tail = " ".join(r["text"].split())[-args.show:] if args.show else ""
            print(f"- {r['run']} {r['id']}: gold {r['gold']!r}; {key} {r[key]} "
                  f"({r['fb_answer' if key == 'rx+fb' else 'rx_answer']!r}); mv {r['mv']} ({r['mv_answer']!r}); "
                  f"recorded {r['rec']}" + (f"\n    ...{tail}" if tail else ""))
    accepted = [r for r in rows if r["rx"] or r["rx+fb"] or r["mv"]]
    print(f"\n{len(accepted)} completions accepted by any of rx, rx+fb, mv (review these too: an accept by all "
          "can still be false):")
    for r in accepted:
        tail = " ".join(r["text"].split())[-args.show:] if args.show else ""
        print(f"- {r['run']} {r['id']}: gold {r['gold']!r}; rx {r['rx']} ({r['rx_answer']!r}); rx+fb {r['rx+fb']}; "
              f"mv {r['mv']} ({r['mv_answer']!r})" + (f"\n    ...{tail}" if tail else ""))
    changed = [r for r in rows if r["rx+fb"] != r["rec"]]
    print(f"\n{len(changed)} verdicts that differ from the recorded ones (the grader of the run's day):")
    for r in changed:
        print(f"- {r['run']} {r['id']}: gold {r['gold']!r}; now {r['rx+fb']} ({r['fb_answer']!r}); recorded {r['rec']}")
    if args.disagreements:
        jsonl.rewrite(Path(args.disagreements), dis)
        print(f"\nwrote {len(dis)} disagreements to {args.disagreements}")
    grader.shutdown()


if __name__ == "__main__":
    main()

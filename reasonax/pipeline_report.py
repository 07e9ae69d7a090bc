"""The pipeline's report: markdown tables, three PNG plots and a console summary, from the stage
results (reasonax.pipeline), next to the headline of Bansal et al. 2024 (arXiv 2408.16737).
Numbers are reported as they came out; the comparison lines only subtract and divide them."""

from __future__ import annotations

from pathlib import Path

from reasonax.evaluate import format_estimate as _f
from reasonax.evaluate import plot_selection, selection_markdown

PAPER = ("Paper (MATH; WC = Gemma2-9B, SE = Gemma2-27B; budgets 1 vs 3 and 10 vs 30 samples): WC data has "
         "higher coverage (+11% / +6% relative, low / high budget) and diversity (+86% / +125%), a higher "
         "false-positive rate (+7 points), and fine-tuning on it beats SE data in all three setups "
         "(up to ~+6% relative).")
SEARCH_AND_LEARN = ("HF search-and-learn (Llama 3.2 1B policy, Llama 3.1 8B PRM, MATH-500) published that beam "
                    "search beats best-of-N at small budgets.")


def search_lines(s: dict) -> list[str]:
    """Per budget level: beam search against PRM best-of-N (accuracy with intervals, difference,
    and whether the intervals overlap) -- the comparison of search-and-learn's finding."""
    lines = []
    for lv in s["selection"]["levels"]:
        m = lv["methods"]
        if "beam" not in m or "prm-best-of-n" not in m:
            continue
        b, n = m["beam"]["accuracy"], m["prm-best-of-n"]["accuracy"]
        overlap = b["low"] <= n["high"] and n["low"] <= b["high"]
        lines.append(f"k={lv['level']} ({lv['budget']:.3g} FLOPs per question): beam search {_f(b)} vs PRM "
                     f"best-of-{m['prm-best-of-n']['n']} {_f(n)}: {b['value'] - n['value']:+.3f}"
                     + (" (intervals overlap: no difference shown)" if overlap else ""))
    return lines


def _rel(a: float, b: float) -> str:
    """(a - b) / b as a signed percentage."""
    if b is None or a is None or b != b or a != a or b == 0:
        return "n/a"
    return f"{(a - b) / b:+.0%}"


def comparisons(results: dict) -> list[str]:
    """WC vs SE at each budget (coverage, diversity: relative; FPR: points) and WC data vs SE data
    per fine-tuning setup (relative accuracy) -- the quantities of the paper's headline."""
    d = results["filter"]["datasets"]
    lines = []
    for b in ("low", "high"):
        wc, se = d[f"wc-{b}"], d[f"se-{b}"]
        fpr = (wc["fpr"]["value"] - se["fpr"]["value"]) * 100 if wc["fpr"]["value"] == wc["fpr"]["value"] and \
            se["fpr"]["value"] == se["fpr"]["value"] else float("nan")
        lines.append(f"{b} budget (WC {wc['samples_per_question']} vs SE {se['samples_per_question']} samples): "
                     f"coverage {_rel(wc['coverage']['value'], se['coverage']['value'])}, diversity "
                     f"{_rel(wc['diversity']['value'], se['diversity']['value'])}, FPR {fpr:+.1f} points")
    runs = [r for r in results["finetune"]["runs"] if "skipped" not in r]
    for setup in ("student", "self-improvement", "weak-to-strong"):
        acc = {r["data"].split("-")[0]: r["accuracy"]["value"] for r in runs
               if r["setup"] == setup and not r["data"].endswith("number-matched")}
        if "wc" in acc and "se" in acc:
            lines.append(f"{setup}: WC data {acc['wc']:.3f} vs SE data {acc['se']:.3f} held-out accuracy "
                         f"({_rel(acc['wc'], acc['se'])} relative)")
        else:
            lines.append(f"{setup}: not compared (a fine-tune was skipped: no correct samples)")
    return lines


def markdown(results: dict) -> str:
    data, pre, smp, flt = results["data"], results["pretrain"]["models"], results["sample"], results["filter"]
    ft, grpo, rounds = results["finetune"], results["grpo"], results["rounds"]
    out = ["# reasonax pipeline report: compute-matched sampling on synthetic word problems", "",
           "## Headline", "", PAPER, "", "This run:", ""]
    out += [f"- {line}" for line in comparisons(results)]
    if "skipped" not in grpo:
        out.append(f"- GRPO from {grpo['from']}: held-out accuracy {_f(grpo['before'])} -> {_f(grpo['after'])}")
    out += ["", "Values are shown with bootstrap 95% intervals. Tiny models on a synthetic task: compare "
                "directions and sizes with care; an interval that overlaps the other's is no difference.",
            "", "## Task and models", "",
            f"Level {data['level']} word problems: {data['pretrain']} gold solutions for pretraining, "
            f"{data['questions']} sampling questions, {data['test']} test questions. Example:", "",
            "```", data["example"]["prompt"].rstrip(), data["example"]["completion"], "```", "",
            "| model | matmul params | pretraining steps | train FLOPs | held-out greedy accuracy |",
            "|---|---|---|---|---|"]
    for name, r in pre.items():
        out.append(f"| {name} | {r['matmul_params']:,} | {r['steps']} | {r['train_flops']:.3g} | {_f(r['accuracy'])} |")
    out += ["", "## Sampling compute: planned vs realised", "",
            f"Samples per question {smp['samples_per_question']}; planned with "
            f"{smp['planned_tokens_per_sample']} tokens per sample (the gold solutions' mean) and 2·P FLOPs per "
            "token plus attention. Each budget's data are the first S samples of every question.", "",
            "| dataset | model | samples/question | planned FLOPs | realised FLOPs | realised/planned | "
            "mean generated tokens |", "|---|---|---|---|---|---|---|"]
    for f in smp["flops"]:
        out.append(f"| {f['dataset']} | {f['model']} | {f['samples_per_question']} | {f['planned_flops']:.3e} | "
                   f"{f['realised_flops']:.3e} | {f['realised_over_planned']:.2f} | {f['mean_generated_tokens']:.1f} |")
    out += ["", "## Coverage, diversity, false-positive rate", "",
            "coverage@S = share of questions with a correct answer among the S samples; diversity@S = unique "
            "correct solutions per question; FPR = share of answer-correct solutions with a wrong equation "
            "(step checker). Kept = answer-correct solutions (the fine-tuning data).", "",
            "| dataset | S | coverage@S | diversity@S (all) | diversity@S (solved) | FPR | kept |",
            "|---|---|---|---|---|---|---|"]
    for name, r in flt["datasets"].items():
        out.append(f"| {name} | {r['samples_per_question']} | {_f(r['coverage'])} | {_f(r['diversity'], 2)} | "
                   f"{_f(r['diversity_solved'], 2)} | {_f(r['fpr'])} | {r['kept']} |")
    out += ["", "![coverage](coverage.png)", "", "## Fine-tuning: held-out greedy accuracy", "",
            "| setup | model | data | examples | steps | accuracy | base accuracy |", "|---|---|---|---|---|---|---|"]
    for r in ft["runs"]:
        if "skipped" in r:
            out.append(f"| {r['setup']} | {r['model']} | {r['data']} | 0 | - | skipped: {r['skipped']} | "
                       f"{r['base_accuracy']:.3f} |")
        else:
            out.append(f"| {r['setup']} | {r['model']} | {r['data']} | {r['examples']} | {r['steps']} | "
                       f"{_f(r['accuracy'])} | {r['base_accuracy']:.3f} |")
    out += ["", "![accuracy](accuracy.png)", "", "## GRPO", ""]
    if "skipped" in grpo:
        out.append(f"Skipped: {grpo['skipped']}.")
    else:
        out += [f"From the best fine-tuned model ({grpo['from']}), {grpo['steps']} steps: held-out greedy accuracy "
                f"{_f(grpo['before'])} before, {_f(grpo['after'])} after ({grpo['seconds']:.0f} s).", "",
                "![reward](reward.png)"]
    out += search_section(results.get("search"))
    out += ["", "## Self-improvement rounds (WC on its own filtered samples)", "",
            f"Base WC accuracy {_f(rounds['base_accuracy'])}; {rounds['samples_per_question']} samples per question "
            "each round; FLOPs = realised sampling + training.", "",
            "| round | kept | coverage | sampling FLOPs | training FLOPs | cumulative FLOPs | accuracy |",
            "|---|---|---|---|---|---|---|"]
    for r in rounds["rounds"]:
        acc = f"skipped: {r['skipped']}" if r.get("skipped") else _f(r["accuracy"])
        out.append(f"| {r['round']} | {r['kept']} | {_f(r['coverage'])} | {r['sampling_flops']:.3e} | "
                   f"{r['train_flops']:.3e} | {r['cumulative_flops']:.3e} | {acc} |")
    seconds = {k: v.get("stage_seconds") for k, v in results.items() if isinstance(v, dict)}
    out += ["", "## Time per stage (s)", "", "| " + " | ".join(seconds) + " |", "|" + "---|" * len(seconds),
            "| " + " | ".join("-" if v is None else f"{v:.0f}" for v in seconds.values()) + " |", ""]
    return "\n".join(out)


def search_section(s: dict | None) -> list[str]:
    """The search stage's markdown: labels, the PRM's held-out metrics, the table of the methods
    at matched FLOPs and the comparison with search-and-learn."""
    out = ["", "## Verifier-guided search at matched FLOPs", ""]
    if s is None:
        return out + ["Not run."]
    if "skipped" in s:
        return out + [f"Skipped: {s['skipped']}."]
    lab, sp, p = s["labels"], s["split"], s["prm"]
    ev = ", ".join(f"{k} {v:.3f}" for k, v in p["eval"].items() if k != "steps") or "not evaluated"
    out += [f"Step labels from the step checker (final answer graded; first-error rule) on the sampled WC and SE "
            f"solutions: {lab['solutions']} solutions, {lab['steps']} steps, {lab['correct_step_fraction']:.2f} "
            f"correct. The PRM starts from the policy ({s['policy']}) and trains {p['steps']} steps on "
            f"{sp['train_solutions']} solutions; on {sp['heldout_solutions']} held-out ones ("
            f"{sp['heldout_questions']} questions): {ev} ({p['seconds']:.0f} s).", "",
            f"On the first {s['questions']} test questions, the policy {s['policy']} (held-out greedy accuracy "
            f"{_f(s['policy_accuracy'])}): beam search with W = k beams sets each level's budget; majority vote, "
            "PRM best-of-N and PRM-weighted vote take the N whose realised FLOPs are nearest it.",
            selection_markdown(s["selection"]), "", "![search](search.png)", "", SEARCH_AND_LEARN, "", "This run:", ""]
    out += [f"- {line}" for line in search_lines(s)]
    t = s["seconds"]
    out += ["", f"Stage time: labels {t['labels']:.0f} s, PRM {t['prm']:.0f} s, comparison {t['compare']:.0f} s."]
    return out


def plots(run: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre, curve = results["pretrain"]["models"], results["filter"]["coverage_curve"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    p_wc = pre["wc"]["matmul_params"]
    for name, ys in curve.items():
        ks = list(range(1, len(ys) + 1))
        axes[0].plot(ks, ys, marker=".", label=name.upper())
        axes[1].plot([k * pre[name]["matmul_params"] / p_wc for k in ks], ys, marker=".", label=name.upper())
    axes[0].set_xlabel("samples per question (k)")
    axes[1].set_xlabel("sampling compute per question (WC samples)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_ylabel("coverage@k")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Coverage of the sampling questions")
    fig.tight_layout()
    fig.savefig(run / "coverage.png", dpi=110)
    plt.close(fig)

    labels, vals = [], []
    for name, r in pre.items():
        labels.append(f"{name} (pretrained)")
        vals.append(r["accuracy"])
    for r in results["finetune"]["runs"]:
        if "skipped" not in r:
            labels.append(f"{r['model']} <- {r['data']}")
            vals.append(r["accuracy"])
    g = results["grpo"]
    if "skipped" not in g:
        labels.append(f"{g['from']} + GRPO")
        vals.append(g["after"])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, [v["value"] for v in vals], xerr=[[v["value"] - v["low"] for v in vals],
                                                  [v["high"] - v["value"] for v in vals]], capsize=3, color="tab:blue")
    ax.set_yticks(y, labels)
    ax.set_xlabel("held-out greedy accuracy (95% interval)")
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(run / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if "skipped" not in g and g["reward_curve"]:
        steps, reward, acc = zip(*g["reward_curve"])
        ax.plot(steps, reward, label="mean reward")
        ax.plot(steps, acc, label="sampled accuracy", alpha=0.7)
        ax.legend()
    else:
        ax.text(0.5, 0.5, "GRPO skipped", ha="center")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run / "reward.png", dpi=110)
    plt.close(fig)

    s = results.get("search")
    if s is not None and "skipped" not in s:
        plot_selection(s["selection"], run / "search.png")


def write(run: Path, c, results: dict) -> str:
    text = markdown(results)
    (run / "report.md").write_text(text)
    plots(run, results)
    return text


def console_summary(results: dict) -> str:
    lines = ["", "=" * 100, "Summary (full report: report.md)", "", PAPER, "", "This run:"]
    lines += [f"  {x}" for x in comparisons(results)]
    lines.append("  held-out accuracy: " + ", ".join(f"{k} {v['accuracy']['value']:.3f}"
                                                    for k, v in results["pretrain"]["models"].items()) + " (pretrained)")
    g = results["grpo"]
    if "skipped" not in g:
        lines.append(f"  GRPO from {g['from']}: {_f(g['before'])} -> {_f(g['after'])}")
    s = results.get("search")
    if s is not None and "skipped" not in s:
        lines += [f"  {x}" for x in search_lines(s)]
    for r in results["rounds"]["rounds"]:
        acc = "skipped" if r.get("skipped") else f"{r['accuracy']['value']:.3f}"
        lines.append(f"  self-improvement round {r['round']}: accuracy {acc}, kept {r['kept']}, "
                     f"cumulative {r['cumulative_flops']:.3g} FLOPs")
    lines.append("=" * 100)
    return "\n".join(lines)

"""The end-to-end pipeline (reasonax.pipeline) at a small size: every stage runs, the artefacts agree
with each other and with numbers recomputed here from the raw samples, and a rerun resumes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from reasonax import jsonl, pipeline
from reasonax.eval import grader
from reasonax.model.flops import matmul_params
from reasonax.model.config import TINY_MODEL


def tiny_config(workdir):
    c = pipeline.default_config()
    c.workdir = str(workdir)
    c.task.update(dict(num_pretrain=1000, num_questions=8, num_test=16))
    wc = dict(TINY_MODEL, hidden_size=32, intermediate_size=96, num_layers=1, num_heads=2, num_kv_heads=1)
    c.models.wc.overrides = c.models.student.overrides = wc
    c.models.se.overrides = dict(TINY_MODEL, hidden_size=64, intermediate_size=256, num_layers=1, num_heads=4,
                                 num_kv_heads=2)
    c.models.wc.steps, c.models.se.steps, c.models.student.steps = 300, 300, 30
    c.train.update(dict(batch_size=8, seq_len=128, warmup_steps=5))
    c.sampling.se_samples.update(dict(low=1, high=2))
    c.sampling.temperature, c.sampling.max_new_tokens = 1.0, 48
    c.finetune.update(dict(steps=3, warmup_steps=1))
    c.grpo.update(dict(steps=2, prompts_per_step=2, group_size=4))
    c.search.update(dict(questions=4, ks=(1, 2), expansions=4, max_steps=4, calibration_questions=2,
                         calibration_samples=2, heldout=0.25))
    c.search.prm.update(dict(steps=4, batch_size=8, seq_len=128, warmup_steps=1))
    c.n_boot, c.peak_flops = 50, "1e11"
    return c


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    c = tiny_config(tmp_path_factory.mktemp("pipeline"))
    return c, pipeline.run(c)


def _rows(run, model):
    return [r for _, r in jsonl.read(run / "samples" / f"{model}.jsonl")]


def test_report_and_plots_are_written(demo):
    c, res = demo
    run = Path(c.workdir)
    for name in ("report.md", "coverage.png", "accuracy.png", "reward.png", "search.png"):
        assert (run / name).stat().st_size > 0
    text = (run / "report.md").read_text()
    assert "Gemma2-27B" in text and "| wc-high |" in text and "Self-improvement rounds" in text
    assert set(json.loads((run / "config.json").read_text())) == set(c.to_dict()) - {"workdir"}


def test_samples_are_compute_matched_and_accounted(demo):
    c, res = demo
    run = Path(c.workdir)
    p_wc = matmul_params(pipeline.preset_config("wc", c))
    p_se = matmul_params(pipeline.preset_config("se", c))
    assert p_se / p_wc >= 3.0
    for b, s_se in c.sampling.se_samples.items():
        s = res["sample"]["samples_per_question"][b]
        assert s == {"se": s_se, "wc": math.floor(p_se / p_wc * s_se)} and s["wc"] >= 3 * s_se
    assert len(_rows(run, "wc")) == c.task.num_questions * res["sample"]["samples_per_question"]["high"]["wc"]
    flops = {f["dataset"]: f for f in res["sample"]["flops"]}
    for b in pipeline.BUDGETS:
        wc, se, nm = flops[f"wc-{b}"], flops[f"se-{b}"], flops[f"wc-{b}-number-matched"]
        assert nm["realised_flops"] < wc["realised_flops"]  # fewer samples of the same model
        # dense FLOPs of each generated token are 2 P: the realised total is at least that
        rows = [r for r in _rows(run, "wc") if r["sample_index"] < wc["samples_per_question"]]
        assert wc["realised_flops"] >= 2 * p_wc * sum(r["tokens"] for r in rows)
        assert 0 < se["planned_flops"] and 0 < wc["realised_over_planned"]
    assert flops["wc-low"]["realised_flops"] < flops["wc-high"]["realised_flops"]


def test_filter_agrees_with_the_raw_samples(demo):
    c, res = demo
    run = Path(c.workdir)
    gold = {r["id"]: r["answer"] for _, r in jsonl.read(run / "data" / "questions.jsonl")}
    for name, d in res["filter"]["datasets"].items():
        rows = [r for r in _rows(run, d["model"]) if r["sample_index"] < d["samples_per_question"]]
        solved = {r["prompt_id"] for r in rows if grader.grade(r["text"], gold[r["prompt_id"]])}
        assert d["coverage"]["value"] == pytest.approx(len(solved) / c.task.num_questions)  # pass@n: any correct
        kept = [r for _, r in jsonl.read(run / "datasets" / f"{name}.jsonl")]
        assert d["kept"] == len(kept) == sum(r["correct"] for r in rows)
        for k in kept:
            assert grader.grade(k["completion"], gold[k["id"].rsplit("/", 1)[0]])
    assert sum(d["kept"] for d in res["filter"]["datasets"].values()) > 0  # something to fine-tune on


def test_finetune_grpo_and_rounds(demo):
    c, res = demo
    runs = res["finetune"]["runs"]
    assert [(r["setup"], r["model"], r["data"]) for r in runs] == pipeline.finetune_setups(c)
    done = [r for r in runs if "skipped" not in r]
    assert done, "no fine-tune ran"
    for r in done:
        assert r["examples"] == res["filter"]["datasets"][r["data"]]["kept"]
        assert (Path(c.workdir) / r["hf"] / "config.json").is_file()  # relative to the run: movable
        assert 0 <= r["accuracy"]["low"] <= r["accuracy"]["value"] <= r["accuracy"]["high"] <= 1
    g = res["grpo"]
    best = max(done, key=lambda r: r["accuracy"]["value"])
    assert g["from"] == f"{best['model']}-on-{best['data']}" and g["before"] == best["accuracy"]
    assert [s for s, _, _ in g["reward_curve"]] == list(range(1, c.grpo.steps + 1))
    rounds = res["rounds"]["rounds"]
    total = 0.0
    for r in rounds:
        total += r["sampling_flops"] + r["train_flops"]
        assert r["cumulative_flops"] == pytest.approx(total)
    if not rounds[0]["skipped"]:
        assert [r["round"] for r in rounds] == list(range(1, c.rounds + 1))


def test_rerun_skips_finished_stages_and_resumes_an_interrupted_one(demo):
    c, res = demo
    run = Path(c.workdir)
    again = pipeline.run(c)
    assert again == res  # every stage read back, nothing recomputed
    # interrupt the last round's fine-tune after its final checkpoint, before its export
    last = res["rounds"]["rounds"][-1]
    assert last["round"] == c.rounds == 2 and not last["skipped"]
    model = run / "rounds" / f"round{last['round']}" / "model"
    (model / "done.json").unlink()
    shutil.rmtree(model / "hf")
    for stage in ("rounds", "report"):
        (run / "stages" / f"{stage}.json").unlink()
    resumed = pipeline.run(c)
    for a, b in zip(resumed["rounds"]["rounds"], res["rounds"]["rounds"]):
        assert a["accuracy"] == b["accuracy"] and a["kept"] == b["kept"]
    # interrupt the search stage after the PRM's final checkpoint, before its export: the labels and
    # the comparison's output are kept, the PRM resumes from its checkpoint and exports the same model
    prm_dir = run / res["search"]["prm"]["hf"]
    (prm_dir.parent / "done.json").unlink()
    shutil.rmtree(prm_dir)
    for stage in ("search", "report"):
        (run / "stages" / f"{stage}.json").unlink()
    again = pipeline.run(c)["search"]
    assert (prm_dir / "config.json").is_file()
    assert again["selection"] == res["search"]["selection"] and again["labels"] == res["search"]["labels"]
    assert again["prm"]["eval"]["step_accuracy"] == pytest.approx(res["search"]["prm"]["eval"]["step_accuracy"])
    with pytest.raises(ValueError, match="grpo.steps"):
        changed = tiny_config(c.workdir)
        changed.grpo.steps = 3
        pipeline.run(changed)


def test_search_compares_the_four_methods_at_matched_flops(demo):
    c, res = demo
    run = Path(c.workdir)
    s = res["search"]
    best = pipeline.best_finetuned(res)
    assert s["policy"] == f"{best['model']}-on-{best['data']}" == res["grpo"]["from"]
    # every sampled WC and SE solution is labelled; whole questions are held out
    n_samples = len(_rows(run, "wc")) + len(_rows(run, "se"))
    labels = [r for _, r in jsonl.read(run / "search" / "step_labels.jsonl")]
    assert s["labels"]["solutions"] == len(labels) == n_samples
    assert s["split"]["train_solutions"] + s["split"]["heldout_solutions"] == n_samples
    train = {r["prompt_id"] for _, r in jsonl.read(run / "search" / "prm_train.jsonl")}
    held = {r["prompt_id"] for _, r in jsonl.read(run / "search" / "prm_heldout.jsonl")}
    assert held and not train & held and len(held) == s["split"]["heldout_questions"] == 2  # ceil(0.25 x 8)
    for r in labels:  # the step checker's first-error rule, with the answer graded
        bad = [i for i, ok in enumerate(r["labels"]) if not ok]
        assert not bad or all(not ok for ok in r["labels"][bad[0]:])
        if not r["correct"]:
            assert not r["labels"][-1]
    assert (run / s["prm"]["hf"] / "config.json").is_file() and 0 <= s["prm"]["eval"]["step_accuracy"] <= 1
    sel = s["selection"]
    assert s["questions"] == c.search.questions
    assert [lv["level"] for lv in sel["levels"]] == list(c.search.ks)
    for lv in sel["levels"]:
        m = lv["methods"]
        assert set(m) == {"majority", "prm-best-of-n", "prm-weighted", "beam"}
        assert (m["beam"]["width"], m["beam"]["expansions"]) == (lv["level"], c.search.expansions)
        assert m["majority"]["prm_flops"] == 0 and m["beam"]["prm_flops"] > 0 and m["prm-best-of-n"]["prm_flops"] > 0
        flops = [v["flops"] for v in m.values()]
        assert max(flops) <= 1.1 * lv["budget"] and min(flops) >= 0.9 * lv["budget"], m  # matched within +-10%
        for v in m.values():
            assert 0 <= v["accuracy"]["low"] <= v["accuracy"]["value"] <= v["accuracy"]["high"] <= 1
    text = (run / "report.md").read_text()
    assert "## Verifier-guided search at matched FLOPs" in text and "| 2 | beam | 2 x 4 |" in text
    assert "search-and-learn" in text and "![search](search.png)" in text


def test_sigterm_stops_a_sampling_job_after_the_block_in_flight_and_the_rerun_ends_as_an_uninterrupted_one(
        tmp_path, monkeypatch):
    """sample_model (the sample and rounds stages' job) on a random tiny model: a SIGTERM once the
    first question's samples are on disk ends the job with status 75, whole questions kept in
    <samples>.partial; run again, it writes the graded file an uninterrupted job writes."""
    import functools
    import os
    import signal

    from reasonax import cli
    from reasonax.model import convert
    from reasonax.sample import generate_cli
    from tests.hf_reference import random_jax_params

    c = tiny_config(tmp_path / "run")
    c.task.num_pretrain = 8
    run = Path(c.workdir)
    pipeline.stage_data(c, run, {}, pipeline.Progress())
    convert.save_orbax(random_jax_params(pipeline.preset_config("wc", c), seed=3), pipeline.preset_config("wc", c),
                       tmp_path / "model")
    # 2 slots, 4 steps per block: the questions finish one after another (same rows as any slot count)
    monkeypatch.setattr(pipeline.sample, "generate", functools.partial(pipeline.sample.generate, num_slots=2,
                                                                       block_steps=4))

    def job(out, progress):
        return pipeline.sample_model(tmp_path / "model", out, 2, 7, run, c, progress, "wc",
                                     should_stop=progress.should_stop)

    straight = job(tmp_path / "straight.jsonl", pipeline.Progress())
    append = generate_cli.append_groups

    def append_then_sigterm(path, n, record):  # the notice arrives once the first question is written
        write = append(path, n, record)

        def on_complete(done):
            write(done)
            if path.is_file() and not sent:
                sent.append(os.kill(os.getpid(), signal.SIGTERM))

        return on_complete

    sent = []
    monkeypatch.setattr(generate_cli, "append_groups", append_then_sigterm)
    out = tmp_path / "stopped.jsonl"
    before = signal.getsignal(signal.SIGTERM)
    with cli.Sigterm("test") as notice, pytest.raises(SystemExit) as stop:
        job(out, pipeline.Progress(notice))
    assert stop.value.code == cli.EXIT_PREEMPTED and sent
    assert signal.getsignal(signal.SIGTERM) == before  # given back
    kept = [r["prompt_id"] for _, r in jsonl.read(out.with_name(out.name + ".partial"))]
    assert not out.exists() and 0 < len(set(kept)) < c.task.num_questions
    assert sorted(kept.count(q) for q in set(kept)) == [2] * len(set(kept))  # whole questions only
    monkeypatch.setattr(generate_cli, "append_groups", append)
    assert job(out, pipeline.Progress()) == straight
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
    assert not out.with_name(out.name + ".partial").exists()

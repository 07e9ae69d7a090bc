"""The evaluate CLI end to end on a tiny model (and stopped by SIGTERM), and the LLM-judge label path."""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from reasonax.eval import judge, metrics
from tests import hf_reference as R
from tests.test_generate_cli import ENV, ROOT, _tokenizer_dir


def test_judge_verdicts_are_parsed_strictly():
    assert judge.parse_verdict("The steps check out.\nVERDICT: CORRECT") is True
    assert judge.parse_verdict("verdict: incorrect") is False
    assert judge.parse_verdict("VERDICT: CORRECT ... on reflection VERDICT: INCORRECT") is False  # the last counts
    assert judge.parse_verdict("I think it is correct") is None
    assert judge.parse_verdict("") is None


def test_judge_labels_feed_the_fpr():
    items = [("p1", 0, "1+1?", "1+1=3, so 2", "2"), ("p1", 1, "1+1?", "1+1=2", "2"), ("p2", 0, "2*2?", "4", "4")]
    replies = {"1+1=3": "VERDICT: INCORRECT", "1+1=2": "VERDICT: CORRECT", "4": "no idea"}

    def fake_judge(prompts):
        assert all("Reference answer" in p for p in prompts)
        return [next(v for k, v in replies.items() if f"Student solution:\n{k}" in p) for p in prompts]

    labels = judge.judge_labels(items, fake_judge)
    assert [lab.reasoning_correct for lab in labels] == [False, True, None]
    est = metrics.fpr(labels, n_boot=50)
    assert est.value == pytest.approx(0.5)  # p1: one of two judged correct-answer solutions is wrong


PROBLEMS = 8


def _args(tmp_path, out):
    """8 problems x 4 samples x 16 tokens through 2 decode slots, one step per block."""
    return [sys.executable, "-m", "reasonax.evaluate", "--config=configs/eval_gsm8k_gemma3_270m.py",
            f"--config.generate.model={tmp_path / 'model'}", f"--config.dataset={tmp_path / 'data.jsonl'}",
            "--config.few_shot=", f"--config.output_dir={out}", "--config.generate.sampling.max_new_tokens=16",
            "--config.generate.num_slots=2", "--config.generate.block_steps=1", "--config.generate.progress=False",
            "--config.n_boot=50"]


def _graded(out):
    return sorted((json.loads(line) for line in (out / "graded.jsonl").read_text().splitlines()),
                  key=lambda r: (r["prompt_id"], r["sample_index"]))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny model, a dataset and an uninterrupted evaluate run: (tmp dir, the CLI's stdout)."""
    tmp_path = tmp_path_factory.mktemp("evaluate")
    R.save_hf_model("gemma2", tmp_path / "model", seed=2)
    _tokenizer_dir(tmp_path / "model")
    (tmp_path / "data.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "question": f"w{10 + i} w{20 + i}", "answer": str(i)}) + "\n"
        for i in range(PROBLEMS)))
    proc = subprocess.run(_args(tmp_path, tmp_path / "run"), capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path, proc.stdout


def test_evaluate_cli_on_a_tiny_model(evaluated):
    tmp_path, stdout = evaluated
    out = tmp_path / "run"
    assert "| k | pass@k | maj@k |" in stdout
    graded = [json.loads(line) for line in (out / "graded.jsonl").read_text().splitlines()]
    assert len(graded) == PROBLEMS * 4 and all({"answer", "gold", "correct", "steps_ok"} <= set(r) for r in graded)
    m = json.loads((out / "metrics.json").read_text())
    # pass@1 is the mean per-sample accuracy: recompute it from the graded records
    assert m["by_k"]["1"]["pass@k"]["value"] == pytest.approx(sum(r["correct"] for r in graded) / len(graded))
    assert (out / "pass_at_k.png").stat().st_size > 1000 and (out / "metrics.md").is_file()


def test_sigterm_exits_75_with_whole_problems_kept_and_the_rerun_grades_as_the_uninterrupted_run(evaluated):
    tmp_path, _ = evaluated
    out = tmp_path / "stopped"
    proc = subprocess.Popen(_args(tmp_path, out), env=ENV, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    samples, deadline = out / "samples.jsonl", time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (
            samples.exists() and samples.read_text().count("\n") >= 4):  # the first problem's 4 samples
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]  # exited by itself, not killed by the signal (-15)
    kept = Counter(json.loads(line)["prompt_id"] for line in samples.read_text().splitlines())
    assert 0 < len(kept) < PROBLEMS and set(kept.values()) == {4}, kept  # whole problems only
    assert f"{len(kept)} of {PROBLEMS} problems' samples in {samples}; rerun the same command" in err
    assert not (out / "graded.jsonl").exists() and not (out / "metrics.json").exists()
    rerun = subprocess.run(_args(tmp_path, out), capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _graded(out) == _graded(tmp_path / "run")
    metrics_of = [json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "run")]
    assert metrics_of[0]["by_k"] == metrics_of[1]["by_k"]

"""The evaluate CLI end to end on a tiny model, and the LLM-judge label path."""

import json
import subprocess
import sys

import pytest

from reasonax.eval import judge, metrics
from tests import hf_reference as R
from tests.test_generate_cli import _tokenizer_dir


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


def test_evaluate_cli_on_a_tiny_model(tmp_path):
    R.save_hf_model("gemma2", tmp_path / "model", seed=2)
    _tokenizer_dir(tmp_path / "model")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "question": f"w{10 + i} w{20 + i}", "answer": str(i)}) + "\n"
                            for i in range(4)))
    out = tmp_path / "run"
    args = [sys.executable, "-m", "reasonax.evaluate", "--config=configs/eval_gsm8k_gemma3_270m.py",
            f"--config.generate.model={tmp_path / 'model'}", f"--config.dataset={data}", "--config.few_shot=",
            f"--config.output_dir={out}", "--config.generate.sampling.max_new_tokens=5",
            "--config.generate.progress=False", "--config.n_boot=50"]
    proc = subprocess.run(args, capture_output=True, text=True,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| k | pass@k | maj@k |" in proc.stdout
    graded = [json.loads(line) for line in (out / "graded.jsonl").read_text().splitlines()]
    assert len(graded) == 4 * 4 and all({"answer", "gold", "correct", "steps_ok"} <= set(r) for r in graded)
    m = json.loads((out / "metrics.json").read_text())
    # pass@1 is the mean per-sample accuracy: recompute it from the graded records
    assert m["by_k"]["1"]["pass@k"]["value"] == pytest.approx(sum(r["correct"] for r in graded) / len(graded))
    assert (out / "pass_at_k.png").stat().st_size > 1000 and (out / "metrics.md").is_file()

"""The generate CLI end to end on a tiny model: records, summary, crash-safe resume, SIGTERM, bad lines."""

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import tokenizers
import transformers

from tests import hf_reference as R


def _tokenizer_dir(path):
    """A word-level HF tokenizer over the tiny vocab, saved as tokenizer.json in the model dir."""
    words = ["<pad>", "<eos>", "<bos>"] + [f"w{i}" for i in range(3, R.VOCAB)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w3"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                                pad_token="<pad>")
    fast.save_pretrained(str(path))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    R.save_hf_model("qwen3", root / "model", seed=1)
    _tokenizer_dir(root / "model")
    lines = [json.dumps({"id": f"q{i}", "question": " ".join(f"w{(i * 7 + j) % 90 + 5}" for j in range(4 + i))})
             for i in range(5)]
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return root


ROOT = Path(__file__).resolve().parents[1]
ENV = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _args(root, out, *extra):
    return [sys.executable, "-m", "reasonax.sample.generate_cli", "--config=configs/generate_gemma3_270m.py",
            f"--config.model={root / 'model'}", f"--config.prompts={root / 'prompts.jsonl'}",
            f"--config.output={out}", "--config.sampling.n=2", "--config.sampling.max_new_tokens=6",
            "--config.num_slots=4", "--config.block_steps=3", "--config.progress=False", *extra]


def _run(root, out, *extra):
    return subprocess.run(_args(root, out, *extra), capture_output=True, text=True, env=ENV, cwd=ROOT)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_records_and_summary(setup):
    out = setup / "a.jsonl"
    proc = _run(setup, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _records(out)
    assert len(recs) == 10 and {r["prompt_id"] for r in recs} == {f"q{i}" for i in range(5)}
    assert all(r["num_tokens"] >= 1 and r["finish_reason"] in ("eos", "length", "stop") for r in recs)
    summary = json.loads((setup / "a.jsonl.summary.json").read_text())
    assert summary["samples"] == 10 and summary["generated_tokens"] == sum(r["num_tokens"] for r in recs)
    assert summary["flops"]["total"] > 0 and summary["generated_tokens_per_s"] > 0


@pytest.fixture(scope="module")
def many(setup):
    """A longer run, uninterrupted (16 prompts x 2 samples x 24 tokens through 2 slots, one step per
    decode block: hundreds of blocks): (its extra flags, its output)."""
    prompts = setup / "many.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"m{i}", "question": f"w{i % 90 + 5} w{(i * 11) % 90 + 5}"}) + "\n"
                               for i in range(16)))
    extra = (f"--config.prompts={prompts}", "--config.sampling.max_new_tokens=24", "--config.num_slots=2",
             "--config.block_steps=1")
    proc = _run(setup, setup / "full.jsonl", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return extra, setup / "full.jsonl"


def _key(r):
    return r["prompt_id"], r["sample_index"]


def test_resume_after_a_crash_gives_the_uninterrupted_file(setup, many):
    extra, full = many
    want = _records(full)
    # simulate a crash: keep 3 complete records (an unfinished group) and half of the next line
    cut = setup / "cut.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    proc = _run(setup, cut, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(_records(cut), key=_key) == sorted(want, key=_key)
    summary = json.loads((setup / "cut.jsonl.summary.json").read_text())
    assert summary["prompts_skipped_as_done"] == 1  # the first prompt's two samples survived the crash


def test_sigterm_exits_75_with_whole_prompts_kept_and_the_rerun_ends_with_the_uninterrupted_records(setup, many):
    """SIGTERM once the first prompt's records are on disk: the run stops after the decode block in
    flight (hundreds remain), exits 75 with only whole prompts written, and the same command
    finishes them."""
    extra, full = many
    stopped_out = setup / "stopped.jsonl"
    stopped = subprocess.Popen(_args(setup, stopped_out, *extra), env=ENV, cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while stopped.poll() is None and time.time() < deadline and not (
            stopped_out.exists() and stopped_out.read_text().count("\n") >= 2):
        time.sleep(0.01)
    assert stopped.poll() is None, stopped.communicate()[1][-3000:]
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=300)
    assert stopped.returncode == 75, err[-3000:]  # exited by itself, not killed by the signal (-15)
    kept = Counter(r["prompt_id"] for r in _records(stopped_out))
    assert 0 < len(kept) < 16 and set(kept.values()) == {2}, kept  # whole prompts only
    assert f"{len(kept)} of 16 prompts complete in {stopped_out}; rerun the same command" in err
    rerun = _run(setup, stopped_out, *extra)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((setup / "stopped.jsonl.summary.json").read_text())["prompts_skipped_as_done"] == len(kept)
    assert sorted(_records(stopped_out), key=_key) == sorted(_records(full), key=_key)


def test_bad_prompt_line_is_reported_with_its_number(setup):
    bad = setup / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "w5 w6"}\n{"id": "b", "question": \n')
    out = setup / "never.jsonl"
    args = [f"--config.prompts={bad}"]
    proc = _run(setup, out, *args)
    assert proc.returncode != 0
    assert f"{bad}:2: invalid JSON" in proc.stderr

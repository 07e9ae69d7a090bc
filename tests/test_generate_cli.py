"""The generate CLI end to end on a tiny model: records, summary, crash-safe resume, bad lines."""

import json
import subprocess
import sys

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


def _run(root, out, *extra):
    args = [sys.executable, "-m", "reasonax.sample.generate_cli", "--config=configs/generate_gemma3_270m.py",
            f"--config.model={root / 'model'}", f"--config.prompts={root / 'prompts.jsonl'}",
            f"--config.output={out}", "--config.sampling.n=2", "--config.sampling.max_new_tokens=6",
            "--config.num_slots=4", "--config.block_steps=3", "--config.progress=False", *extra]
    return subprocess.run(args, capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                                                                     "HF_HUB_OFFLINE": "1"})


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


def test_resume_after_a_crash_gives_the_uninterrupted_file(setup):
    full = setup / "full.jsonl"
    assert _run(setup, full).returncode == 0
    want = _records(full)
    # simulate a crash: keep 3 complete records (an unfinished group) and half of the next line
    cut = setup / "cut.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    proc = _run(setup, cut)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = _records(cut)
    key = lambda r: (r["prompt_id"], r["sample_index"])  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key)
    summary = json.loads((setup / "cut.jsonl.summary.json").read_text())
    assert summary["prompts_skipped_as_done"] == 1  # q0's two samples survived the crash


def test_bad_prompt_line_is_reported_with_its_number(setup):
    bad = setup / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "w5 w6"}\n{"id": "b", "question": \n')
    out = setup / "never.jsonl"
    args = [f"--config.prompts={bad}"]
    proc = _run(setup, out, *args)
    assert proc.returncode != 0
    assert f"{bad}:2: invalid JSON" in proc.stderr

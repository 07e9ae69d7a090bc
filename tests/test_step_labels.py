"""Step labels for PRMs: the step checker's rules and Monte Carlo (Math-Shepherd) labels on hand
cases, the rollout FLOPs against a recount, resume of both labelling CLIs, bad input."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import tokenizers
import transformers

from reasonax import jsonl, typed
from reasonax.eval import checker_labels, grader, step_labels, stepwise
from reasonax.tasks import word_problems
from tests import hf_reference as R

# ------------------------------------------------------------------------------------------------
# the step checker's rules (PRM800K's first-error convention)


def test_split_steps_drops_blank_steps():
    assert step_labels.split_steps("a = 1\n\n  \nb\n", "\n") == ["a = 1", "b"]
    assert step_labels.split_steps("2 + 2 = 4. 4 * 3 = 12. The answer is 12.", ". ") == [
        "2 + 2 = 4", "4 * 3 = 12", "The answer is 12."]
    with pytest.raises(ValueError, match="separator is empty"):
        step_labels.split_steps("x", "")


@pytest.mark.parametrize("steps, want", [
    (["2 + 3 = 5", "5 * 4 = 20", "The answer is \\boxed{20}."], [True, True, True]),      # all check
    (["2 + 3 = 6", "6 * 4 = 24", "The answer is \\boxed{24}."], [False, False, False]),   # wrong, then propagated
    (["We add first.", "2 + 3 = 6", "Then we stop."], [True, False, False]),           # no equation before / after
    (["2 + 3 = 5", "So far so good.", "5 * 4 = 21", "5 * 4 = 20"], [True, True, False, False]),  # first error wins
    (["2 + 3 = 5 and 5 - 1 = 3", "4 + 4 = 8"], [False, False]),                        # one bad equation of two
])
def test_checker_labels_hand_cases(steps, want):
    assert step_labels.checker_labels(steps) == want


def test_checker_labels_answer_grading_marks_only_the_last_step():
    steps = ["2 + 3 = 5", "The answer is \\boxed{6}."]
    assert step_labels.checker_labels(steps) == [True, True]
    assert step_labels.checker_labels(steps, answer_correct=False) == [True, False]
    assert step_labels.step_verdicts(steps) == [True, None]


def test_mc_labels_hand_cases():
    assert step_labels.mc_labels([0, 2, 4], 4, True, "soft") == [0.0, 0.5, 1.0, 1.0]
    assert step_labels.mc_labels([0, 2, 4], 4, False, "hard") == [False, True, True, False]
    assert step_labels.mc_labels([], 4, False, "soft") == [0.0]  # a one-step solution: only its own answer
    with pytest.raises(ValueError, match="correct <= k"):
        step_labels.mc_label(5, 4, "soft")
    with pytest.raises(ValueError, match="label mode"):
        step_labels.mc_label(1, 4, "fuzzy")


# ------------------------------------------------------------------------------------------------
# the step-checker CLI on word-problem solutions: records, resume, the demo's sample files


def _word_solutions(path, n=7):
    """Gold word-problem solutions, every other one with its first equation made wrong."""
    recs = word_problems.records(n, "train", 2, 0)
    for i, r in enumerate(recs):
        if i % 2:
            r["completion"] = r["completion"].replace(" = ", " = 1", 1)
    jsonl.rewrite(path, recs)
    return recs


def _checker_config(files, output, **kw):
    c = checker_labels.default_config()
    c.solutions.files, c.solutions.separator, c.output, c.progress = tuple(map(str, files)), ". ", str(output), False
    c.chunk = 2
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_checker_cli_labels_and_resumes(tmp_path):
    recs = _word_solutions(tmp_path / "sols.jsonl")
    full = tmp_path / "full.jsonl"
    summary = checker_labels.run(_checker_config([tmp_path / "sols.jsonl"], full))
    got = [r for _, r in stepwise.read_stepwise(full)]
    assert [r["id"] for r in got] == [r["id"] for r in recs]
    for i, r in enumerate(got):  # level 2: two equations and the answer sentence
        assert r["completions"][0] == recs[i]["completion"].split(". ")[0]
        assert r["labels"] == ([False] * 3 if i % 2 else [True] * 3) and r["gold"] == recs[i]["answer"]
    assert summary["steps"] == 21 and summary["correct_steps"] == 12
    # stop after 3 records, cut the last line in half (a crash), rerun: the uninterrupted file
    part = tmp_path / "part.jsonl"
    assert checker_labels.run(_checker_config([tmp_path / "sols.jsonl"], part, max_records=3))["written_now"] == 3
    text = part.read_text()
    part.write_text(text[:len(text) - 20])
    again = checker_labels.run(_checker_config([tmp_path / "sols.jsonl"], part))
    assert part.read_bytes() == full.read_bytes() and again["skipped_as_done"] == 2


def test_checker_cli_reads_the_demos_samples(tmp_path):
    """A demo run's layout: samples/wc.jsonl (prompt_id, sample_index, text, gold, ...) with the
    prompts in data/questions.jsonl; run as `python -m` with the demo config file."""
    qs = word_problems.records(2, "train", 1, 0)
    (tmp_path / "data").mkdir()
    (tmp_path / "samples").mkdir()
    jsonl.rewrite(tmp_path / "data" / "questions.jsonl", qs)
    rows = [{"prompt_id": q["id"], "sample_index": j, "text": q["completion"] if j == 0 else "1 + 1 = 3. The answer is 3.",
             "tokens": 9, "finish": "eos", "answer": "x", "gold": q["answer"], "correct": j == 0, "steps_ok": j == 0}
            for q in qs for j in range(2)]
    jsonl.rewrite(tmp_path / "samples" / "wc.jsonl", rows)
    out = tmp_path / "labels.jsonl"
    proc = subprocess.run([sys.executable, "-m", "reasonax.eval.checker_labels", "--config=configs/checker_labels_demo.py",
                           f"--config.solutions.files={tmp_path / 'samples' / 'wc.jsonl'}",
                           f"--config.solutions.questions={tmp_path / 'data' / 'questions.jsonl'}",
                           f"--config.output={out}", "--config.progress=False"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [r for _, r in stepwise.read_stepwise(out)]
    assert [r["id"] for r in got] == [f"{q['id']}/{j}" for q in qs for j in range(2)]
    assert [r["prompt"] for r in got] == [q["prompt"] for q in qs for _ in range(2)]
    assert [r["labels"] for r in got] == [[True, True], [False, False]] * 2
    assert got[1]["correct"] is False and got[1]["sample_index"] == 1  # kept fields
    # both models' samples in one file: ids carry the file name (the same prompt_id/sample_index repeat)
    jsonl.rewrite(tmp_path / "samples" / "se.jsonl", rows)
    c = _checker_config([], tmp_path / "both.jsonl")
    c.solutions.update(stepwise.demo_fields(tmp_path, ("wc", "se")))
    assert checker_labels.run(c)["solutions"] == 8
    ids = [r["id"] for _, r in stepwise.read_stepwise(tmp_path / "both.jsonl")]
    assert ids[0] == f"wc.jsonl:{qs[0]['id']}/0" and ids[4] == f"se.jsonl:{qs[0]['id']}/0"


# ------------------------------------------------------------------------------------------------
# bad input


def _fields(path, **kw):
    return stepwise.SolutionFields(files=(str(path),), **kw)


def test_bad_input_is_named_by_file_and_line(tmp_path):
    p = tmp_path / "in.jsonl"
    good = {"id": "a", "prompt": "q", "completions": ["x = 1", "y"], "answer": "1"}
    cases = [
        ({"id": "b", "prompt": "q", "completions": ["x", "  "], "answer": "1"}, "step 1 is empty"),
        ({"id": "b", "prompt": "q", "completions": ["x", "y"], "labels": [True], "answer": "1"}, "1 labels for 2 steps"),
        ({"id": "b", "prompt": "q", "completions": ["x"]}, "missing gold answer"),
        ({"id": "b", "prompt": "q", "completions": "\n\n", "answer": "1"}, "no step"),
        ({"id": "a", "prompt": "q", "completions": ["x"], "answer": "1"}, "duplicate solution id"),
        ({"id": "b", "completions": ["x"], "answer": "1"}, "missing field 'prompt'"),
    ]
    for rec, msg in cases:
        p.write_text(json.dumps(good) + "\n" + json.dumps(rec) + "\n")
        with pytest.raises(jsonl.JsonlError, match=f"{p}:2: .*{msg}"):
            stepwise.read_solutions(_fields(p, completion_field="completions"), need_gold=True)
    # a stepwise file (the labellers' output, the PRM's input) with labels that do not match
    p.write_text(json.dumps({"id": "a", "prompt": "q", "completions": ["x", "y"], "labels": [True, False]}) + "\n"
                 + json.dumps({"id": "b", "prompt": "q", "completions": ["x", "y"], "labels": [1.0]}) + "\n")
    with pytest.raises(jsonl.JsonlError, match=f"{p}:2: 1 labels for 2 steps"):
        list(stepwise.read_stepwise(p))
    p.write_text(json.dumps({"id": "a", "prompt": "q", "completions": ["x", ""], "labels": [True, False]}) + "\n")
    with pytest.raises(jsonl.JsonlError, match=f"{p}:1: .*step 1 is empty"):
        list(stepwise.read_stepwise(p))


def test_resume_refuses_an_output_of_other_solutions(tmp_path):
    _word_solutions(tmp_path / "sols.jsonl", 3)
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "other", "prompt": "q", "completions": ["x"], "labels": [True]}) + "\n")
    with pytest.raises(ValueError, match="written from other solutions"):
        checker_labels.run(_checker_config([tmp_path / "sols.jsonl"], out))


# ------------------------------------------------------------------------------------------------
# Monte Carlo labels with a tiny random policy


def _tokenizer_dir(path):
    """Word-level tokens: fillers w4..w49, ';' (the step separator) and 51 answer tokens
    \\boxed{0}, \\boxed{1}, \\boxed{00}, \\boxed{01}, ... worth 0 or 1 each, so a random policy
    reaches the gold '1' about half the time."""
    boxed = [f"\\boxed{{{'0' * (j // 2)}{j % 2}}}" for j in range(R.VOCAB - 50)]
    words = ["<pad>", "<eos>", "<bos>", ";"] + [f"w{i}" for i in range(4, 50)] + boxed
    assert len(words) == R.VOCAB
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w4"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece(cleanup=False)  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                                pad_token="<pad>")
    fast.save_pretrained(str(path))


K = 4


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from reasonax.model import convert
    from reasonax.model.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("mc")
    torch_model = R.save_hf_model("qwen3", root / "model", seed=3)
    _tokenizer_dir(root / "model")
    cfg, params = convert.load_model(str(root / "model"))
    sols = [{"id": f"s{i}", "prompt": " ".join(f"w{5 + (i * 3 + j) % 40}" for j in range(6 + 5 * i)),
             "completions": [f"w{7 + i} w9", "w11 w12 w13", f"w14 \\boxed{{{i % 2}}}"][:3 - (i == 2)],
             "answer": "1"} for i in range(4)]
    jsonl.rewrite(root / "sols.jsonl", sols)
    return {"root": root, "cfg": cfg, "params": params, "tok": load_tokenizer(root / "model"), "torch": torch_model,
            "sols": sols}


def _mc_config(root, output, **kw):
    from reasonax.sample import mc_labels

    c = mc_labels.default_config()
    c.model, c.output, c.progress, c.seed = str(root / "model"), str(output), False, 7
    c.solutions.files, c.solutions.completion_field, c.solutions.separator = (str(root / "sols.jsonl"),), "completions", ";"
    c.rollout.k, c.rollout.max_new_tokens, c.rollout.temperature = K, 4, 1.0
    c.solutions_per_call, c.num_slots, c.block_steps, c.prefix_block = 2, 8, 4, 4
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _expected(policy, sol, seed):
    """The test's own rollouts: one generate call per step prefix, no prefix cache, graded here."""
    from reasonax import sample
    from reasonax.sample import mc_labels

    tok, steps = policy["tok"], sol["completions"]
    enc = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    prefix = [tok.bos_token_id] + enc(sol["prompt"])
    counts, lengths = [], []
    for i in range(len(steps) - 1):
        prefix = prefix + enc(steps[i]) + enc(";")
        res = sample.generate(policy["params"], policy["cfg"], [prefix],
                              sample.SamplingParams(max_new_tokens=4, temperature=1.0, n=K), eos_ids=(1,), seed=seed,
                              key_ids=[mc_labels.key_id(sol["id"], i)], num_slots=8, block_steps=4)
        texts = [";".join(steps[:i + 1]) + ";" + tok.decode([t for t in row if t != 1]) for row in res.tokens]
        counts.append(sum(grader.grade(t, sol["answer"]) for t in texts))
        lengths.append((len(prefix), [len(row) for row in res.tokens]))
    return counts, grader.grade(";".join(steps), sol["answer"]), lengths


@pytest.fixture(scope="module")
def labelled(policy):
    """label_batch on the four solutions (one engine call, a prefix cache of 4-token blocks) in
    both modes, and the test's own rollouts of every prefix."""
    from reasonax.sample import engine, mc_labels

    c = typed.from_config(mc_labels.MCLabelsConfig, _mc_config(policy["root"], "unused"))
    sols = stepwise.read_solutions(c.solutions, need_gold=True)
    out = {}
    for mode in ("soft", "hard"):
        cache = engine.PrefixCache(0.01, 4)
        cm = dataclasses.replace(c, mode=mode)
        out[mode] = mc_labels.label_batch(policy["params"], policy["cfg"], policy["tok"], sols, cm, eos_ids=(1,),
                                          prefix_cache=cache, params_version=0)
    out["want"] = [_expected(policy, s, c.seed) for s in policy["sols"]]
    return out


def test_mc_labels_equal_the_tests_own_rollouts(labelled):
    recs, _ = labelled["soft"]
    hard, _ = labelled["hard"]
    fractions = []
    for rec, h, (counts, own, _) in zip(recs, hard, labelled["want"]):
        assert rec["rollouts"]["correct"] == counts
        assert rec["labels"] == [c / K for c in counts] + [float(own)]
        assert h["labels"] == [c > 0 for c in counts] + [own]
        assert rec["answer_correct"] == own
        fractions += [c / K for c in counts]
    # the hand case is not degenerate: partial fractions, zero, and both verdicts on the last step
    assert any(0 < f < 1 for f in fractions)
    assert [r["labels"][-1] for r in recs] == [0.0, 1.0, 0.0, 1.0]
    assert len(recs[2]["labels"]) == 2  # the two-step solution


def test_mc_rollout_flops_equal_a_recount(labelled, policy):
    """FLOPs from the engine's token counts, recounted here: 2 * matmul params per token
    (tied embeddings: every parameter is a matmul weight) + 4 * heads * head_dim per attended
    (query, key) pair per layer, the prefix's cached tokens not prefilled."""
    _, st = labelled["soft"]
    hf = policy["torch"].config
    P = sum(p.numel() for p in policy["torch"].parameters())  # tied: the table counted once
    per_pair = 4 * hf.num_attention_heads * hf.head_dim * hf.num_hidden_layers
    eng = st["engine"]
    dense = attn = 0
    for L, c in zip(eng["prompt_lengths"], eng["cached_lengths"]):
        dense += 2 * P * (L - c)
        attn += per_pair * sum(range(c + 1, L + 1))  # query q (1-based) attends to q keys
    for p, g in zip(eng["prompt_index"], eng["lengths"]):
        L = eng["prompt_lengths"][p]
        dense += 2 * P * g
        attn += per_pair * sum(range(L + 1, L + g + 1))
    assert st["flops"] == {"dense": dense, "attention": attn, "total": dense + attn}
    assert st["cached_tokens"] == sum(eng["cached_lengths"]) == eng["cached_tokens"] > 0  # the cache served tokens
    # each prefix prefilled once for its K rows (the engine's own count), less its cached head
    assert eng["prefill_tokens"] == sum(L - c for L, c in zip(eng["prompt_lengths"], eng["cached_lengths"]))
    assert len(eng["lengths"]) == K * len(eng["prompt_lengths"])
    # the engine's lengths are the test's own rollouts' (no cache, one call per prefix)
    want = [x for _, _, lengths in labelled["want"] for x in lengths]
    assert eng["prompt_lengths"] == [L for L, _ in want]
    assert eng["lengths"] == [g for _, gs in want for g in gs]


def test_mc_cli_resumes_to_the_uninterrupted_output(policy, tmp_path):
    """Stopped after one record with half of the next line written (a crash), then finished from
    configs/mc_labels_demo.py with the same fields (a fresh prefix cache): the uninterrupted bytes."""
    import importlib.util

    from reasonax.sample import mc_labels

    full = tmp_path / "full.jsonl"
    summary = mc_labels.run(_mc_config(policy["root"], full))
    assert summary["records"] == 4 and summary["rollout_flops"]["total"] > 0
    part = tmp_path / "part.jsonl"
    assert mc_labels.run(_mc_config(policy["root"], part, max_records=1))["written_now"] == 1
    part.write_text(part.read_text() + full.read_text().splitlines()[1][:40])
    spec = importlib.util.spec_from_file_location("mc_labels_demo", "configs/mc_labels_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    c = demo.get_config()
    c.tokenizer, c.solutions.id_fields, c.solutions.gold_field, c.solutions.questions = "", ("id",), "answer", ""
    c.solutions.keep_fields, c.solutions.file_in_id = (), False
    want = _mc_config(policy["root"], part)
    for group in ("solutions", "rollout"):
        c[group].update(want[group].to_dict())
    c.update({k: v for k, v in want.items() if k not in ("solutions", "rollout")})
    resumed = mc_labels.run(c)
    assert part.read_bytes() == full.read_bytes()
    assert resumed["skipped_as_done"] == 1 and resumed["written_now"] == 3
    assert resumed["rollout_flops_cumulative"]["total"] > resumed["rollout_flops"]["total"] > 0
    np.testing.assert_equal(resumed["mean_label"], summary["mean_label"])

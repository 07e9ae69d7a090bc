"""Verifier-guided selection and search (reasonax.sample.search): beam search against greedy
decoding, a hand-built scorer that beam search satisfies and best-of-N misses, the selection
rules and the planner on hand cases, and the counted FLOPs against a recount from token and
parameter counts."""

import math

import jax
import numpy as np
import pytest

from reasonax import model, sample
from reasonax.sample import engine, search
from tests import hf_reference as R

SEP = "\n"


class CharTokenizer:
    """One character per id: ids divisible by 5 are newlines (the separator; encoded as 5), the
    others distinct letters; 0-2 are special (decoded to nothing)."""

    def __init__(self):
        self.chars = {i: (SEP if i % 5 == 0 else chr(0x100 + i)) for i in range(3, R.VOCAB)}
        self.ids = {c: i for i, c in self.chars.items() if c != SEP}
        self.ids[SEP] = 5

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.chars.get(int(i), "") for i in ids)

    def encode(self, text, add_special_tokens=False):
        return [self.ids[c] for c in text]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen3 (full attention everywhere, tied embeddings) and prompts."""
    root = tmp_path_factory.mktemp("search")
    R.save_hf_model("qwen3", root / "qwen3", seed=5)
    cfg, params = model.load_hf(root / "qwen3")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, R.VOCAB, size=n).tolist() for n in (7, 11)]
    return cfg, params, prompts


@pytest.fixture(scope="module")
def greedy_run(tiny):
    """Greedy decoding of whole solutions, and beam search with W = M = 1 and a constant scorer
    whose FLOPs are counted as a PRM of the same shapes, every engine call and scored row recorded."""
    cfg, params, prompts = tiny
    sp = sample.SamplingParams(max_new_tokens=24, temperature=0.0)
    want = sample.generate(params, cfg, prompts, sp, eos_ids=(1,)).tokens
    calls, scored = [], []

    def recording_generate(*args, **kw):
        res = sample.generate(*args, **kw)
        calls.append(res)
        return res

    def const(rows, ends):
        scored.extend(rows)
        return [[0.5] * len(e) for e in ends]

    old, search.generate = search.generate, recording_generate
    try:
        got = search.beam_search(params, cfg, prompts, sp, search.Scorer(const, cfg), CharTokenizer(),
                                 prm_prompts=prompts, width=1, expansions=1, max_steps=100, eos_ids=(1,),
                                 prefix_cache=engine.PrefixCache(0.001, 8), num_slots=2)
    finally:
        search.generate = old
    return want, got, calls, scored


def test_beam_with_one_beam_one_expansion_is_greedy_decoding(greedy_run):
    """W = 1, M = 1, greedy, constant scorer: the beam, one engine call per step ending at the
    separator, is token for token the one greedy call without stop strings."""
    want, got, calls, _ = greedy_run
    assert [r.candidates[r.best].tokens for r in got] == want
    assert len(calls) >= 3  # several steps, each one engine call
    assert max(r.candidates[r.best].calls for r in got) >= 3


def test_counted_flops_equal_a_recount_from_tokens_and_parameters(tiny, greedy_run):
    """The policy's and the PRM's FLOPs recounted here: 2 x matmul params per token plus 4 x heads
    x head_dim per attended (query, key) pair, causal; prompt tokens served by the prefix cache are
    not prefilled but attended to; the PRM has no unembedding but a one-logit head."""
    cfg, params, _ = tiny
    _, got, calls, scored = greedy_run
    leaves = sum(x.size for x in jax.tree.leaves(params))
    V, D = cfg.vocab_size, cfg.hidden_size
    assert cfg.tie_embeddings  # the table is the unembedding: every weight is a matmul weight
    policy_params, prm_params = leaves, leaves - V * D + D
    per_pair = 4 * cfg.num_heads * cfg.head_dim * cfg.num_layers  # every layer attends fully

    def pairs(start, stop):  # queries at positions start..stop-1, each sees itself and all before
        return sum(q + 1 for q in range(start, stop))

    policy = 0
    for res in calls:
        for p, c in zip(res.prompt_lengths, res.cached_lengths):
            policy += 2 * policy_params * (p - c) + per_pair * pairs(c, p)
        for i, g in zip(res.prompt_index, res.lengths):
            p = res.prompt_lengths[i]
            policy += 2 * policy_params * g + per_pair * pairs(p, p + g)
    prm = sum(2 * prm_params * len(r) + per_pair * pairs(0, len(r)) for r in scored)
    assert sum(c for res in calls for c in res.cached_lengths) > 0  # the prefix cache served prefixes
    assert sum(r.policy_flops["total"] for r in got) == policy
    assert sum(r.prm_flops["total"] for r in got) == prm
    # the growing prefixes are rescored: a row per child with a step, each call (a child of only a
    # separator has no step yet)
    assert len(scored) >= len(calls) - 1 and len({len(r) for r in scored}) >= 3


def test_beam_search_finds_the_path_best_of_n_misses(tiny):
    """A hand-built PRM: a step is good when its first character comes from a third of the
    alphabet; step i scores 1 when steps 1..i are all good, else 0. Sampled whole, a solution of
    about five steps is all good about once in 250; beam search keeps a good step at every step
    (16 children per step), so it finds an all-good solution where best-of-16 finds none."""
    cfg, params, prompts = tiny
    tok = CharTokenizer()

    def hand(rows, ends):
        out = []
        for row, e in zip(rows, ends):
            starts = [P] + [x + 1 for x in e[:-1]]  # each step's first token
            ok = np.cumprod([row[s] % 3 == 1 for s in starts])
            out.append([float(x) for x in ok])
        return out

    P = len(prompts[0])
    prompts = [prompts[0]] * 2  # one prompt length for the scorer; two keys
    scorer = search.Scorer(hand)
    sp = sample.SamplingParams(max_new_tokens=32, temperature=1.0, n=16)
    free = sample.generate(params, cfg, prompts, sp, eos_ids=(), seed=1)
    for q in range(2):
        texts = [tok.decode(t) for t, i in zip(free.tokens, free.prompt_index) if i == q]
        scores, _ = search.score_texts(scorer, tok.encode, prompts[q], texts, SEP)
        assert np.mean([len(s) for s in scores]) >= 4  # several steps per solution
        best = search.best_of_n(scores, "last")
        assert search.aggregate(scores[best], "last") == 0.0  # best-of-16 misses
    got = search.beam_search(params, cfg, prompts, sp, scorer, tok, prm_prompts=prompts, width=2, expansions=8,
                             max_steps=8, step_tokens=8, eos_ids=(), seed=1)
    for r in got:
        pick = r.candidates[r.best]
        assert search.aggregate(pick.scores, "last") == 1.0 and len(pick.scores) >= 3


def test_aggregations_and_best_of_n_on_hand_cases():
    s = [[0.9, 0.2, 0.95], [0.6, 0.6, 0.6], [0.8, 0.7]]
    assert [search.aggregate(x, "last") for x in s] == [0.95, 0.6, 0.7]
    assert [search.aggregate(x, "min") for x in s] == [0.2, 0.6, 0.7]
    assert [search.aggregate(x, "product") for x in s] == pytest.approx([0.171, 0.216, 0.56])
    assert search.aggregate([], "min") == 0.0
    assert search.best_of_n(s, "last") == 0  # the strong last step wins
    assert search.best_of_n(s, "min") == 2  # the weak middle step loses it
    assert search.best_of_n(s, "product") == 2
    assert search.best_of_n([[0.5], [0.5]], "last") == 0  # ties: the first
    with pytest.raises(ValueError, match="aggregation 'mean'"):
        search.aggregate([0.5], "mean")


def test_weighted_vote_on_hand_cases():
    answers = ["4", "5", "4.0", None, "5"]
    scores = [[0.3], [0.9], [0.4], [1.0], [0.1]]
    # majority: 4 and 5 twice each (4 first); weighted: 4 -> 0.7, 5 -> 1.0
    assert search.weighted_vote(answers, scores, "last") == "5"
    assert search.weighted_vote(answers, [[0.3], [0.2], [0.4], [1.0], [0.1]], "last") == "4"
    # min aggregation turns a solution with a weak step into a weak vote
    assert search.weighted_vote(["4", "5"], [[0.1, 0.9], [0.5, 0.5]], "min") == "5"
    assert search.weighted_vote(["4", "5"], [[0.1, 0.9], [0.5, 0.5]], "last") == "4"
    assert search.weighted_vote([None, None], [[1.0], [1.0]], "last") is None


def test_steps_and_prm_rows():
    tok = CharTokenizer()
    a, b = tok.chars[3], tok.chars[4]
    assert search.split_steps(f"{a}{b}\n\n{b}\n", SEP) == [a + b, b]  # the labels' split (eval.step_labels)
    ids, ends = search.prm_row(tok.encode, [7, 8], [a + b, b], SEP)
    assert ids == [7, 8, 3, 4, 5, 4, 5] and ends == [4, 6]
    assert search.states_answer("So the answer is 12.") and search.states_answer("\\boxed{3}")
    assert not search.states_answer("The total is 12.") and not search.states_answer("3 + 4 = 7")


def test_a_beam_finishes_at_eos_a_stop_an_answer_the_token_cap_or_max_steps():
    eos = frozenset({1})

    def why(tokens, text, calls=1, stopped=False):
        c = search.Candidate(tokens, text, [], calls)
        return search._finish(c, eos, stopped, SEP, max_tokens=10, max_steps=3, answer_fn=search.states_answer)

    assert why([4, 1], "x = 2") == "eos"
    assert why([4, 5], "x = 2", stopped=True) == "stop"
    assert why([4, 5], "x = 2\nSo the answer is 2.") == "answer"
    assert why([4, 5], "the answer is 2.\nthen x = 3\n") is None  # only the last step counts
    assert why(list(range(10)), "x = 2") == "length"
    assert why([4, 5], "x = 2", calls=3) == "max_steps"
    assert why([4, 5], "x = 2", calls=2) is None


def test_n_is_matched_on_realised_costs():
    """Two questions, prompts costing 1 and 3, samples costing (2, 2, 6) and (4, 4, 4): N = 1, 2,
    3 cost (1 + 2 + 3 + 4) / 2 = 5, 8 and 13; a budget of 9 takes N = 2, of 11 N = 3 (13 is 2
    away, 8 is 3), of 100 all that was drawn."""
    fixed, rows = [1.0, 3.0], [[2.0, 2.0, 6.0], [4.0, 4.0, 4.0]]
    assert [search.realised_cost(fixed, rows, n) for n in (1, 2, 3)] == [5.0, 8.0, 13.0]
    assert [search.match_n(fixed, rows, b) for b in (9, 11, 100, 0)] == [2, 3, 3, 1]
    assert search.match_n(fixed, rows, 6.5) == 1  # 1.5 from both 5 and 8: the smaller N


def test_planner_matches_the_methods_on_a_hand_case():
    """Lengths: prompt 10, PRM prompt 4, solution 20 in steps of 10 (K = 2); a policy token costs
    1, a PRM token 2. Beam W = 2, M = 3: step 1 prefills 2 x 10 and draws 6 x 10, the PRM scores
    6 x 14; step 2 prefills 2 x 20, draws 60 and scores 6 x 24: 180 + 2 x 228 = 636. Majority:
    10 + 20 N = 636 -> N = 31 (630); best-of-N: 10 + (20 + 2 x 24) N -> N = 9 (622)."""
    L = search.Lengths(prompt=10, prm_prompt=4, solution=20, step=10)
    assert search.beam_cost(2, 3, L, 1.0, 2.0) == 636
    assert search.beam_cost(2, 3, L, 1.0, 2.0, cache_hit=0.5) == 636 - 30
    [row] = search.plan_matched([2], ["majority", "prm-best-of-n", "prm-weighted", "beam"], L, 1.0, 2.0, 3)
    assert row["budget"] == 636 and row["beam"] == {"width": 2, "expansions": 3, "predicted": 636}
    assert row["majority"] == {"n": 31, "predicted": 630}
    assert row["prm-best-of-n"] == row["prm-weighted"] == {"n": 9, "predicted": 622}
    for m in ("majority", "prm-best-of-n"):
        assert abs(row[m]["predicted"] / row["budget"] - 1) <= 0.1
    # without beam, majority over k samples is the anchor
    [row] = search.plan_matched([4], ["majority", "prm-best-of-n"], L, 1.0, 2.0, 3)
    assert row["majority"]["n"] == 4 and row["prm-best-of-n"]["n"] == round((90 - 10) / 68)
    # a fixed width: W = 2 beams of M = k = 3 expansions, the same beam as above
    [row] = search.plan_matched([3], ["majority", "beam"], L, 1.0, 2.0, 5, width=2)
    assert row["beam"] == {"width": 2, "expansions": 3, "predicted": 636} and row["majority"]["n"] == 31
    # a measured budget (the anchor's realised FLOPs) replaces the predicted one
    [row] = search.plan_matched([2], ["majority", "beam"], L, 1.0, 2.0, 3, budgets=[410])
    assert row["budget"] == 410 and row["majority"]["n"] == 20 and row["beam"]["predicted"] == 636
    with pytest.raises(ValueError, match="unknown selection"):
        search.plan_matched([1], ["best"], L, 1.0, 2.0, 3)


def _word_tokenizer(path):
    """The tests' word-level tokenizer (tests.test_generate_cli) with id 7 written ";", the step
    separator of the evaluate runs."""
    import tokenizers
    import transformers

    words = ["<pad>", "<eos>", "<bos>"] + [";" if i == 7 else f"w{i}" for i in range(3, R.VOCAB)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w3"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                         pad_token="<pad>").save_pretrained(str(path))


def _evaluate_config(root, out):
    from reasonax import evaluate

    c = evaluate.default_config()
    data = root / "data.jsonl"
    data.write_text("".join(f'{{"id": "p{i}", "question": "w{10 + i} w{20 + i}", "answer": "{i % 3}"}}\n'
                            for i in range(3)))
    c.dataset, c.few_shot, c.output_dir, c.n_boot, c.ks = str(data), "", str(out), 20, (1, 2)
    c.generate.model = str(root / "model")
    c.generate.sampling.max_new_tokens, c.generate.sampling.temperature = 6, 1.0
    c.generate.progress, c.generate.prefix_cache_gb, c.generate.num_slots = False, 0.0, 8
    c.selection = ("majority", "prm-best-of-n", "prm-weighted", "beam")
    c.search.separator, c.search.expansions, c.search.step_tokens = ";", 2, 3
    c.search.max_steps, c.search.calibration_questions, c.search.calibration_samples = 3, 3, 4
    return c


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_eval")
    R.save_hf_model("qwen3", root / "model", seed=3)
    _word_tokenizer(root / "model")
    return root


def test_evaluate_compares_every_selection_at_matched_flops(eval_root):
    """One evaluate run with every selection and a hand-built scorer (counted as a PRM of the
    policy's shapes): per level each method has an accuracy, its N or W x M and realised FLOPs; the
    matched majority equals maj@N recomputed from graded.jsonl; the PRM costs nothing for majority."""
    import json

    from reasonax import evaluate
    from reasonax.eval import metrics

    cfg_m, _ = model.load_hf(eval_root / "model")
    scorer = search.Scorer(lambda rows, ends: [[(r[e - 1] % 7) / 6 for e in es] for r, es in zip(rows, ends)], cfg_m)
    out = eval_root / "run"
    m = evaluate.run(_evaluate_config(eval_root, out), scorer=scorer)
    sel = m["selection"]
    assert [lv["level"] for lv in sel["levels"]] == [1, 2]
    graded = [json.loads(line) for line in (out / "graded.jsonl").read_text().splitlines()]
    answers = [[r["answer"] for r in sorted((g for g in graded if g["prompt_id"] == f"p{i}"),
                                            key=lambda g: g["sample_index"])] for i in range(3)]
    for lv in sel["levels"]:
        meth = lv["methods"]
        assert set(meth) == {"majority", "prm-best-of-n", "prm-weighted", "beam"}
        assert meth["beam"]["width"] == lv["level"] and meth["beam"]["expansions"] == 2
        assert meth["majority"]["prm_flops"] == 0 and all(v["policy_flops"] > 0 for v in meth.values())
        assert all(meth[x]["prm_flops"] > 0 for x in ("prm-best-of-n", "prm-weighted", "beam"))
        assert meth["beam"]["flops_over_budget"] == 1.0  # beam's realised FLOPs are the level's budget
        for x in ("majority", "prm-best-of-n", "prm-weighted"):  # N planned from the calibration lands within 10%
            assert 0.9 <= meth[x]["flops_over_budget"] <= 1.1, (lv["level"], x, meth[x])
        assert all(meth[x]["n"] <= meth[x]["drawn"] and meth[x]["planned_n"] >= 1 for x in ("majority", "prm-weighted"))
        n = meth["majority"]["n"]
        want = metrics.maj_at_k(answers, [str(i % 3) for i in range(3)], n, n_boot=0).value
        assert meth["majority"]["accuracy"]["value"] == want
        beams = (out / f"beam_k{lv['level']}.jsonl").read_text().splitlines()
        assert len(beams) == 3
    assert (out / "accuracy_vs_flops.png").stat().st_size > 1000
    assert "| level | method |" in (out / "metrics.md").read_text()


@pytest.mark.skipif(not hasattr(search.prm, "save_prm"), reason="needs the PRM of issue 28a (prm.save_prm, "
                    "score_steps); runs once it is merged")
def test_evaluate_cli_with_a_prm_checkpoint(eval_root):
    """The CLI as a user runs it, with a PRM checkpoint (a random head on the policy's decoder,
    written by prm.save_prm): every selection runs; the PRM's FLOPs are those of score_flops over
    the rows it scored (best-of-N: each of the N solutions once)."""
    import json
    import subprocess
    import sys

    from reasonax.model import prm

    cfg, params = model.load_hf(eval_root / "model")
    prm.save_prm(prm.init_prm(params, cfg, jax.random.key(0)), cfg, eval_root / "prm",
                 tokenizer_dir=eval_root / "model")
    out = eval_root / "cli"
    c = _evaluate_config(eval_root, out)
    args = [sys.executable, "-m", "reasonax.evaluate", "--config=configs/eval_gsm8k_gemma3_270m.py",
            f"--config.generate.model={eval_root / 'model'}", f"--config.dataset={c.dataset}", "--config.few_shot=",
            f"--config.output_dir={out}", "--config.generate.sampling.max_new_tokens=6", "--config.n_boot=20",
            "--config.generate.progress=False", "--config.generate.num_slots=8", "--config.ks=(1,)",
            "--config.selection=('majority','prm-best-of-n','prm-weighted','beam')",
            f"--config.search.prm={eval_root / 'prm'}", "--config.search.separator=;", "--config.search.expansions=2",
            "--config.search.step_tokens=3", "--config.search.max_steps=3", "--config.search.calibration_questions=3"]
    proc = subprocess.run(args, capture_output=True, text=True,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| level | method |" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    [lv] = m["selection"]["levels"]
    assert set(lv["methods"]) == {"majority", "prm-best-of-n", "prm-weighted", "beam"}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(eval_root / "prm"))
    n, flops = lv["methods"]["prm-best-of-n"]["n"], 0
    for i in range(3):
        texts = [s["text"] for s in sorted((s for s in samples if s["prompt_id"] == f"p{i}"),
                                           key=lambda s: s["sample_index"])][:n]
        prompt = [tok.bos_token_id] + tok.encode(f"w{10 + i} w{20 + i}", add_special_tokens=False)
        for t in texts:
            steps = search.split_steps(t, ";")
            if steps:
                row, _ = search.prm_row(lambda x: tok.encode(x, add_special_tokens=False), prompt, steps, ";")
                flops += search.flops_lib.score_flops(cfg, 1, len(row))["total"]
    assert lv["methods"]["prm-best-of-n"]["prm_flops"] == pytest.approx(flops / 3)
    assert lv["methods"]["beam"]["prm_flops"] > 0

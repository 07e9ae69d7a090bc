"""reasonax.tasks.word_problems: determinism, disjoint splits, checkable solutions, the tokenizer."""

from __future__ import annotations

import pytest

from reasonax.eval import grader, step_check
from reasonax.tasks import word_problems as wp

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def test_same_seed_same_records_other_seed_other_records():
    assert wp.records(40, "train", 2, seed=3) == wp.records(40, "train", 2, seed=3)
    assert wp.records(40, "train", 2, seed=3) != wp.records(40, "train", 2, seed=4)
    # a longer draw starts with the shorter one: records never depend on n
    assert wp.records(60, "test", 2, seed=3)[:20] == wp.records(20, "test", 2, seed=3)


@pytest.mark.parametrize("level", sorted(wp.LEVELS))
def test_every_solution_is_checkable_and_right(level):
    lv = wp.LEVELS[level]
    for rec in wp.records(150, "train", level, seed=level):
        eqs = rec["equations"]
        assert len(eqs) == lv.steps
        assert eqs[0][0] <= lv.max_value
        for i, (a, op, b, r) in enumerate(eqs):
            assert OPS[op](a, b) == r >= 0
            assert b <= (lv.max_factor if op == "*" else lv.max_value)
            if i:
                assert a == eqs[i - 1][3]  # each step starts from the previous result
        assert rec["answer"] == str(eqs[-1][3])
        checked = step_check.check_steps(rec["completion"])
        assert len(checked) == lv.steps and all(s.ok for s in checked)
        assert grader.grade(rec["completion"], rec["answer"])
        assert rec["prompt"] == rec["question"] + "\n"
        assert str(eqs[0][0]) in rec["question"] and rec["question"].endswith("have now?")


def test_a_wrong_step_is_caught_by_the_step_checker():
    rec = wp.records(1, "train", 2, seed=0)[0]
    a, op, b, r = rec["equations"][0]
    bad = rec["completion"].replace(f"{a} {op} {b} = {r}.", f"{a} {op} {b} = {r + 1}.", 1)
    assert not step_check.steps_ok(bad)


def test_train_and_test_are_disjoint_and_stable():
    train = wp.records(1500, "train", 1, seed=0)
    test = wp.records(150, "test", 1, seed=1)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert all(wp.split_of(r["question"]) == "train" for r in train)
    assert all(wp.split_of(r["question"]) == "test" for r in test)
    assert len({r["question"] for r in train}) == len(train)  # distinct within a split
    # about test_permille / 1000 of all questions are test questions
    import numpy as np

    rng = np.random.default_rng(0)
    qs = [wp.problem(rng, wp.LEVELS[3])["question"] for _ in range(4000)]
    share = sum(wp.split_of(q) == "test" for q in qs) / len(qs)
    assert 0.08 < share < 0.12


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="split='dev'"):
        wp.records(1, "dev")
    with pytest.raises(ValueError, match="level=9"):
        wp.records(1, level=9)
    with pytest.raises(ValueError, match="no new problem"):  # level 1 has far fewer than 10**6
        wp.records(10**6, "test", 1)


def test_tokenizer_is_saved_as_tokenizer_json_and_loads_through_the_normal_path(tmp_path):
    from reasonax.model.tokenizer import load_tokenizer

    wp.save_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    tok = load_tokenizer(tmp_path)
    rec = wp.records(1, "train", 3)[0]
    text = rec["prompt"] + rec["completion"]
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1:] == list(text.encode())  # one token per byte
    assert tok.decode(ids, skip_special_tokens=True) == text

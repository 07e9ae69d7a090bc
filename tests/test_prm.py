"""The process reward model: the BCE's gradient at separator positions only, AUC and accuracy on hand
cases, step scores of the export loaded by transformers (AutoModelForTokenClassification) equal to
reasonax's on every family that has the class (and the base-plus-head export of the others), resume
of the recipe, bad stepwise input named by file and line, and LoRA training the head beside the
adapters, exported as PEFT modules_to_save and loaded by peft."""

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from reasonax.model import hf, make_mesh, prm
from reasonax.model.config import FAMILIES
from reasonax.tasks.byte_tokenizer import byte_tokenizer
from reasonax.train import loop
from reasonax.train.prm import data as prm_data
from reasonax.train.prm import objective as O
from reasonax.train.prm import recipe
from tests import hf_reference as R
from tests.test_dry_run import load_config
from tests.test_train_loop import _losses, set_fields


# ----------------------------------------------------------------------------------------------
# The objective


def test_loss_gradient_wrt_logits_is_zero_off_the_separators_and_the_bce_elsewhere():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 11)) * 2, jnp.float32)
    labels = jnp.asarray(rng.uniform(size=(3, 11)), jnp.float32)  # soft labels everywhere; only some are read
    weights = np.zeros((3, 11), np.float32)
    weights[0, [2, 5, 10]] = weights[1, [4]] = weights[2, [0, 7]] = 1.0
    labels = labels.at[0, 3].set(jnp.nan)  # a position off the separators may hold anything
    weights = jnp.asarray(weights)

    def mean_loss(z):
        s, n, _ = O.prm_objective(z, labels, weights)
        return s / n

    g = np.asarray(jax.grad(mean_loss)(logits))
    off = np.asarray(weights) == 0
    assert np.all(g[off] == 0.0)
    # at the separators: (sigmoid(z) - y) / count, recounted here
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    expect = (1 / (1 + np.exp(-z)) - y) / 6
    np.testing.assert_allclose(g[~off], expect[~off], rtol=1e-5)
    assert np.all(g[~off] != 0.0)
    # the value: -(y log p + (1 - y) log(1 - p)) summed over the six separator positions
    p = 1 / (1 + np.exp(-z[~off]))
    bce = -(y[~off] * np.log(p) + (1 - y[~off]) * np.log(1 - p))
    np.testing.assert_allclose(float(mean_loss(logits)), bce.mean(), rtol=1e-5)


def test_auc_and_step_accuracy_hand_cases():
    # 4 pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4
    assert O.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # a tie counts one half: pairs (0.5 vs 0.5) = 1/2, (0.9 vs 0.5) = 1 -> 0.75
    assert O.auc([0.5, 0.5, 0.9], [0, 1, 1]) == 0.75
    assert O.auc([0.3, 0.3, 0.3, 0.3], [0, 1, 0, 1]) == 0.5
    assert O.auc([0.2, 0.9], [1.0, 0.0]) == 0.0
    assert O.auc([0.2, 0.9], [1, 1]) is None  # one class: undefined
    # soft labels are binarised at 0.5
    assert O.auc([0.1, 0.9], [0.4, 0.6]) == 1.0
    assert O.step_accuracy([0.2, 0.7, 0.5, 0.49], [0.0, 1.0, 0.0, 0.6]) == 0.5
    # an independent recount over all pairs, with many ties
    rng = np.random.default_rng(1)
    s, y = rng.integers(0, 5, 60) / 4, rng.integers(0, 2, 60)
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(s[y == 1], s[y == 0])]
    assert O.auc(s, y) == pytest.approx(np.mean(pairs), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Export: transformers gives reasonax's step scores


def _rows(vocab: int, seed: int = 0):
    """Three solutions of 1-4 steps of random ids, joined by join_steps (one of them short of a
    sliding window, one past it)."""
    rng = np.random.default_rng(seed)
    rows, ends = [], []
    for n_steps, prompt_len in ((3, 5), (1, 2), (4, 7)):
        steps = [list(rng.integers(3, vocab, rng.integers(1, 5))) for _ in range(n_steps)]
        ids, e = prm.join_steps([2, *rng.integers(3, vocab, prompt_len)], steps, [7, 8])
        rows.append([int(i) for i in ids])
        ends.append(e)
    return rows, ends


def _random_prm(family: str, seed: int = 0):
    """(ModelConfig, PRM params) of hf_reference's tiny config, every weight and the head random."""
    cfg = hf.config_from_hf(R.tiny_hf_config(family))
    params = prm.init_prm(R.random_jax_params(cfg, seed), cfg, jax.random.key(seed), std=0.5)
    params[prm.HEAD]["bias"] = jnp.asarray([0.3], jnp.float32)
    return cfg, params


TOKEN_CLS = [f for f in R.FAMILIES if hasattr(transformers, FAMILIES[hf.config_from_hf(R.tiny_hf_config(f))
                                                                     .model_type].hf_architecture
                                              .replace("ForCausalLM", "ForTokenClassification"))]


def test_the_table_of_token_classification_families_is_transformers_own():
    have = {mt for mt, fam in FAMILIES.items()
            if hasattr(transformers, fam.hf_architecture.replace("ForCausalLM", "ForTokenClassification"))}
    assert have == set(prm.TOKEN_CLASSIFICATION)
    for mt, name in prm.TOKEN_CLASSIFICATION.items():
        assert getattr(transformers, name).__name__ == name
    assert "gemma3" not in TOKEN_CLS and len(TOKEN_CLS) >= 5


@pytest.mark.parametrize("family", TOKEN_CLS)
def test_exported_prm_loaded_by_transformers_gives_our_step_scores(family, tmp_path):
    cfg, params = _random_prm(family)
    rows, ends = _rows(cfg.vocab_size)
    ours = prm.score_steps(params, cfg, rows, ends, batch_size=2)  # two batches, padding rows and columns
    prm.save_prm(params, cfg, tmp_path / "prm")
    meta = json.loads((tmp_path / "prm" / "config.json").read_text())
    assert meta["architectures"] == [prm.TOKEN_CLASSIFICATION[cfg.model_type]] and meta["id2label"] == {"0": "correct"}
    assert "lm_head.weight" not in load_file(tmp_path / "prm" / "model.safetensors")
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        str(tmp_path / "prm"), attn_implementation="eager", dtype=torch.float32).eval()
    assert tuple(model.score.weight.shape) == (1, cfg.hidden_size) and model.score.bias is not None
    assert model.config.num_labels == 1
    for row, e, mine in zip(rows, ends, ours):
        with torch.no_grad():
            logits = model(torch.tensor([row])).logits[0, :, 0].numpy()
        theirs = 1 / (1 + np.exp(-logits[e].astype(np.float64)))
        np.testing.assert_allclose(mine, theirs, atol=1e-4)
    # and back: load_prm reads the same head and decoder
    _, back = prm.load_prm(tmp_path / "prm")
    np.testing.assert_allclose(np.concatenate(prm.score_steps(back, cfg, rows, ends, batch_size=2)),
                               np.concatenate(ours), atol=1e-6)


def test_gemma3_without_the_class_exports_the_base_and_the_head(tmp_path):
    cfg, params = _random_prm("gemma3")
    rows, ends = _rows(cfg.vocab_size, seed=1)
    ours = prm.score_steps(params, cfg, rows, ends, batch_size=2)
    prm.save_prm(params, cfg, tmp_path / "prm")
    assert json.loads((tmp_path / "prm" / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]
    base = transformers.AutoModel.from_pretrained(str(tmp_path / "prm"), attn_implementation="eager",
                                                  dtype=torch.float32).eval()
    head = load_file(tmp_path / "prm" / "model.safetensors")
    for row, e, mine in zip(rows, ends, ours):
        with torch.no_grad():
            h = base(torch.tensor([row])).last_hidden_state[0].numpy().astype(np.float64)
        z = h @ head["score.weight"][0].astype(np.float64) + head["score.bias"][0]
        np.testing.assert_allclose(mine, 1 / (1 + np.exp(-z[e])), atol=1e-4)
    _, back = prm.load_prm(tmp_path / "prm")
    np.testing.assert_allclose(np.concatenate(prm.score_steps(back, cfg, rows, ends, batch_size=2)),
                               np.concatenate(ours), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Data: TRL's stepwise format, errors with file and line


def _write(path, lines):
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


GOOD = {"prompt": "1 + 1?\n", "completions": ["1 + 1 = 2.", "So 2."], "labels": [True, 0.75]}


@pytest.mark.parametrize("bad, message", [
    ({**GOOD, "labels": [True]}, "1 labels for 2 steps"),
    ({**GOOD, "completions": ["1 + 1 = 2.", "  "]}, "step 1 of field 'completions' is empty"),
    ({**GOOD, "completions": [], "labels": []}, "empty list (no steps)"),
    ({**GOOD, "labels": [True, 1.5]}, "label 1 of field 'labels' is 1.5"),
    ({"prompt": "x", "completions": ["a"]}, "missing field 'labels'"),
])
def test_bad_records_are_named_by_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "steps.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(ValueError) as e:
        prm_data.load_step_records([str(path)], prm_data.PRMDataConfig())
    assert f"{path}:3:" in str(e.value) and message in str(e.value)


def test_parquet_rows_are_named_too(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "steps.parquet"
    recs = [GOOD, {**GOOD, "labels": [True, False, True]}]
    pq.write_table(pa.Table.from_pylist([{**r, "labels": [float(x) for x in r["labels"]]} for r in recs]), path)
    with pytest.raises(ValueError, match=f"{path}: row 2: 3 labels for 2 steps"):
        prm_data.load_step_records([str(path)], prm_data.PRMDataConfig())


def test_rows_label_the_separators_last_token_and_truncation_drops_the_steps_past_seq_len():
    tok = byte_tokenizer()
    rec = prm_data.parse_record(GOOD, "x:1", prm_data.PRMDataConfig())
    d = prm_data.PRMDataConfig(separator="\n\n", seq_len=64)
    ids, ends = prm.tokenize_steps(tok, rec.prompt, rec.steps, d.separator)
    text = tok.decode(ids[1:])  # after BOS
    assert ids[0] == tok.bos_token_id and text == "1 + 1?\n1 + 1 = 2.\n\nSo 2.\n\n"
    assert [tok.decode(ids[e - 1:e + 1]) for e in ends] == ["\n\n", "\n\n"]
    rows, stats = prm_data.encode_all([rec], tok, d)
    row = rows[0]
    assert list(np.flatnonzero(row["weights"])) == ends and list(row["labels"][ends]) == [1.0, 0.75]
    assert row["segment_ids"].sum() == len(ids) and stats.truncated == 0
    cut = dataclasses.replace(d, seq_len=ends[0] + 3)  # the second step's separator is cut off
    rows, stats = prm_data.encode_all([rec], tok, cut)
    assert list(np.flatnonzero(rows[0]["weights"])) == ends[:1]
    assert (stats.truncated, stats.labels_dropped, stats.steps) == (1, 1, 1)


def test_overlong_drop_removes_the_example():
    tok = byte_tokenizer()
    short = prm_data.parse_record({**GOOD, "completions": ["a", "b"]}, "x:1", prm_data.PRMDataConfig())
    long = prm_data.parse_record(GOOD, "x:2", prm_data.PRMDataConfig())
    d = prm_data.PRMDataConfig(seq_len=20, overlong="drop")
    rows, stats = prm_data.encode_all([short, long], tok, d)
    assert (len(rows), stats.examples, stats.dropped_overlong) == (1, 1, 1)


# ----------------------------------------------------------------------------------------------
# The recipe: resume, LoRA


def _config(workdir, **changes):
    c = load_config("prm_tiny_cpu")
    c.workdir = str(workdir)
    c.synthetic.num_examples, c.synthetic.num_eval = 64, 0
    c.seq_len, c.batch_size, c.num_steps = 96, 8, 4
    c.optim.total_steps, c.optim.warmup_steps = 4, 1
    c.checkpoint.every, c.log_every, c.eval_every = 100, 1, 0  # saved at the last step only
    c.checkpoint.async_save = False
    c.peak_flops, c.tensorboard = "1e11", False
    return set_fields(c, changes)


def _one_device():
    """A one-device mesh: the recipe tests compile fast (sharded restore: tests/test_train_loop.py)."""
    return make_mesh(devices=jax.devices()[:1])


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    mesh = _one_device()
    loop.run(recipe.build(_config(tmp_path / "straight")), mesh=mesh)
    stopped = tmp_path / "stopped"
    loop.run(recipe.build(_config(stopped, num_steps=2, export_hf="none")), mesh=mesh)  # interrupted after step 2
    loop.run(recipe.build(_config(stopped)), mesh=mesh)  # resumes: state and data iterator from the checkpoint
    a, b = load_file(tmp_path / "straight" / "hf" / "model.safetensors"), load_file(stopped / "hf" / "model.safetensors")
    assert a.keys() == b.keys() and "score.weight" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    la, lb = _losses(tmp_path / "straight"), _losses(stopped)
    assert sorted(lb) == list(range(1, 5)) and all(la[s] == lb[s] for s in la)


def test_lora_trains_the_head_beside_the_adapters_and_peft_loads_it(tmp_path):
    peft = pytest.importorskip("peft")
    c = _config(tmp_path / "lora", **{"lora.r": 4, "optim.lr": 3e-2, "synthetic.num_eval": 24, "eval_every": 4})
    plan = recipe.build(c)
    assert set(plan.trainable) == {"layers", prm.HEAD}
    mesh = _one_device()
    state = loop.run(plan, mesh=mesh)
    held = [json.loads(line) for line in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()
            if "eval/step_accuracy" in line]
    assert len(held) == 1 and held[0]["eval/steps"] == 72 and 0 <= held[0]["eval/step_accuracy"] <= 1  # 24 x 3 steps
    # the initial PRM (same seed, no LoRA): the base the adapters were trained on, and its head
    start = recipe.build(_config(tmp_path / "x")).init(mesh)
    assert not np.allclose(np.asarray(state.params[prm.HEAD]["kernel"]), np.asarray(start[prm.HEAD]["kernel"]))
    cfg = plan.model.replace(lora=None, remat="none")
    prm.save_prm(start, cfg, tmp_path / "base")
    peft_dir = tmp_path / "lora" / "peft"
    conf = json.loads((peft_dir / "adapter_config.json").read_text())
    assert conf["modules_to_save"] == ["score"] and conf["task_type"] == "TOKEN_CLS"
    stored = load_file(peft_dir / "adapter_model.safetensors")
    assert {"base_model.model.score.weight", "base_model.model.score.bias"} <= set(stored)
    base = transformers.AutoModelForTokenClassification.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, str(peft_dir)).eval()
    _, merged = prm.load_prm(tmp_path / "lora" / "hf")  # the merged export
    rows, ends = _rows(cfg.vocab_size, seed=2)
    ours = prm.score_steps(merged, cfg, rows, ends)
    for row, e, mine in zip(rows, ends, ours):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row])).logits[0, :, 0].numpy()
        np.testing.assert_allclose(mine, 1 / (1 + np.exp(-logits[e].astype(np.float64))), atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma"])  # untied and tied embeddings
def test_train_step_flops_count_the_one_logit_head_not_an_unembedding(family):
    from reasonax.model import flops
    from reasonax.model.params import is_spec

    cfg = hf.config_from_hf(R.tiny_hf_config(family))
    tokens, rows = 300, 4
    # recount: every PRM weight is in a matmul but the lookup table (embed); the head is D weights
    sizes = {".".join(str(getattr(k, "key", k)) for k in path): int(np.prod(s.shape)) for path, s in
             jax.tree_util.tree_flatten_with_path(prm.param_specs(cfg), is_leaf=is_spec)[0]}
    matmul = sum(sizes.values()) - sizes["embed"] - sizes[f"{prm.HEAD}.bias"]
    with_attn = flops.step_flops(cfg, tokens, rows, unembed=False)["total"]
    attn = flops.step_flops(cfg, tokens, rows)["total"] - 6 * flops.matmul_params(cfg) * tokens
    assert with_attn - attn == 6 * matmul * tokens

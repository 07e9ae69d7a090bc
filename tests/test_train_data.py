"""SFT grain pipeline: shift/mask, packing (and its attention isolation on a real model), overlong and
malformed records, Parquet, shuffling, process shards, iterator checkpoints, global arrays."""

import json

import jax
import numpy as np
import pytest
import tokenizers
import transformers

from reasonax.model import prompts as prompts_lib
from reasonax.train import data

VOCAB = 101


@pytest.fixture(scope="module")
def tok():
    """A word-level tokenizer: <pad>=0 <eos>=1 <bos>=2, then w3..w100 (unknown words -> w3)."""
    words = ["<pad>", "<eos>", "<bos>"] + [f"w{i}" for i in range(3, VOCAB)]
    t = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w3"))
    t.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>",
                                                pad_token="<pad>")


def _words(ids):
    return " ".join(f"w{i}" for i in ids)


def _records(n=30, seed=0, max_len=9):
    """Distinct records (prompt i starts with w{10+i}) of varied lengths."""
    rng = np.random.default_rng(seed)
    return [{"prompt": _words([10 + i, *rng.integers(5, VOCAB, rng.integers(0, 4))]),
             "completion": _words(rng.integers(5, VOCAB, rng.integers(1, max_len)))} for i in range(n)]


def _write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _config(files, **kw):
    c = data.default_data_config()
    c.files = [str(f) for f in files]
    c.seq_len, c.num_threads, c.num_epochs = 16, 0, 1
    c.update(kw)
    return c


def _segments(batch):
    """(inputs, targets, weights) tuples of every example in a batch, checking the layout of each row:
    segment ids 1..k in order, contiguous, positions 0.. within each, padding only at the end."""
    out = []
    for seg, pos, inp, tgt, w in zip(batch["segment_ids"], batch["positions"], batch["inputs"],
                                     batch["targets"], batch["weights"]):
        k = int(seg.max())
        real = seg > 0
        n = int(real.sum())
        assert real[:n].all() and not real[n:].any(), seg  # padding only at the row end
        assert np.all(np.diff(seg[:n]) >= 0) and set(seg[:n]) == set(range(1, k + 1)), seg
        assert not (inp[~real].any() or tgt[~real].any() or w[~real].any() or pos[~real].any())
        for s in range(1, k + 1):
            idx = np.flatnonzero(seg == s)
            assert np.array_equal(pos[idx], np.arange(len(idx))), pos
            out.append((tuple(inp[idx]), tuple(tgt[idx]), tuple(w[idx])))
    return out


def _all_segments(ds):
    return [s for b in ds for s in _segments(b)]


def test_shift_and_mask_of_a_hand_built_example(tmp_path, tok):
    tokens, mask = data.tokenize_example("w5 w6", "w7 w8", _config([]), tok)
    assert tokens.tolist() == [2, 5, 6, 7, 8, 1] and mask.tolist() == [0, 0, 0, 1, 1, 1]  # BOS .. EOS
    f = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "w5 w6", "completion": "w7 w8"}])
    (b,) = list(data.sft_dataset(_config([f], seq_len=8, pack=False), tok, global_batch=1, process_count=1,
                                 process_index=0))
    assert b["inputs"][0].tolist() == [2, 5, 6, 7, 8, 0, 0, 0]
    assert b["targets"][0].tolist() == [5, 6, 7, 8, 1, 0, 0, 0]  # inputs shifted by one
    assert b["weights"][0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]  # exactly the completion targets w7 w8 EOS
    assert b["segment_ids"][0].tolist() == [1] * 5 + [0] * 3
    assert b["positions"][0].tolist() == [0, 1, 2, 3, 4, 0, 0, 0]
    assert {k: v.dtype for k, v in b.items()} == {"inputs": np.int32, "targets": np.int32, "weights": np.float32,
                                                  "segment_ids": np.int32, "positions": np.int32}


def test_templates_render_like_generation(tok):
    fmt = prompts_lib.get_format("qwen-chat")
    p, c, bos = data.render_texts("w5", "w6", _config([], template="qwen-chat", instruction="Be brief."), tok)
    assert p == fmt.render("w5", instruction="Be brief.") and c == "w6<|im_end|>" and bos
    p, c, _ = data.render_texts("w5", "w6", _config([], template="few-shot"), tok)
    assert p.endswith("Question: w5\nAnswer:") and c == " w6\n\n"
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}"
                         "{% if add_generation_prompt %}<assistant> {% endif %}")
    p, c, bos = data.render_texts("w5", "w6", _config([], template="tokenizer", instruction="w9"), tok)
    assert (p, c, bos) == ("<user> w9\n\nw5 <assistant> ", "w6 ", False)
    with pytest.raises(ValueError, match="template"):
        data.check_config(_config(["x"], template="chatml"))


def test_packing_keeps_every_example_whole(tmp_path, tok):
    f = _write_jsonl(tmp_path / "a.jsonl", _records(40))
    packed_stats, unpacked_stats = data.DataStats(), data.DataStats()
    packed = list(data.sft_dataset(_config([f]), tok, global_batch=4, process_index=0, process_count=1,
                                   stats=packed_stats))
    unpacked = list(data.sft_dataset(_config([f], pack=False), tok, global_batch=4, process_index=0,
                                     process_count=1, stats=unpacked_stats))
    assert len(packed) < len(unpacked) == 10  # packing saves rows
    assert max(b["segment_ids"].max() for b in packed) > 1  # rows really hold several examples
    # the same whole examples (no split across rows, nothing lost), so the same weighted tokens
    assert sorted(_all_segments(packed)) == sorted(_all_segments(unpacked))
    assert sum(b["weights"].sum() for b in packed) == sum(b["weights"].sum() for b in unpacked) > 0
    assert packed_stats.examples == unpacked_stats.examples == 40
    assert packed_stats.tokens == unpacked_stats.tokens
    assert packed_stats.loss_tokens == unpacked_stats.loss_tokens
    assert packed_stats.padding_tokens == len(packed) * 4 * 16 - packed_stats.tokens


def test_packed_row_log_probs_equal_each_example_run_alone(tmp_path, tok):
    from reasonax import model
    from reasonax.model import config as mc

    # sliding and global layers with RoPE: attention must not cross segments in either
    cfg = mc.gemma3(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
                    num_kv_heads=1, head_dim=16, sliding_window=4, layer_types=(mc.SLIDING, mc.FULL))
    params = model.init_params(cfg, jax.random.key(0), std=0.3)
    f = _write_jsonl(tmp_path / "a.jsonl", _records(12, max_len=8))
    b = next(iter(data.sft_dataset(_config([f], seq_len=24), tok, global_batch=2, process_index=0,
                                   process_count=1)))
    assert b["segment_ids"].max() >= 3

    def target_logprobs(inputs, targets, positions, segment_ids):
        logits = model.forward(params, inputs, cfg, positions=positions, segment_ids=segment_ids)
        lp = jax.nn.log_softmax(logits, axis=-1)
        return np.asarray(np.take_along_axis(lp, targets[..., None], axis=-1)[..., 0])

    packed = target_logprobs(b["inputs"], b["targets"], b["positions"], b["segment_ids"])
    # each example alone, at the start of its own padded row
    where, alone_rows = [], []
    for r in range(2):
        for s in range(1, b["segment_ids"][r].max() + 1):
            idx = np.flatnonzero(b["segment_ids"][r] == s)
            row = {k: np.zeros(24, np.int32) for k in ("inputs", "targets", "positions", "segment_ids")}
            for k in ("inputs", "targets", "positions"):
                row[k][: len(idx)] = b[k][r, idx]
            row["segment_ids"][: len(idx)] = 1
            where.append((r, idx))
            alone_rows.append(row)
    alone = target_logprobs(*(np.stack([row[k] for row in alone_rows])
                              for k in ("inputs", "targets", "positions", "segment_ids")))
    for i, (r, idx) in enumerate(where):
        np.testing.assert_allclose(packed[r, idx], alone[i, : len(idx)], atol=1e-5, rtol=0)


def test_overlong_truncate_and_drop(tmp_path, tok):
    recs = [{"prompt": "w5", "completion": _words([7] * n)} for n in (3, 20, 5, 30)]
    recs.append({"prompt": _words([6] * 18), "completion": "w7"})  # completion cut away entirely, last
    f = _write_jsonl(tmp_path / "a.jsonl", recs)
    stats = data.DataStats()
    segs = _all_segments(data.sft_dataset(_config([f], shuffle=False), tok, global_batch=2, process_index=0,
                                          process_count=1, stats=stats))
    assert stats.truncated == 3 and stats.dropped_overlong == 0 and stats.examples == 5
    assert sorted(len(s[0]) for s in segs) == [5, 7, 16, 16, 16]
    assert sum(sum(s[2]) for s in segs if s[0][1] == 6) == 0  # the prompt-only remainder has no weight
    stats = data.DataStats()
    segs = _all_segments(data.sft_dataset(_config([f], shuffle=False, overlong="drop"), tok, global_batch=2,
                                          process_index=0, process_count=1, stats=stats))
    assert stats.dropped_overlong == 3 and stats.truncated == 0 and stats.examples == 2
    assert sorted(len(s[0]) for s in segs) == [5, 7]


def test_malformed_records_raise_with_file_and_line_or_are_skipped(tmp_path, tok):
    good = json.dumps({"prompt": "w5", "completion": "w6"})
    lines = [good, good, '{"prompt": "w5", "completion": ', json.dumps({"prompt": "w5"}),
             json.dumps({"prompt": "w5", "completion": 7}), good]
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: invalid JSON"):
        data.sft_dataset(_config([f]), tok, global_batch=1, process_index=0, process_count=1)
    f2 = _write_jsonl(tmp_path / "bad2.jsonl", [json.loads(good), {"prompt": "w5", "answer": "w6"}])
    with pytest.raises(ValueError, match=r"bad2\.jsonl:2: missing field 'completion'"):
        data.load_records([f2])
    f3 = _write_jsonl(tmp_path / "bad3.jsonl", [{"prompt": ["w5"], "completion": "w6"}])
    with pytest.raises(ValueError, match=r"bad3\.jsonl:1: field 'prompt' is not a string"):
        data.load_records([f3])
    stats = data.DataStats()
    out = list(data.sft_dataset(_config([f], on_malformed="skip", pack=False), tok, global_batch=1, process_index=0,
                                process_count=1, stats=stats))
    assert stats.skipped_malformed == 3 and stats.examples == len(out) == 3


def test_parquet_gives_the_same_examples_as_jsonl(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = _records(12)
    f_json = _write_jsonl(tmp_path / "a.jsonl", recs)
    f_pq = tmp_path / "a.parquet"
    pq.write_table(pa.table({"prompt": [r["prompt"] for r in recs], "completion": [r["completion"] for r in recs],
                             "id": list(range(12))}), f_pq)
    from_json, from_pq = (list(data.sft_dataset(_config([f]), tok, global_batch=2, process_index=0,
                                                process_count=1)) for f in (f_json, f_pq))
    assert len(from_json) == len(from_pq) > 0
    for a, b in zip(from_json, from_pq):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"a\.parquet: missing column 'answer'"):
        data.load_records([f_pq], completion_field="answer")


def _example_order(files, tok, **kw):
    """First prompt word of every example, in emitted order (pack=False keeps one per row)."""
    ds = data.sft_dataset(_config(files, pack=False, **kw), tok, global_batch=1, process_index=0,
                          process_count=1)
    return [int(b["inputs"][0, 1]) for b in ds]


def test_shuffle_is_deterministic_per_seed_and_epoch(tmp_path, tok):
    f = _write_jsonl(tmp_path / "a.jsonl", _records(20))
    a = _example_order([f], tok, seed=3, num_epochs=2)
    assert a == _example_order([f], tok, seed=3, num_epochs=2)
    assert a != _example_order([f], tok, seed=4, num_epochs=2)
    assert sorted(a[:20]) == sorted(a[20:]) == list(range(10, 30)) and a[:20] != a[20:]  # reshuffled epoch


def test_process_shards_are_disjoint_and_cover_the_data(tmp_path, tok):
    f = _write_jsonl(tmp_path / "a.jsonl", _records(21))
    shards = [[s[0][1] for s in _all_segments(data.sft_dataset(_config([f]), tok, global_batch=4, process_index=p,
                                                                process_count=2))]
              for p in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(10, 31))
    b = next(iter(data.sft_dataset(_config([f]), tok, global_batch=4, process_index=1, process_count=2)))
    assert b["inputs"].shape == (2, 16)
    with pytest.raises(ValueError, match="global_batch=3"):
        data.sft_dataset(_config([f]), tok, global_batch=3, process_index=0, process_count=2)


def _resume_setup(tmp_path, tok):
    f = _write_jsonl(tmp_path / "a.jsonl", _records(25, max_len=16))
    cfg = _config([f], num_epochs=None, overlong="drop", num_threads=2)
    return lambda: data.sft_dataset(cfg, tok, global_batch=2, process_index=0, process_count=1,
                                    stats=data.DataStats())


def _same_batches(xs, ys):
    return len(xs) == len(ys) and all(all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(xs, ys))


def test_iterator_state_resumes_exactly(tmp_path, tok):
    make = _resume_setup(tmp_path, tok)
    it = iter(make())
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # JSON-able
    want = [next(it) for _ in range(20)]  # crosses epoch boundaries (forever)
    want_stats = it.stats.as_dict()
    assert want_stats["dropped_overlong"] > 0 and want_stats["examples"] > 25
    resumed = iter(make())
    resumed.set_state(state)
    assert _same_batches([next(resumed) for _ in range(20)], want)
    assert resumed.stats.as_dict() == want_stats


def test_iterator_checkpoints_with_orbax(tmp_path, tok):
    import grain
    import orbax.checkpoint as ocp

    make = _resume_setup(tmp_path, tok)
    it = iter(make())
    for _ in range(3):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    want = [next(it) for _ in range(4)]
    resumed = iter(make())
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    assert _same_batches([next(resumed) for _ in range(4)], want)


def test_to_global_shards_rows_over_data_and_fsdp():
    from reasonax.model import make_mesh

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    local = {"inputs": np.arange(8 * 16, dtype=np.int32).reshape(8, 16), "weights": np.ones((8, 16), np.float32)}
    out = data.to_global(local, mesh)
    x = out["inputs"]
    assert x.shape == (8, 16) and x.dtype == np.int32 and out["weights"].dtype == np.float32
    assert x.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert {s.data.shape for s in x.addressable_shards} == {(2, 16)}  # 4 row shards, replicated over tensor
    np.testing.assert_array_equal(np.asarray(x), local["inputs"])
    with pytest.raises(ValueError, match="divide"):
        data.to_global({"inputs": np.zeros((6, 4), np.int32)}, mesh)


def test_file_lists_are_set_from_the_command_line():
    """data.files, eval_data.files, grpo.files / eval_files are tuples, which config_flags can
    override as the README's commands do (a list field cannot be set from the command line)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = ("import sys\nfrom absl import app, flags\nfrom ml_collections import config_flags\n"
              "config_flags.DEFINE_config_file('config', None, '')\n"
              "def main(_):\n    c = flags.FLAGS.config\n"
              "    print(repr([tuple(c[a][b]) for a, b in (x.split('.') for x in sys.argv[1].split(','))]))\n"
              "app.run(main, argv=[sys.argv[0]] + sys.argv[2:])\n")
    for cfg, fields, args, want in (
            ("sft_gemma3_270m_cpu.py", "data.files,eval_data.files",
             ["--config.data.files=/x/a.jsonl", "--config.eval_data.files=/x/b.jsonl",
              "--config.eval_data.files=/x/c.jsonl"], [("/x/a.jsonl",), ("/x/b.jsonl", "/x/c.jsonl")]),
            ("grpo_gemma3_270m_cpu.py", "grpo.files,grpo.eval_files",
             ["--config.grpo.files=/x/a.jsonl", "--config.grpo.eval_files=/x/b.jsonl"],
             [("/x/a.jsonl",), ("/x/b.jsonl",)])):
        out = subprocess.run([sys.executable, "-c", script, fields, f"--config={root / 'configs' / cfg}", *args],
                             capture_output=True, text=True, cwd=root)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == repr(want)

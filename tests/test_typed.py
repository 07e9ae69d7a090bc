"""Typed configs (reasonax.typed): the ConfigDicts that files and flags edit are generated from the
frozen dataclasses and converted back once, checked, at a recipe's build."""

import dataclasses

import ml_collections
import pytest

from reasonax import evaluate, typed
from reasonax.sample import generate_cli
from reasonax.train import data, grpo, loop, sft, slm
from reasonax.train import prm as prm_recipe
from reasonax.train.common import LMConfig


@pytest.mark.parametrize("recipe, cls", [(sft, sft.SFTConfig), (slm, slm.SLMConfig), (grpo, grpo.GRPOConfig),
                                         (prm_recipe, prm_recipe.PRMConfig),
                                         (generate_cli, generate_cli.GenerateConfig),
                                         (evaluate, evaluate.EvaluateConfig)])
def test_default_configdict_round_trips(recipe, cls):
    c = recipe.default_config()
    assert isinstance(c, ml_collections.ConfigDict)
    back = typed._build(cls, c, "config")  # the defaults, unchecked (a required path is empty)
    assert back == cls()
    assert typed.to_configdict(back).to_dict() == c.to_dict()


def test_from_config_types_converts_and_freezes():
    c = sft.default_config()
    c.model.preset, c.data.files, c.optim.lr, c.data.num_epochs = "tiny", ["a.jsonl", "b.jsonl"], 1, 3
    out = typed.from_config(sft.SFTConfig, c)
    assert out.data.files == ("a.jsonl", "b.jsonl") and out.optim.lr == 1.0 and isinstance(out.optim.lr, float)
    assert out.data.num_epochs == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.seed = 3


def test_unknown_fields_and_wrong_types_name_the_field():
    c = sft.default_config().to_dict()
    c["optim"]["learning_rate"] = 1e-3
    with pytest.raises(ValueError, match=r"config\.optim: unknown field learning_rate \(fields of OptimConfig: lr,"):
        typed.from_config(sft.SFTConfig, c)
    c = sft.default_config().to_dict()
    c["grpo"] = {}
    with pytest.raises(ValueError, match=r"config: unknown field grpo"):
        typed.from_config(sft.SFTConfig, c)
    c = sft.default_config().to_dict()
    c["data"]["pack"] = "yes"
    with pytest.raises(TypeError, match=r"config\.data\.pack: expected a bool, got 'yes'"):
        typed.from_config(sft.SFTConfig, c)
    c = sft.default_config().to_dict()
    c["data"]["files"] = "a.jsonl"  # a string is not a list of one path
    with pytest.raises(TypeError, match=r"config\.data\.files: expected a tuple"):
        typed.from_config(sft.SFTConfig, c)


def test_every_problem_is_reported_with_its_path():
    c = grpo.default_config()
    c.model.preset, c.grpo.group_size, c.grpo.aggregation, c.optim.total_steps = "tiny", 1, "mean", 0
    with pytest.raises(ValueError) as e:
        typed.from_config(grpo.GRPOConfig, c)
    msg = str(e.value)
    assert "config.grpo: group_size=1 (>= 2)" in msg
    assert "config.grpo: aggregation='mean'" in msg
    assert "config.optim: total_steps=0 must be >= 1" in msg
    c = slm.default_config()
    c.model.path, c.model.preset, c.slm.ratio = "x", "tiny", 1.5
    with pytest.raises(ValueError) as e:
        typed.from_config(slm.SLMConfig, c)
    msg = str(e.value)
    assert "config.model: set exactly one of path and preset" in msg
    assert "config.slm: ratio=1.5" in msg and "config.slm.reference: path is required" in msg


def test_derived_fields_are_filled_in_at_the_boundary_only():
    c = grpo.default_config()
    c.model.preset, c.grpo.prompts_per_step, c.grpo.group_size = "tiny", 3, 4
    c.grpo.max_prompt_len, c.grpo.max_new_tokens = 10, 20
    before = c.to_dict()
    g = typed.from_config(grpo.GRPOConfig, c)
    assert (g.batch_size, g.seq_len) == (12, 30)
    assert c.to_dict() == before  # the caller's config is untouched
    assert dataclasses.replace(g, grpo=dataclasses.replace(g.grpo, group_size=2)).batch_size == 6
    lm = typed.from_config(LMConfig, dict(seq_len=77, model=dict(preset="tiny")))
    assert lm.data.seq_len == 77  # data.seq_len is the run's


def test_the_split_of_rows_is_checked_with_the_fields_named():
    with pytest.raises(ValueError, match=r"batch_size=60 does not split into accum_steps=8"):
        typed.from_config(loop.TrainConfig, dict(batch_size=60, accum_steps=8))
    c = grpo.default_config()
    c.model.preset, c.grpo.prompts_per_step, c.grpo.group_size, c.grpo.minibatches = "tiny", 3, 2, 4
    with pytest.raises(ValueError, match=r"= 6 rows do not split into grpo.minibatches=4 x accum_steps=1"):
        typed.from_config(grpo.GRPOConfig, c)


def test_data_config_checks_and_optional_fields_take_flags():
    c = data.default_data_config()
    c.num_epochs = 2  # a typed reference: None by default, an int from --config.data.num_epochs=2
    assert typed.from_config(data.DataConfig, c).num_epochs == 2
    with pytest.raises(ValueError, match=r"data: template='chatml'; expected one of"):
        data.check_config(dict(files=["x"], template="chatml"))
    with pytest.raises(ValueError, match=r"data.files=\[\] must be a non-empty list"):
        data.check_config(dict())


def test_evaluate_checks_its_generate_group():
    c = evaluate.default_config()
    c.generate.prompt_format, c.generate.sampling.n, c.ks = "chatml", 0, ()
    with pytest.raises(ValueError) as e:
        typed.from_config(evaluate.EvaluateConfig, c)
    msg = str(e.value)
    assert "config.generate: prompt_format='chatml'" in msg and "config.generate.sampling: max_new_tokens=256 " \
        "and n=0 must be >= 1" in msg and "config: ks=[] must be a non-empty list" in msg

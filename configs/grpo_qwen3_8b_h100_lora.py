"""GRPO of Qwen3-8B with LoRA (r=64 on all seven projections) on one H100 (80 GB): the recipe of
configs/grpo_qwen3_1p7b_h100.py (beta 0.04 against the initial policy, group 16, 32 prompts,
1024-token completions, mu = 2) with the base frozen in bfloat16. The reference is the base with
adapters off, so one copy of the 8B weights is on the GPU; full fine-tuning does not fit (the
dry-run table in BENCHMARKS.md). Fields: reasonax.train.grpo.default_config.

    python -m reasonax.train.grpo --config=configs/grpo_qwen3_8b_h100_lora.py --dry_run
    python -m reasonax.train.grpo --config=configs/grpo_qwen3_8b_h100_lora.py \
        --config.model.path=/path/to/Qwen3-8B --config.model.preset='' \
        --config.grpo.files=/path/to/train.jsonl --config.workdir=/path/to/workdir
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("grpo_qwen3_1p7b_h100", Path(__file__).with_name("grpo_qwen3_1p7b_h100.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
    c = _base.get_config()
    c.model.preset = "qwen3-8b"  # real run: the HF directory of Qwen/Qwen3-8B (and model.preset='')
    c.lora.r, c.lora.alpha = 64, 128.0
    c.optim.lr = 1e-5  # adapters take a larger lr than full fine-tuning
    c.accum_steps = 64  # 8 rows per micro-batch (32: 85.5 GiB in the dry run)
    return c

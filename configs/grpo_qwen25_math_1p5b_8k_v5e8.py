"""Long-context GRPO of Qwen2.5-Math-1.5B on a TPU v5e-8: completions of up to 8,192 tokens
(rows of 512 + 8,192 = 8,704 tokens), FSDP over the 8 chips (16 GiB HBM each). Fields:
reasonax.train.grpo.default_config; everything else as configs/grpo_qwen25_math_1p5b_v5e8.py.

    python -m reasonax.train.grpo --config=configs/grpo_qwen25_math_1p5b_8k_v5e8.py --dry_run

What changes for 8k rows: attention is blockwise / splash (model.attention_impl 'auto': splash on
TPU, the blockwise kernel elsewhere; memory O(T x block) instead of [B, heads, T, S] float32
scores), and the micro-batches hold one row per chip (accum_steps=16: 128-row updates in 16
micro-batches of 8 rows), so the train step's temporaries are those of 8,704 tokens per chip.
The sampler's decode slots follow from kv_budget_gb as before (fewer slots for longer rows),
and its decode attention over caches longer than attention.LONG_DECODE columns is blockwise.
The dry run checks the larger of the train step and the rollout engine.

The rollout layout is pinned to data=4,tensor=2: auto's analytic estimate would replicate the
weights (the fastest estimated rollout, 6.6 GiB per chip), but the dry run's compiled decode
block for replicated weights at 8k columns needs 16.6 GiB on XLA:CPU (which runs bf16 dots in
float32 copies), over the chip's 16 GiB; split over 2 chips per head group it fits either way.
"""

from configs.grpo_qwen25_math_1p5b_v5e8 import get_config as base_config


def get_config():
    c = base_config()
    c.grpo.max_new_tokens = 8192
    c.grpo.overlong_buffer = 1024
    c.accum_steps = 16
    c.grpo.rollout_mesh = "data=4,tensor=2"
    return c

"""Evaluate Gemma 3 270M base on GSM8K test with the standard few-shot CoT prompt.

    python -m reasonax.evaluate --config=configs/eval_gsm8k_gemma3_270m.py \
        --config.generate.model=$HOME/.cache/reasonax/gemma3-270m-f32 --config.limit=20

Fields: reasonax.evaluate.default_config (and .generate: reasonax.sample.generate_cli.default_config).
"""

from reasonax.evaluate import default_config


def get_config():
    c = default_config()
    c.dataset = "gsm8k"
    c.few_shot = "gsm8k"
    c.num_few_shot = 5
    c.ks = (1, 2, 4)
    c.output_dir = "runs/eval_gsm8k_gemma3_270m"
    c.generate.prompt_format = "few-shot"
    c.generate.sampling.temperature = 0.7
    c.generate.sampling.max_new_tokens = 256
    return c

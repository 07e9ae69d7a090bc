"""Sampling config: Gemma 3 270M base, few-shot math prompts. Fields: reasonax.sample.generate_cli.default_config.

    python -m reasonax.sample.generate_cli --config=configs/generate_gemma3_270m.py \
        --config.model=$HOME/.cache/reasonax/gemma3-270m-f32 --config.prompts=questions.jsonl \
        --config.output=out/samples.jsonl --config.sampling.n=4
"""

from reasonax.sample.generate_cli import default_config


def get_config():
    c = default_config()
    c.prompt_format = "few-shot"  # a base model: plain Question/Answer blocks
    c.sampling.temperature = 0.7
    return c

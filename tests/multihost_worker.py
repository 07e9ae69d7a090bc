"""One process of the multi-host SFT test (tests/test_multihost.py); not a test module itself.

    python tests/multihost_worker.py LOCAL_DEVICES WORKDIR [PROCESS_ID NUM_PROCESSES COORDINATOR]

Fakes LOCAL_DEVICES CPU devices (XLA_FLAGS, set before jax is imported), builds
configs/sft_tiny_cpu.py for a 5-step run on an 8-device (data=2, fsdp=4) mesh with one example
per row (data.pack=False) and calls reasonax.train.sft.run. With a coordinator address the run
is one of NUM_PROCESSES processes joined by jax.distributed.initialize (config.distributed).
Writes WORKDIR/worker_<process_id>.json describing what jax saw; metrics.jsonl (process 0) and
checkpoints/ are written by the run itself; then the trained params score the training data as an
SLM reference (reasonax.train.slm.ref_scores) into WORKDIR/ref_scores.

With REASONAX_WORKER_CHANGES (JSON {dotted field: value}, tests/test_faults.py) those config fields
are changed and the run is all it does (no SLM pass, no worker_<id>.json).
"""

import json
import os
import sys
from pathlib import Path

NUM_STEPS = 5


def main(argv):
    local_devices, workdir = int(argv[1]), Path(argv[2])
    process_id, num_processes, coordinator = 0, 1, ""
    if len(argv) > 3:
        process_id, num_processes, coordinator = int(argv[3]), int(argv[4]), argv[5]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))

    import importlib.util

    import jax

    spec = importlib.util.spec_from_file_location("sft_tiny_cpu", root / "configs" / "sft_tiny_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.workdir = str(workdir)
    c.num_steps = NUM_STEPS
    c.optim.total_steps = NUM_STEPS
    c.optim.warmup_steps = 2
    c.log_every = 1
    c.checkpoint.every = NUM_STEPS
    c.checkpoint.async_save = False
    c.export_hf = "none"
    c.tensorboard = False
    c.peak_flops = "1e12"  # a given peak: no matmul measurement
    c.mesh = dict(data=2, fsdp=4, tensor=1)
    c.data.pack = False  # see tests/test_multihost.py: packing is per process
    c.distributed.coordinator_address = coordinator
    c.distributed.num_processes = num_processes
    c.distributed.process_id = process_id

    from reasonax.train import common, sft

    changes = json.loads(os.environ.get("REASONAX_WORKER_CHANGES", "{}"))
    if changes:
        from tests.test_train_loop import set_fields

        sft.run(set_fields(c, changes))
        if coordinator:
            jax.distributed.shutdown()
        return
    state = sft.run(c)
    # the SLM reference scoring pass over the same data, with the trained params as the reference
    from reasonax.train import loop
    from reasonax.train.slm import ref_scores

    from reasonax import typed

    c = typed.from_config(sft.SFTConfig, c)  # common's helpers take the typed config
    cfg = common.model_config(c)
    ref_scores.score(state.params, cfg, common.load_tokenizer(c), common.data_config(c), workdir / "ref_scores",
                     mesh=loop.config_mesh(c), batch_size=8, part_records=150, progress=False)
    info = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                device_count=jax.device_count(), local_device_count=jax.local_device_count(),
                cpu_collectives=jax.config.jax_cpu_collectives_implementation)
    (workdir / f"worker_{process_id}.json").write_text(json.dumps(info))
    if coordinator:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv)

"""Where GRPO's rollouts run: the rollout layout of the weights, the weight sync, the cost model.

The learner keeps its training layout (config.mesh, FSDP on a pod). Decoding with FSDP weights
all-gathers every layer's weights at every token, so the rollout runs on its own copy of the
weights in a rollout layout, a (data, tensor) mesh over the rollout devices:

    layout = resolve(config, devices)          # grpo.rollout_mesh: 'auto', 'train' or 'data=D,tensor=T'
    sync = WeightSync(frozen)                  # once per optimizer step:
    params_r = sync(state.params, targets)     #   reshard train layout -> rollout layout (new arrays: version + 1)
    ... sample.generate(params_r, ...)         # the engine runs on whatever params it is given
    sync.free()                                # overlap none: drop the copy before the update

Layouts are decided here and nowhere else; the engine's programs know nothing of them (the slots
shard over the params' mesh's data axes, reasonax.sample.engine).

- 'train': today's behaviour, the learner's arrays as they are (no copy, no sync).
- 'data=D,tensor=T': weights sharded over T along heads and MLP (the logical-axis rules of
  reasonax.model.sharding with no fsdp axis and the vocabulary whole: RULES), replicated over D;
  the slots shard over D. T must divide the query and the KV heads.
- 'auto': of the (D, T) meshes over the rollout devices whose T divides the heads, the one with the
  lowest estimated rollout (decode step x waves of slots, estimate below) that fits the memory budget
  (config.device_memory_gib, else the device's own memory at run time, else no limit). With
  overlap none the train state stays resident while rolling out and is counted.

The estimate of one decode step on one device (estimate()), bandwidth terms only:

    HBM      weights held by the device + the KV cache of its slots at full length
             (every column read: an upper bound) / hbm_bw
    network  per layer two all-reduces of [slots, hidden] (attention and MLP outputs) and one more
             for the embedding lookup, when T > 1; a ring moves 2 (T-1)/T of an all-reduce's bytes
             per device / (interconnect_bw / 2)
    latency  COLLECTIVE_LATENCY_S per collective (an assumption, not a vendor figure)

Device figures come from reasonax.train.monitor.CHIPS. The rollout of one step is at most
max_new_tokens decode steps per wave of slots, ceil(rows / slots) waves: an upper bound (rows end
early), and labelled so.

LoRA: the frozen base is placed in the rollout layout once and each sync moves only the adapters
(the leaves under params['layers']['lora']). They are moved, not merged: merging would rewrite
every adapted weight matrix, a full copy of those weights per sync, while the adapters are a few
MiB and the forward applies (x A) B beside the frozen weight (a little more decode compute).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from reasonax.model import lora
from reasonax.model import sharding as sharding_lib
from reasonax.model.cache import kv_bytes_per_row
from reasonax.model.config import ModelConfig
from reasonax.model.params import ADAPTERS, abstract_params, param_shardings
from reasonax.sample import engine, sampler
from reasonax.train.monitor import CHIPS, Chip, peak_key

GIB = 1 << 30
# The rollout layout's logical-axis rules: the model's, but the vocabulary stays whole, so that the
# [slots, vocab] logits never cross devices (only activation-sized all-reduces remain per layer)
RULES = tuple((axis, mesh_axes) for axis, mesh_axes in sharding_lib.DEFAULT_RULES if axis != "vocab")
COLLECTIVE_LATENCY_S = 10e-6  # assumed fixed cost of one small collective (order of magnitude; not sourced)
FIELD = "grpo.rollout_mesh"


# ----------------------------------------------------------------------------------------------
# Layout specs


def parse(spec: str) -> tuple[int, int] | str:
    """'auto' | 'train' | 'data=D,tensor=T' (either part may be left out: 1) -> 'auto', 'train' or (D, T).
    ValueError naming grpo.rollout_mesh otherwise."""
    s = str(spec).strip().lower()
    if s in ("auto", "train"):
        return s
    sizes = {"data": 1, "tensor": 1}
    for part in filter(None, (p.strip() for p in s.split(","))):
        m = re.fullmatch(r"(data|tensor)\s*=\s*(\d+)", part)
        if not m or int(m.group(2)) < 1:
            raise ValueError(f"{FIELD}={spec!r}: expected 'auto', 'train' or 'data=D,tensor=T' (D, T >= 1)")
        sizes[m.group(1)] = int(m.group(2))
    if not s:
        raise ValueError(f"{FIELD}={spec!r}: expected 'auto', 'train' or 'data=D,tensor=T'")
    return sizes["data"], sizes["tensor"]


def check(data: int, tensor: int, num_devices: int, cfg: ModelConfig) -> None:
    """ValueError naming grpo.rollout_mesh unless data x tensor = the rollout devices and tensor
    divides the query and the KV heads."""
    if data * tensor != num_devices:
        raise ValueError(f"{FIELD}: data={data} x tensor={tensor} = {data * tensor} devices, but the rollout "
                         f"runs on {num_devices} devices (grpo.rollout_devices, or all devices)")
    check_heads(tensor, cfg)


def check_heads(tensor: int, cfg: ModelConfig) -> None:
    """ValueError naming grpo.rollout_mesh unless tensor divides the query and the KV heads (the build
    checks this; the device count is known only where the rollout runs)."""
    if cfg.num_heads % tensor or cfg.num_kv_heads % tensor:
        raise ValueError(f"{FIELD}: tensor={tensor} does not divide the model's {cfg.num_heads} query heads and "
                         f"{cfg.num_kv_heads} KV heads")


def candidates(num_devices: int, cfg: ModelConfig) -> list[tuple[int, int]]:
    """Every (data, tensor) over num_devices whose tensor divides the query and KV heads, replicated first."""
    return [(num_devices // t, t) for t in range(1, num_devices + 1)
            if num_devices % t == 0 and cfg.num_heads % t == 0 and cfg.num_kv_heads % t == 0]


def make_mesh(data: int, tensor: int, devices: Sequence) -> jax.sharding.Mesh:
    """The rollout mesh: (data, fsdp=1, tensor) over devices, so the model's logical-axis rules apply."""
    return sharding_lib.make_mesh(data=data, fsdp=1, tensor=tensor, devices=list(devices))


def name(data: int, tensor: int) -> str:
    return f"data={data},tensor={tensor}"


# ----------------------------------------------------------------------------------------------
# Cost model


def prefix_cache_bytes(cfg: ModelConfig, rc, dtype) -> int:
    """Bytes per device of grpo config rc's prefix cache (grpo.prefix_cache_gb; out of the KV budget)."""
    return engine.PrefixCache(rc.prefix_cache_gb, rc.prefix_block).bytes_per_device(cfg, dtype)


def slot_count(cfg: ModelConfig, rc, data: int, rows: int, dtype) -> tuple[int, int]:
    """(slots, cache columns) the engine takes for grpo config rc with the slots over `data` shards
    (as sample.generate sizes them for the longest prompt bucket, the prefix cache taken out of
    the KV budget)."""
    columns = sampler.bucket(int(rc.max_prompt_len)) + int(rc.max_new_tokens)
    budget = int(rc.kv_budget_gb * GIB) - prefix_cache_bytes(cfg, rc, dtype)
    slots = int(rc.num_slots) or engine.plan_slots(cfg, columns, dtype, budget, data, rows)
    return slots, columns


def estimate(cfg: ModelConfig, rc, data: int, tensor: int, weight_bytes: int, rows: int, dtype,
             chip: Chip | None) -> dict:
    """The decode-step estimate of a (data, tensor) layout on one device (module docstring):
    bytes read from HBM, network bytes, collectives, and seconds per step and per rollout (None
    without a chip). weight_bytes: the weights one device holds in this layout (exact, from the
    shardings)."""
    slots, columns = slot_count(cfg, rc, data, rows, dtype)
    per_shard = math.ceil(slots / data)
    kv_split = tensor if cfg.num_kv_heads % tensor == 0 else 1  # KV heads replicated when T does not divide them
    kv = kv_bytes_per_row(cfg, columns, dtype) * per_shard // kv_split
    act = jnp.dtype(dtype).itemsize
    n_coll, net = 0, 0.0
    if tensor > 1:  # the vocabulary is whole in the rollout layout (RULES): no logits gather
        n_coll = 2 * cfg.num_layers + 1
        net = n_coll * 2 * (tensor - 1) / tensor * per_shard * cfg.hidden_size * act
    hbm = weight_bytes + kv
    temps = engine.step_bytes_per_slot(cfg) * per_shard
    out = {"layout": name(data, tensor), "data": data, "tensor": tensor, "num_slots": slots, "cache_columns": columns,
           "weight_bytes": int(weight_bytes), "kv_bytes": int(kv), "decode_temp_bytes": int(temps),
           "prefix_cache_bytes": prefix_cache_bytes(cfg, rc, dtype),
           "hbm_bytes_per_step": int(hbm), "network_bytes_per_step": int(net), "collectives_per_step": n_coll,
           "waves": math.ceil(rows / slots), "step_s": None, "rollout_s": None}
    if chip is not None:
        step = hbm / chip.hbm_bw + net / (chip.interconnect_bw / 2) + n_coll * COLLECTIVE_LATENCY_S
        out["step_s"] = step
        out["rollout_s"] = step * int(rc.max_new_tokens) * out["waves"]
    return out


def sync_seconds(sync_bytes: int, chip: Chip | None) -> float | None:
    """A weight sync's estimate: the bytes one device receives over one direction of its interconnect."""
    return None if chip is None else sync_bytes / (chip.interconnect_bw / 2)


def chip_of(peak_flops, devices: Sequence) -> Chip | None:
    """The CHIPS entry named by config.peak_flops, else the devices' own kind, else None (CPU)."""
    if isinstance(peak_flops, str) and peak_flops.strip().lower() in CHIPS:
        return CHIPS[peak_flops.strip().lower()]
    key = peak_key(devices[0].device_kind) if devices and devices[0].platform != "cpu" else None
    return CHIPS[key] if key else None


def device_budget(device_memory_gib: float, devices: Sequence) -> int | None:
    """Bytes per device the rollout must fit: config.device_memory_gib, else the device's memory
    limit (memory_stats), else None (no limit known: CPU)."""
    if device_memory_gib:
        return int(device_memory_gib * GIB)
    stats = devices[0].memory_stats() if devices and devices[0].platform != "cpu" else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs / arrays (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total


def policy_spec(cfg: ModelConfig, dtype, mesh, adapters_dtype=None, rules=RULES) -> dict:
    """ShapeDtypeStructs of the params the rollout decodes with, sharded for `mesh` by `rules` (the
    adapters too when cfg carries LoRA settings)."""
    spec = abstract_params(cfg, dtype, mesh, rules)
    if cfg.lora is not None:
        ad = lora.abstract_adapters(cfg, jnp.dtype(adapters_dtype or dtype), mesh, rules)
        spec = {**spec, "layers": {**spec["layers"], ADAPTERS: ad}}
    return spec


@dataclasses.dataclass(frozen=True)
class Layout:
    """A resolved rollout layout: the mesh the rollout decodes on ('train': the learner's own) and,
    for auto, every candidate's estimate."""

    spec: str                       # 'train' or 'data=D,tensor=T'
    mesh: jax.sharding.Mesh
    estimate: dict | None = None    # estimate() of the chosen layout (None for 'train')
    considered: tuple = ()          # auto: (estimate, fits) of every candidate

    @property
    def is_train(self) -> bool:
        return self.spec == "train"

    @property
    def rules(self) -> tuple:
        """The logical-axis rules to place and trace the rollout with (sharding.use_rules)."""
        return sharding_lib.DEFAULT_RULES if self.is_train else RULES


def resolve(cfg: ModelConfig, rc, train_mesh, devices: Sequence, *, rows: int, dtype, chip: Chip | None,
            budget: int | None, resident: int, adapters_dtype=None) -> Layout:
    """The rollout layout of grpo config rc over `devices` (module docstring). resident: bytes per
    device that stay while rolling out (the train state with overlap none; 0 on a separate rollout
    group). ValueError naming grpo.rollout_mesh for a layout that does not divide the devices or
    heads, or whose weights + KV + decode temporaries (+ resident) exceed the budget."""
    spec = parse(rc.rollout_mesh)
    if spec == "train":
        return Layout("train", train_mesh)
    options = candidates(len(devices), cfg) if spec == "auto" else [spec]
    if spec != "auto":
        check(*spec, len(devices), cfg)
    considered = []
    for data, tensor in options:
        mesh = make_mesh(data, tensor, devices)
        weights = per_device_bytes(policy_spec(cfg, dtype, mesh, adapters_dtype))
        est = estimate(cfg, rc, data, tensor, weights, rows, dtype, chip)
        need = weights + est["kv_bytes"] + est["prefix_cache_bytes"] + est["decode_temp_bytes"] + resident
        est["memory_bytes"] = int(need)
        considered.append((est, mesh, budget is None or need <= budget))
    fitting = [c for c in considered if c[2]]
    if not fitting:
        worst = min(considered, key=lambda c: c[0]["memory_bytes"])[0]
        raise ValueError(
            f"{FIELD}={rc.rollout_mesh!r}: no rollout layout fits {budget / GIB:.2f} GiB per device; the smallest, "
            f"{worst['layout']}, needs {worst['memory_bytes'] / GIB:.2f} GiB (weights {worst['weight_bytes'] / GIB:.2f}, "
            f"KV {worst['kv_bytes'] / GIB:.2f} of {worst['num_slots']} slots, decode temporaries "
            f"{worst['decode_temp_bytes'] / GIB:.2f}, resident train state {resident / GIB:.2f}): lower "
            f"grpo.kv_budget_gb / grpo.num_slots, use more tensor parallelism, or set grpo.rollout_devices")
    # the lowest estimated rollout (decode step x waves of slots); without device figures (CPU), the fewest
    # tensor shards
    best = min(fitting, key=lambda c: (c[0]["rollout_s"] if c[0]["rollout_s"] is not None else 0.0, c[0]["tensor"]))
    return Layout(best[0]["layout"], best[1], best[0], tuple((c[0], c[2]) for c in considered))


# ----------------------------------------------------------------------------------------------
# The weight sync


class WeightSync:
    """Reshards the learner's params into the rollout layout, once per optimizer step.

    sync(params) returns params placed with the rollout layout's shardings. `version` (the params
    version that caches on the weights key on: the engine's prefix cache) goes up whenever a leaf
    is a different array from the last sync's (an update; a LoRA step's new adapters).
    A leaf whose source array is the one synced last time (LoRA's frozen base, or nothing changed
    since) keeps its rollout copy; a leaf already in the rollout sharding is used as it is (the
    'train' layout: no copies at all). `frozen(path)` marks leaves that are never freed (LoRA's
    base: placed once). free() deletes the moved copies (overlap none: before the update, so
    memory holds one copy). Counters: bytes moved per device by the last sync, its seconds."""

    def __init__(self, frozen=lambda path: False):
        self.frozen = frozen
        self.version = 0
        self.bytes_moved = 0
        self.seconds = 0.0
        self._src: dict = {}  # path -> the source array last copied (held, so `is` is safe)
        self._seen: list = []  # every leaf of the last sync (held): the version changes when one differs
        self._dst: dict = {}  # path -> its copy in the rollout layout

    def __call__(self, params: dict, shardings: dict | None = None) -> dict:
        """params in the rollout layout. shardings: the target NamedShardings (a tree like params);
        None: params as they are (the 'train' layout)."""
        t0 = time.perf_counter()
        moved = 0
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        targets = [None] * len(flat) if shardings is None else jax.tree.leaves(shardings)
        if len(targets) != len(flat):
            raise ValueError(f"weight sync: {len(flat)} params but {len(targets)} target shardings")
        leaves = []
        for (path, x), target in zip(flat, targets):
            key = jax.tree_util.keystr(path)
            if target is None or x.sharding.is_equivalent_to(target, x.ndim):
                leaves.append(x)
                continue
            if self._src.get(key) is x and key in self._dst and not self._dst[key].is_deleted():
                leaves.append(self._dst[key])
                continue
            old = self._dst.pop(key, None)
            if old is not None and not old.is_deleted():
                old.delete()  # one rollout copy at a time
            y = jax.device_put(x, target)
            self._src[key], self._dst[key] = x, y
            moved += math.prod(target.shard_shape(x.shape)) * x.dtype.itemsize
            leaves.append(y)
        out = jax.tree_util.tree_unflatten(treedef, leaves)
        jax.block_until_ready(out)
        sources = [x for _, x in flat]
        if len(sources) != len(self._seen) or any(a is not b for a, b in zip(sources, self._seen)):
            self.version += 1
        self._seen = sources
        self.bytes_moved, self.seconds = moved, time.perf_counter() - t0
        return out

    def free(self) -> None:
        """Delete the copies of the leaves that change every step (everything but frozen ones)."""
        for key in [k for k in self._dst if not self.frozen(k)]:
            y = self._dst.pop(key)
            self._src.pop(key, None)
            if not y.is_deleted():
                y.delete()


def copy_bytes(source_spec, target_spec) -> int:
    """Bytes per device a sync from source_spec's shardings to target_spec's moves (and the rollout
    copy holds beside the source): the leaves whose target sharding is not equivalent to their
    source's (WeightSync uses those as they are)."""
    total = 0
    for a, b in zip(jax.tree.leaves(source_spec), jax.tree.leaves(target_spec)):
        if not a.sharding.is_equivalent_to(b.sharding, len(b.shape)):
            total += math.prod(b.sharding.shard_shape(b.shape)) * jnp.dtype(b.dtype).itemsize
    return total


def lora_frozen(path: str) -> bool:
    """With LoRA every leaf but the adapters (params['layers']['lora']) is the frozen base."""
    return f"['{ADAPTERS}']" not in path


def rollout_shardings(params: dict, mesh: jax.sharding.Mesh, cfg: ModelConfig) -> dict:
    """NamedShardings on `mesh` for a params tree shaped like `params` (by the model's logical axes;
    LoRA adapters under params['layers']['lora'] too)."""
    target = param_shardings(cfg, mesh, RULES)
    if cfg.lora is not None:
        target = {**target, "layers": {**target["layers"], ADAPTERS: lora.adapter_shardings(cfg, mesh, RULES)}}
    specs = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(target)[0]}
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    try:
        return jax.tree_util.tree_unflatten(treedef, [specs[jax.tree_util.keystr(p)] for p, _ in flat])
    except KeyError as e:
        raise ValueError(f"weight sync: no rollout sharding for param {e.args[0]}") from None


# ----------------------------------------------------------------------------------------------
# Collectives of a compiled program


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_COLLECTIVE = re.compile(r"=\s*(\(.*?\)|\S+)\s+(all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)"
                         r"(?:-start)?\(")
_SHAPE = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_WHILE = re.compile(r"\swhile\(.*?body=(%[\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLS = re.compile(r"(?:calls|to_apply|true_computation|false_computation)=(%[\w.\-]+)|branch_computations=\{([^}]*)\}")


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        head = re.match(r"^(ENTRY\s+)?(%[\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            current = head.group(2)
            comps[current] = []
            if head.group(1):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps, entry


def collectives(hlo: str) -> dict:
    """Collective result bytes of an optimized HLO module (compiled.as_text()), by loop:

    outside_loops   per run, outside every while loop
    per_iteration   per iteration of the outermost while loop (the decode step), nested loops
                    counted with their known trip counts (the layer scan: num_layers)
    per_inner_iteration  per iteration of the loop nested in it (a layer), the largest such loop
    largest_in_loop the largest single collective inside any loop
    count_per_iteration  how many collectives one outer iteration runs
    """
    comps, entry = _computations(hlo)
    memo: dict[str, tuple[float, float, int]] = {}

    def cost(name: str, stack=()) -> tuple[float, float, int]:
        """(bytes, largest, count) of one execution of computation `name`, loops x trip counts."""
        if name in memo:
            return memo[name]
        total, largest, count = 0.0, 0.0, 0
        for line in comps.get(name, ()):
            m = _COLLECTIVE.search(line)
            if m:
                b = _shape_bytes(m.group(1))
                total, largest, count = total + b, max(largest, b), count + 1
            w = _WHILE.search(line)
            if w and w.group(1) not in stack:
                trip = _TRIP.search(line)
                b, lg, n = cost(w.group(1), (*stack, name))
                k = int(trip.group(1)) if trip else 1
                total, largest, count = total + k * b, max(largest, lg), count + k * n
                continue
            for single, group in _CALLS.findall(line):
                for callee in ([single] if single else [c.strip() for c in group.split(",")]):
                    if callee in comps and callee not in stack:
                        b, lg, n = cost(callee, (*stack, name))
                        total, largest, count = total + b, max(largest, lg), count + n
        memo[name] = (total, largest, count)
        return memo[name]

    outside, outer = 0.0, []
    for line in comps.get(entry, ()):
        m = _COLLECTIVE.search(line)
        if m:
            outside += _shape_bytes(m.group(1))
        w = _WHILE.search(line)
        if w and not _TRIP.search(line):
            outer.append(w.group(1))
    if not outer:  # no open-ended loop: the longest known one is the step
        outer = [w.group(1) for line in comps.get(entry, ()) if (w := _WHILE.search(line))]
    per_iter, largest, count, inner = 0.0, 0.0, 0, 0.0
    for body in outer:
        b, lg, n = cost(body)
        per_iter, largest, count = per_iter + b, max(largest, lg), count + n
        for line in comps.get(body, ()):
            w = _WHILE.search(line)
            if w:
                inner = max(inner, cost(w.group(1))[0])
    return {"outside_loops": int(outside), "per_iteration": int(per_iter), "per_inner_iteration": int(inner),
            "largest_in_loop": int(largest), "count_per_iteration": int(count)}

"""Meshes and logical-axis sharding rules.

Every array dimension carries a logical name ("batch", "embed", "q_heads", ...). A handful of
rules map logical names to mesh axes ("data", "fsdp", "tensor"). A dimension whose size is not
divisible by its mesh axes (e.g. 1 KV head over 2 tensor shards) stays replicated, so one rule
set serves MQA, GQA and MHA models alike.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the data-parallel axes: rows of every batch, the sampler's slots

# logical axis -> mesh axes (tried in order; a mesh axis is used at most once per array)
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("q_heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("mlp", ("tensor",)),
    # LoRA's rank axis (reasonax.model.lora): FSDP-sharded like the base's embed axis, so every
    # adapter (B has no embed axis) and its AdamW state split over fsdp; A's embed axis then stays whole
    ("lora_rank", ("fsdp",)),
    # replicated: layers, head_dim, norm, seq
)


_ACTIVE_RULES = contextvars.ContextVar("reasonax_sharding_rules", default=DEFAULT_RULES)


@contextlib.contextmanager
def use_rules(rules):
    """Trace under `rules` instead of DEFAULT_RULES: constrain() inside the model follows them (the
    rollout layout keeps the vocabulary whole, reasonax.train.rollout_layout.RULES). Per thread."""
    token = _ACTIVE_RULES.set(tuple(rules))
    try:
        yield
    finally:
        _ACTIVE_RULES.reset(token)


def mesh_shape(data: int = 1, fsdp: int = 1, tensor: int = 1, num_devices: int | None = None,
               name: str = "mesh") -> dict[str, int]:
    """{axis: size} of a (data, fsdp, tensor) mesh; one axis of -1 takes num_devices / (the others).
    ValueError (naming `name`, e.g. 'config.mesh') on a size < 1, two -1 axes, a -1 without
    num_devices, or devices that do not divide."""
    shape = dict(zip(MESH_AXES, (int(data), int(fsdp), int(tensor))))
    free = [a for a, n in shape.items() if n == -1]
    if bad := [a for a, n in shape.items() if n == 0 or n < -1]:
        raise ValueError(f"{name} {shape}: axes {bad} must be >= 1 (or -1)")
    if len(free) > 1:
        raise ValueError(f"{name} {shape}: at most one axis may be -1")
    if free:
        axis = free[0]
        if num_devices is None:
            raise ValueError(f"{name} {shape} has {axis}=-1, which cannot be sized without a device count: give "
                             f"the mesh explicitly, e.g. --config.mesh.{axis}=64 (devices = data*fsdp*tensor)")
        rest = int(np.prod([n for n in shape.values() if n != -1]))
        if num_devices % rest:
            raise ValueError(f"{name} {shape}: {num_devices} devices do not divide by the fixed axes ({rest})")
        shape[axis] = num_devices // rest
    return shape


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (XLA propagates shardings inside jit).

    data=-1 (or fsdp=-1) takes all remaining devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    if int(np.prod(list(shape.values()))) != len(devices):
        raise ValueError(f"mesh {shape} needs {int(np.prod(list(shape.values())))} devices, have {len(devices)}")
    return jax.make_mesh(tuple(shape.values()), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def batch_shards(mesh: Mesh | None) -> int:
    """How many ways rows split over the mesh's batch axes (1 without a mesh)."""
    return 1 if mesh is None else int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (the leading dim of every batch array) over the batch axes data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh_shape: dict[str, int],
                    rules=DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec for an array with these logical axes and shape on a mesh of this shape."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape):
        chosen: list[str] = []
        for mesh_axis in table.get(name, ()) if name else ():
            n = mesh_shape.get(mesh_axis, 1)
            if mesh_axis in used or n == 1:
                continue
            if size % (int(np.prod([mesh_shape[a] for a in chosen])) * n) == 0:
                chosen.append(mesh_axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int],
                   rules=DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, dict(mesh.shape), rules))


def constrain(x: jax.Array, axes: Sequence[str | None], rules=None) -> jax.Array:
    """with_sharding_constraint by logical axes under the current mesh (jax.set_mesh); no-op without.
    rules: default the active ones (use_rules; DEFAULT_RULES)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    rules = _ACTIVE_RULES.get() if rules is None else rules
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, dict(mesh.shape), rules))

"""Meshes and shardings: a ('data', 'fsdp', 'tensor') mesh from the config, logical axis
names for every parameter (derived from its path, so checkpoints stay plain arrays), and
the rules mapping logical names to mesh axes.

Parameters are sharded FSDP-style over 'fsdp' on their model dimension and Megatron-style
over 'tensor' on attention heads and MLP hidden units; batches over ('data', 'fsdp'). A
dimension that the mesh axis does not divide is left replicated rather than failing.

The encoder's fused qkv kernel (C, 3C) is stored like any column-parallel kernel, its 3C
columns split in contiguous pieces, but it is used through a (C, 3, heads, C / heads) view
pinned by heads (`constrain`): each device projects and attends over q, k and v of the
same heads, and no activation is exchanged between the projection and the attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes, or None for replicated)
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),  # attention projections' output (qkv) / input (proj) features
    ("mlp", "tensor"),
    ("height", None),
    ("width", None),
    ("tokens", None),
)

# Dense layers whose output features split across 'tensor' (column-parallel) and those
# whose input features do (row-parallel), by module name.
_COLUMN_PARALLEL = {"qkv", "lin1", "q_proj", "k_proj", "v_proj"}
_ROW_PARALLEL = {"proj", "lin2", "out_proj"}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A 3-axis mesh; one size may be -1 (= the remaining devices)."""
    devices = jax.devices() if devices is None else devices
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(
            f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}"
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
        raise ValueError(
            f"mesh data={data} fsdp={fsdp} tensor={tensor} does not fit {len(devices)} devices"
        )
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} "
            f"devices, have {len(devices)}"
        )
    return jax.make_mesh(
        tuple(sizes), MESH_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 3
    )


def param_logical_axes(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str | None, ...]:
    """Logical axis names of one parameter, from its path and rank."""
    name, module = path[-1], path[-2] if len(path) > 1 else ""
    if name == "kernel" and len(shape) == 2:
        if module in _COLUMN_PARALLEL:
            return ("embed", "heads" if module != "lin1" else "mlp")
        if module in _ROW_PARALLEL:
            return ("heads" if module != "lin2" else "mlp", "embed")
        return ("embed", None)
    if name == "bias" and len(shape) == 1 and module in _COLUMN_PARALLEL:
        return ("heads" if module != "lin1" else "mlp",)
    if name == "kernel" and len(shape) == 4:  # conv (kh, kw, in, out)
        return (None, None, None, "embed")
    if name == "pos_embed":
        return (None, None, None, "embed")
    return (None,) * len(shape)


def _mesh_axes_for(logical, rules) -> str | tuple[str, ...] | None:
    for name, axes in rules:
        if name == logical:
            return axes
    return None


def logical_to_spec(
    logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES
) -> PartitionSpec:
    """PartitionSpec for logical axes; axes the mesh cannot divide stay replicated."""
    spec, used = [], set()
    for dim, name in zip(shape, logical):
        axes = None if name is None else _mesh_axes_for(name, rules)
        if axes is not None:
            tup = (axes,) if isinstance(axes, str) else tuple(axes)
            tup = tuple(a for a in tup if a not in used and mesh.shape[a] > 1)
            size = int(np.prod([mesh.shape[a] for a in tup])) if tup else 1
            if not tup or dim % size:
                axes = None
            else:
                used.update(tup)
                axes = tup[0] if len(tup) == 1 else tup
        spec.append(axes)
    return PartitionSpec(*spec)


def param_shardings(params, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedSharding for every leaf of a (possibly abstract) parameter tree."""
    flat = flax.traverse_util.flatten_dict(params)
    out = {
        path: NamedSharding(
            mesh, logical_to_spec(param_logical_axes(path, leaf.shape), leaf.shape, mesh, rules)
        )
        for path, leaf in flat.items()
    }
    return flax.traverse_util.unflatten_dict(out)


def constrain_batch(x: jax.Array, rules=DEFAULT_RULES) -> jax.Array:
    """Pin an activation's leading axis to the batch mesh axes of the current mesh
    (`jax.set_mesh`), the rest replicated; a no-op without a mesh or when the axis does not
    divide. Without these hints GSPMD may follow the fsdp-sharded weights instead and
    replicate the batch on every device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = _mesh_axes_for("batch", rules)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if size == 1 or x.ndim == 0 or x.shape[0] % size:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(axes, *([None] * (x.ndim - 1))))


def constrain(x: jax.Array, logical: Sequence[str | None], rules=DEFAULT_RULES) -> jax.Array:
    """Pin `x` (a weight or an activation) to the current mesh by logical axis names, one
    per dimension: None keeps that dimension whole on every device, a name shards it over
    the name's mesh axes. A name whose axes do not divide the dimension leaves it to the
    compiler. A no-op without a mesh (`jax.set_mesh`) or when every mesh axis has size 1."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(size == 1 for size in mesh.shape.values()):
        return x
    if len(logical) != x.ndim:
        raise ValueError(f"{len(logical)} logical axes for an array of shape {x.shape}")
    spec = []
    for dim, name in zip(x.shape, logical):
        axes = None if name is None else _mesh_axes_for(name, rules)
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes:
            spec.append(None)
        elif dim % size:
            spec.append(PartitionSpec.UNCONSTRAINED)
        else:
            spec.append(axes[0] if len(axes) == 1 else axes)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
    """Leading axis over the batch mesh axes, the rest replicated."""
    axes = _mesh_axes_for("batch", rules)
    return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))

"""A sub-model out as a standalone, smaller model of the same family.

``extract(model, sub)`` slices every parameter along the logical axes that ``sub``
truncates (``model.axis_sizes``: e.g. ``"layers"`` to the depth, ``"mlp"`` to the width,
``"heads"`` / ``"kv_heads"`` to the kept heads), builds the model of ``model.sub_config``
and fills it. The small model's outputs equal the masked model's at ``sub``. The logical
axis names the parameters already carry (for sharding) say what to slice, so any model
that implements :class:`sortedjax.protocol.Extractable` is extractable.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from sortedjax.submodel import DIMS, SubModel, check_sizes


def concrete_sizes(sub: SubModel | dict, limits) -> dict[str, int]:
    """``{dim: int}`` of a concrete sub-model, validated against the model's limits."""
    if isinstance(sub, SubModel):
        sizes = {d: getattr(sub, d) for d in DIMS if getattr(sub, d) is not None}
    else:
        sizes = dict(sub)
    for k, v in sizes.items():
        if isinstance(v, jax.core.Tracer) or np.ndim(v) != 0:
            raise ValueError(f"extract needs concrete scalar sizes, got {k}={v!r}")
    sizes = {k: int(v) for k, v in sizes.items()}
    check_sizes(sizes, limits)
    return sizes


def extract(model: nnx.Module, sub: SubModel | dict) -> nnx.Module:
    """The standalone model of sub-model ``sub`` (a new model; ``model`` is unchanged)."""
    for name in ("sub_config", "axis_sizes", "limits"):
        if not hasattr(model, name):
            raise TypeError(
                f"{type(model).__name__} is not extractable: it lacks {name!r} (see sortedjax.protocol.Extractable)"
            )
    sizes = concrete_sizes(sub, model.limits)
    keep = model.axis_sizes(sizes)
    new_cfg = model.sub_config(sizes)

    def cut(var):
        names = var.get_metadata().get("out_sharding") or ()
        x = var.get_value()
        idx = tuple(slice(0, keep[n]) if n in keep else slice(None) for n in names)
        return x[idx] if idx else x

    state = nnx.state(model, nnx.Param)
    params = jax.tree.map(cut, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    params = nnx.to_pure_dict(params)
    if hasattr(model, "extract_params"):
        params = model.extract_params(params, sizes)
    abstract = nnx.eval_shape(lambda: type(model)(new_cfg, rngs=nnx.Rngs(0)))
    graphdef, target, *rest = nnx.split(abstract, nnx.Param, ...)
    want = jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(target))
    got = jax.tree.map(lambda x: x.shape, params)
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
        raise ValueError(f"extracted parameters do not fit {type(model).__name__}({new_cfg}): shapes {got} vs {want}")
    nnx.replace_by_pure_dict(target, params)
    return nnx.merge(graphdef, target, *rest)


from sortedjax._callable import make_callable  # noqa: E402

make_callable(__name__, extract)

"""Activation memory by counting what autodiff saves: the residuals of the family's own loss, per device.

`jax.vjp` of the loss, traced with `jax.make_jaxpr` on abstract parameters and one device's
micro-batch (nothing is allocated), returns the forward computation plus every residual the
backward pass will read: the leaves of the vjp function (what `jax.ad_checkpoint.print_saved_residuals`
lists). That is exactly what the train step keeps between its forward and backward pass, for any
family, any remat policy (a `jax.checkpoint`ed scan body saves only what its policy keeps), stacked
layers included (a scanned layer's residuals come out of the scan stacked over the layers). Each
residual's bytes are divided by the mesh axes that split it (capidsl/plan/propagate.py: heads,
MLP units and vocabulary over `tensor`; parameter-derived copies as their parameter).

Residual sizes are affine in the number of rows, so two traces (2 and 4 rows) give the figure
for every micro-batch `micro_batch: auto` tries. For the backward's working set the model also
needs the largest tensor one layer produces; under remat that comes from a second pair of traces
of the same model without remat (the layer the backward recomputes).

The attention kernel is traced as `kernels.TRACED_AS` says: cuDNN's fused kernel cannot be traced on
a machine without a GPU (jax raises `RuntimeError: cuDNN is not detected`), and a GPU plan is often
made on a CPU, so a "cudnn" plan traces the gpt's "recompute" attention instead, which keeps exactly
the residuals cuDNN's backward reads (q, k, v, a float32 logsumexp per row and head) and no T×T
scores: the count is the fused kernel's, whatever machine makes the plan.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from capidsl.plan.kernels import TRACED_AS, XLA
from capidsl.plan.plan import MeshPlan, ShardingPlan
from capidsl.plan.propagate import Placement, Propagation, divisor

PROBE_ROWS = (2, 4)


@dataclass(frozen=True)
class Residual:
    """One tensor the backward pass reads, for the traced rows: shape, dtype, producer, bytes on one device."""

    shape: tuple[int, ...]
    dtype: str
    source: str  # the primitive that makes it ("scan" for a stacked layer residual, "exp", "jit:_where", ...)
    layers: int  # the scan's length when stacked over layers (a layer's slice is bytes // layers), else 1
    bytes_per_device: int


@dataclass(frozen=True)
class ActivationModel:
    """Saved residuals and each layer's tensors, as (fixed, per-row) byte pairs on one device."""

    saved: tuple[tuple[int, int], ...]
    layer: tuple[tuple[int, int], ...]  # per-layer tensors of the model without remat
    recompute: bool  # remat: the backward recomputes each layer's forward
    layer_total: tuple[int, int] = (0, 0)  # all of one layer's tensors without remat

    def saved_bytes(self, rows: int) -> int:
        """Every residual the backward reads, for `rows` rows per device."""
        return sum(max(0, f + r * rows) for f, r in self.saved)

    def largest_layer_tensor(self, rows: int) -> int:
        """The largest tensor one layer saves (without remat), for `rows` rows per device."""
        return max((max(0, f + r * rows) for f, r in self.layer), default=0)

    def layer_bytes(self, rows: int) -> int:
        """Everything one layer saves without remat: what a recomputing backward rebuilds for that layer."""
        return max(0, self.layer_total[0] + self.layer_total[1] * rows)


def _itemsize(dtype) -> int:
    try:
        return int(dtype.itemsize)
    except (AttributeError, TypeError):  # extended dtypes (PRNG keys): two uint32 words
        return 8


def saved_residuals(family, cfg: dict, *, rows: int, sharding: ShardingPlan, mesh: MeshPlan, param_dtype: str,
                    compute_dtype: str, remat: str, attention: str = XLA) -> list[Residual]:
    """The residuals of `family.loss` for `rows` rows on one device, arguments (parameters, batch) left out;
    `attention` is the plan's kernel (traced as its stand-in, TRACED_AS; the argument only when not xla)."""
    import jax
    import jax.numpy as jnp
    from jax.extend.core import Literal
    from flax import nnx

    kernel = {} if attention == XLA else {"attention": TRACED_AS[attention]}
    abstract = nnx.eval_shape(lambda: family.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.dtype(param_dtype),
                                                   compute_dtype=jnp.dtype(compute_dtype), remat=remat, **kernel))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    batch = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in family.batch_shapes(cfg, rows).items()}

    def loss(p, mb):  # as the train step differentiates it: dropout on, a key made inside
        model = nnx.merge(graphdef, p, rest)
        value = family.loss(model, mb, deterministic=False, rngs=nnx.Rngs(dropout=jax.random.key(0)))[0]
        return value.astype(jnp.float32)

    closed, shapes = jax.make_jaxpr(lambda p, mb: jax.vjp(loss, p, mb), return_shape=True)(params, batch)
    jaxpr = closed.jaxpr
    res_vars = jaxpr.outvars[len(jaxpr.outvars) - len(jax.tree_util.tree_leaves(shapes[1])):]

    specs = {p.path: p.spec for p in sharding.params}
    ins = []
    for keypath, leaf in jax.tree_util.tree_flatten_with_path((params, batch))[0]:
        keys = [str(k.key) for k in keypath if isinstance(k, jax.tree_util.DictKey)]
        if keypath[0].idx == 0:
            ins.append(Placement(specs.get(".".join(keys), ((),) * len(leaf.shape))))
        else:
            ins.append(Placement(((),) * len(leaf.shape), batch=True))
    sizes = dict(zip(mesh.axes, mesh.shape))
    env: dict = {}
    Propagation(sizes).run(jaxpr, ins, env)

    producer = {}
    for eqn in jaxpr.eqns:
        for i, v in enumerate(eqn.outvars):
            producer[v] = (eqn, i)
    arguments = set(jaxpr.invars) | set(jaxpr.constvars)
    out = []
    for v in res_vars:
        if isinstance(v, Literal) or v in arguments:
            continue  # an argument of the step already, or a constant of the executable
        eqn, i = producer[v]
        name = eqn.primitive.name
        layers = 1
        if name == "scan" and i >= eqn.params["num_carry"]:
            layers = int(eqn.params["length"])
        elif name == "jit":
            name = f"jit:{eqn.params.get('name', '?')}"
        shape = tuple(int(d) for d in v.aval.shape)
        nbytes = math.prod(shape) * _itemsize(v.aval.dtype)
        ways = divisor(shape, env[v].spec, sizes)
        out.append(Residual(shape=shape, dtype=str(v.aval.dtype), source=name, layers=layers,
                            bytes_per_device=nbytes // ways))
    return out


def _affine(a: list[int], b: list[int]) -> tuple[tuple[int, int], ...]:
    lo, hi = PROBE_ROWS
    pairs = []
    for x, y in zip(a, b):
        per_row = (y - x) // (hi - lo)
        pairs.append((x - per_row * lo, per_row))
    return tuple(pairs)


def _layer_tensors(res: list[Residual]) -> list[int]:
    """A layer's tensors: the per-layer slices of stacked residuals; every residual when nothing is stacked
    (layers run as a Python loop). The head's residuals (the logits' softmax) are not a layer's."""
    stacked = [r.bytes_per_device // r.layers for r in res if r.layers > 1]
    return stacked if stacked else [r.bytes_per_device for r in res]


@functools.lru_cache(maxsize=32)
def traced_model(family, options: tuple, sharding: ShardingPlan, mesh: MeshPlan, param_dtype: str,
                 compute_dtype: str, remat: str, attention: str = XLA) -> tuple[ActivationModel | None, str | None]:
    """(`activation_model(...)`, None), or (None, why) when the family's loss cannot be traced abstractly
    (the memory estimate then falls back to the family's own formula). Cached: planning traces once."""
    try:
        return activation_model(family, options, sharding, mesh, param_dtype, compute_dtype, remat, attention), None
    except Exception as err:  # any failure of a third-party family's code under tracing: say it, fall back
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]


def activation_model(family, options: tuple, sharding: ShardingPlan, mesh: MeshPlan, param_dtype: str,
                     compute_dtype: str, remat: str, attention: str = XLA) -> ActivationModel:
    """Traces of the family's loss at PROBE_ROWS rows (and, under remat, without remat), made affine in the rows.

    `options` is the normalised config as sorted (key, value) pairs (hashable, for the cache)."""
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options}
    kw = dict(sharding=sharding, mesh=mesh, param_dtype=param_dtype, compute_dtype=compute_dtype, attention=attention)
    traces = [saved_residuals(family, cfg, rows=n, remat=remat, **kw) for n in PROBE_ROWS]
    plain = traces if remat == "none" else [saved_residuals(family, cfg, rows=n, remat="none", **kw) for n in PROBE_ROWS]
    if len({len(t) for t in traces}) > 1 or len({len(t) for t in plain}) > 1:  # structure varies: totals only
        totals = [sum(r.bytes_per_device for r in t) for t in traces]
        largest = [max(_layer_tensors(t), default=0) for t in plain]
        saved, layer = _affine([totals[0]], [totals[1]]), _affine([largest[0]], [largest[1]])
    else:
        saved = _affine([r.bytes_per_device for r in traces[0]], [r.bytes_per_device for r in traces[1]])
        layer = _affine(_layer_tensors(plain[0]), _layer_tensors(plain[1]))
    layer_total = _affine([sum(_layer_tensors(plain[0]))], [sum(_layer_tensors(plain[1]))])[0]
    return ActivationModel(saved=saved, layer=layer, recompute=remat != "none", layer_total=layer_total)

"""Which mesh axes split each dimension of every value of a jaxpr: a small forward sharding propagation.

The plan knows how parameters are placed (their MeshSpec) and traces the loss on one device's
micro-batch, so batch dimensions are already local. What remains is the model dimensions the
`tensor` axis splits (heads, MLP units, vocabulary): a saved activation of shape
[b, T, heads·head_dim] is split 8 ways on tensor=8, one of shape [b, T, d_model] is whole on every
device (Megatron-LM, Shoeybi et al. 2019; Korthikanti et al. 2022 §4: "10 + 24/t"). This module
follows the dimensions through the forward computation the way GSPMD places a Megatron layer:

- a matmul's output dimensions keep the axes of the operand dimensions they come from; an axis on a
  contracted dimension of both operands is a partial sum, all-reduced, so the result is whole on it;
- where a value computed from the batch meets a parameter, the parameter's batch axes (data, fsdp)
  are dropped: FSDP gathers the weight, it never splits activations by model dimension;
- elementwise operations take the union of their operands' axes; reshapes move an axis with the
  major dimension of its group; reductions, slices and gathers drop the dimensions they change;
- a scan's carry is the meet (per-dimension intersection) of its initial value and its update.

An unknown primitive gives whole (replicated) outputs: the byte count then errs on the large side.
Nothing here evaluates anything: it reads avals and eqn parameters only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Spec = tuple[tuple[str, ...], ...]  # per dimension: the mesh axes splitting it


@dataclass(frozen=True)
class Placement:
    """A value's per-dimension mesh axes, and whether it is computed from the batch."""

    spec: Spec
    batch: bool = False


def divisor(shape, spec: Spec, sizes: dict[str, int]) -> int:
    """How many ways a value of `shape` placed as `spec` is split (a dimension smaller than its
    axes is split only as far as it goes, as GSPMD's partial replication does)."""
    ways = 1
    for dim, axes in zip(shape, spec):
        ways *= math.gcd(int(dim), math.prod(sizes.get(a, 1) for a in axes)) if axes and dim else 1
    return ways


def _whole(rank: int, batch: bool = False) -> Placement:
    return Placement(((),) * rank, batch)


def _once(spec) -> Spec:
    """Each mesh axis on at most one dimension (the first that has it)."""
    seen: set[str] = set()
    out = []
    for axes in spec:
        kept = tuple(a for a in axes if a not in seen)
        seen.update(kept)
        out.append(kept)
    return tuple(out)


class Propagation:
    """Forward propagation of placements over a jaxpr, given the mesh sizes and the batch axes."""

    def __init__(self, sizes: dict[str, int], batch_axes: tuple[str, ...] = ("data", "fsdp")):
        self.sizes, self.batch_axes = dict(sizes), tuple(batch_axes)

    # -- driving --------------------------------------------------------------------------------

    def run(self, jaxpr, ins: list[Placement], env: dict | None = None) -> list[Placement]:
        """Placements of `jaxpr`'s outputs (a Jaxpr or ClosedJaxpr); `env` (if given) receives every var's."""
        jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
        env = {} if env is None else env
        for v in jaxpr.constvars:
            env[v] = _whole(len(v.aval.shape))
        for v, p in zip(jaxpr.invars, ins):
            env[v] = p
        for eqn in jaxpr.eqns:
            args = [self._read(env, v) for v in eqn.invars]
            outs = self.eqn(eqn, args)
            for v, p in zip(eqn.outvars, outs):
                env[v] = Placement(_once(p.spec), p.batch)
        return [self._read(env, v) for v in jaxpr.outvars]

    @staticmethod
    def _read(env, v) -> Placement:
        if hasattr(v, "val"):  # a literal
            return _whole(len(getattr(v.aval, "shape", ())))
        return env.get(v) or _whole(len(getattr(v.aval, "shape", ())))

    def eqn(self, eqn, args: list[Placement]) -> list[Placement]:
        name = eqn.primitive.name
        shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]
        outs = [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        if name in ("scan", "while", "cond"):
            return getattr(self, "_" + name)(eqn, args)
        sub = self._sub_jaxpr(eqn)
        if sub is not None:  # a call: its body sees the arguments as they are
            return self.run(sub, args)
        batch = any(a.batch for a in args)
        if batch:  # a parameter meeting the batch is gathered along the batch axes (FSDP)
            args = [Placement(tuple(tuple(x for x in axes if x not in self.batch_axes) for axes in a.spec), a.batch)
                    for a in args]
        rule = getattr(self, "_" + name, None)
        if rule is not None:
            return rule(eqn, args, shapes, outs, batch)
        return [self._elementwise(args, shapes, out, batch) for out in outs]

    @staticmethod
    def _sub_jaxpr(eqn):
        """The body of a call-like primitive (jit, custom_jvp/vjp, checkpoint) with the eqn's own arity."""
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns") and len(inner.invars) == len(eqn.invars) and len(inner.outvars) == len(eqn.outvars):
                return value
        return None

    @staticmethod
    def _elementwise(args, shapes, out, batch) -> Placement:
        spec = [() for _ in out]
        for a, shape in zip(args, shapes):
            if len(shape) == len(out):
                for d, (n, axes) in enumerate(zip(shape, a.spec)):
                    if n == out[d] and n > 1:
                        spec[d] = spec[d] + tuple(x for x in axes if x not in spec[d])
        return Placement(tuple(spec), batch)

    # -- shape-changing primitives ----------------------------------------------------------------

    def _dot_general(self, eqn, args, shapes, outs, batch):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs = args
        lfree = [d for d in range(len(shapes[0])) if d not in lc and d not in lb]
        rfree = [d for d in range(len(shapes[1])) if d not in rc and d not in rb]
        spec = [tuple(dict.fromkeys(lhs.spec[a] + rhs.spec[b])) for a, b in zip(lb, rb)]
        spec += [lhs.spec[d] for d in lfree] + [rhs.spec[d] for d in rfree]
        return [Placement(tuple(spec), batch)]

    def _broadcast_in_dim(self, eqn, args, shapes, outs, batch):
        spec = [()] * len(outs[0])
        for i, d in enumerate(eqn.params["broadcast_dimensions"]):
            if shapes[0][i] == outs[0][d]:
                spec[d] = args[0].spec[i]
        return [Placement(tuple(spec), batch)]

    def _reshape(self, eqn, args, shapes, outs, batch):
        src, dst = shapes[0], outs[0]
        spec = [()] * len(dst)
        if 0 in src or math.prod(src) != math.prod(dst):
            return [Placement(tuple(spec), batch)]
        i = j = 0
        while i < len(src) and j < len(dst):
            gi, gj, pi, pj = [i], [j], src[i], dst[j]
            while pi != pj:
                if pi < pj:
                    i += 1
                    gi.append(i)
                    pi *= src[i]
                else:
                    j += 1
                    gj.append(j)
                    pj *= dst[j]
            major_in = next((d for d in gi if src[d] > 1), gi[0])
            major_out = next((d for d in gj if dst[d] > 1), gj[0])
            if not any(args[0].spec[d] for d in gi if d != major_in):  # a minor split dimension cannot move
                spec[major_out] = args[0].spec[major_in]
            i, j = i + 1, j + 1
        return [Placement(tuple(spec), batch)]

    def _transpose(self, eqn, args, shapes, outs, batch):
        return [Placement(tuple(args[0].spec[p] for p in eqn.params["permutation"]), batch)]

    def _dropping(self, dims, args, batch):
        return [Placement(tuple(a for d, a in enumerate(args[0].spec) if d not in dims), batch)]

    def _squeeze(self, eqn, args, shapes, outs, batch):
        return self._dropping(set(eqn.params["dimensions"]), args, batch)

    def _reduce(self, eqn, args, shapes, outs, batch):
        return self._dropping(set(eqn.params["axes"]), args, batch) * len(outs)

    _reduce_sum = _reduce_max = _reduce_min = _reduce_prod = _reduce_and = _reduce_or = _argmax = _argmin = _reduce

    def _same_size_dims(self, eqn, args, shapes, outs, batch):
        """slice, dynamic_slice, pad: dimensions that keep their size keep their axes."""
        return [Placement(tuple(a if shapes[0][d] == outs[0][d] else () for d, a in enumerate(args[0].spec)), batch)]

    _slice = _dynamic_slice = _pad = _same_size_dims

    def _concatenate(self, eqn, args, shapes, outs, batch):
        dim = eqn.params["dimension"]
        spec = [tuple(set.intersection(*(set(a.spec[d]) for a in args))) if d != dim else () for d in range(len(outs[0]))]
        return [Placement(tuple(spec), batch)]

    def _gather(self, eqn, args, shapes, outs, batch):
        dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
        skipped = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
        kept = [d for d in range(len(shapes[0])) if d not in skipped]
        spec = [()] * len(outs[0])
        for od, d in zip(dn.offset_dims, kept):
            if sizes[d] == shapes[0][d]:
                spec[od] = args[0].spec[d]
        return [Placement(tuple(spec), batch)]

    # -- control flow ---------------------------------------------------------------------------

    @staticmethod
    def _meet(a: Placement, b: Placement) -> Placement:
        return Placement(tuple(tuple(x for x in p if x in q) for p, q in zip(a.spec, b.spec)), a.batch or b.batch)

    def _scan(self, eqn, args):
        nc, nk = eqn.params["num_consts"], eqn.params["num_carry"]
        consts, carry, xs = args[:nc], args[nc:nc + nk], args[nc + nk:]
        xs = [Placement(a.spec[1:], a.batch) for a in xs]
        for _ in range(4):  # the carry's fixed point: placements only ever lose axes, so this ends
            body = self.run(eqn.params["jaxpr"], consts + carry + xs)
            new = [self._meet(c, b) for c, b in zip(carry, body[:nk])]
            if new == carry:
                break
            carry = new
        return carry + [Placement(((),) + y.spec, y.batch) for y in body[nk:]]

    def _while(self, eqn, args):
        nb, ncond = eqn.params["body_nconsts"], eqn.params["cond_nconsts"]
        consts, carry = args[ncond:ncond + nb], args[ncond + nb:]
        for _ in range(4):
            new = [self._meet(c, b) for c, b in zip(carry, self.run(eqn.params["body_jaxpr"], consts + carry))]
            if new == carry:
                break
            carry = new
        return carry

    def _cond(self, eqn, args):
        results = [self.run(branch, args[1:]) for branch in eqn.params["branches"]]
        merged = results[0]
        for r in results[1:]:
            merged = [self._meet(a, b) for a, b in zip(merged, r)]
        return merged

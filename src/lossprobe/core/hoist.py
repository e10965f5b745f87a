"""Never recompute what does not move: the point-independent part of a forward pass.

Along a subspace ``origin + coords @ directions`` only the parameters that the directions
touch change. Everything the forward pass computes before it first reads one of them is
the same at every point, so `Objective.evaluate` computes it once per batch:

1. **Trace** (once per objective): one forward pass on two samples records, in call order,
   every module call (enter and exit) and every read of a parameter tensor by any torch
   function (a `TorchFunctionMode`), whoever reads it: the owning module, another module
   (tied weights), or the model's own code (``x * self.head.weight``). Reads of metadata
   (dtype, shape, device) do not count.
2. **Plan** (once per set of moving parameters): the first *use* of a moving parameter is
   the earlier of its first read and the first call of a module that owns it. Module calls
   that finish before it are point-independent: the outermost of them become *stubs* that
   return their output captured once per batch. If the first use is the call of a Linear,
   Conv1d/2d/3d, Embedding or HF ``Conv1D`` (the *first moving layer*), its output is
   linear in its own weights, ``f(x; w0) + sum_i c_i f(x; d_i)``: those m + 1 outputs are
   computed once per batch from its captured input and combined per point.
3. **Verify** (once per plan): on up to 64 samples of the first batch, the hoisted forward
   pass must equal a plain one at two random points that move exactly those parameters
   (the second point catches code that modifies a captured output in place; stubs then
   return copies). Otherwise the objective takes the plain path.

Only the rest of the network runs per point: a head-only direction costs only the head.
Code between module calls (``F.relu(self.bn(x))`` in a ``forward``) still runs per point;
put preprocessing in a module to have it hoisted.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from lossprobe.core.batching import take

LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# reads that do not depend on a tensor's values
_META = frozenset({
    "dtype", "shape", "device", "requires_grad", "is_cuda", "is_leaf", "layout", "ndim", "is_sparse",
    "is_quantized", "is_meta", "is_mps", "size", "dim", "numel", "nelement", "is_floating_point", "is_complex",
    "element_size", "stride", "get_device", "is_contiguous", "names", "grad_fn", "grad", "_version", "data_ptr",
    "storage_offset", "__len__", "itemsize", "nbytes", "is_inference", "_base", "is_nested",
})


class Stop(BaseException):
    """Raised by a hook to end a capture pass once everything needed is recorded (a
    BaseException so that a model's own ``except Exception`` does not swallow it)."""

    passes_wrappers = True  # `batching.at_batch` lets it through


def _func_name(func) -> str:
    owner = getattr(func, "__self__", None)
    name = getattr(func, "__name__", "")
    if name == "__get__" and owner is not None:
        return getattr(owner, "__name__", "")
    return name


class _Reads(TorchFunctionMode):
    """Records which of the watched tensors each torch function reads, and which functions
    consume the watched outputs of convolutions."""

    def __init__(self, watched: dict[int, str], on_read, produced: dict, on_use):
        super().__init__()
        self.watched = watched
        self.on_read = on_read
        self.produced = produced
        self.on_use = on_use
        self.active = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.active and _func_name(func) not in _META:
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor):
                    name = self.watched.get(id(t))
                    if name is not None:
                        self.on_read(name)
                    rec = self.produced.get(id(t))
                    if rec is not None:
                        self.on_use(rec)
        return func(*args, **kwargs)


@dataclass
class CallRec:
    module: nn.Module
    index: int  # the index-th call of this module in one forward pass
    enter: int
    exit: int = -1
    parent: "CallRec | None" = None
    depth: int = 0
    reads: set = field(default_factory=set)  # names read while this call was innermost
    in_id: int | None = None  # id of the first argument (convolutions and batch norms)
    out_id: int | None = None  # id of the output (convolutions)
    consumers: set = field(default_factory=set)  # ids of the innermost calls that used the output


@dataclass
class Trace:
    """Module calls and parameter reads of one forward pass, in order (positions)."""

    calls: list[CallRec]
    first_read: dict[str, int]  # space name -> position of its first read
    reads_outside: dict[str, set]  # space name -> ids of calls (innermost) in which it was read
    owners: dict[str, list[nn.Module]]  # space name -> modules holding the tensor directly
    names: dict[nn.Module, str]


def trace(objective, theta: torch.Tensor | None, batch) -> Trace | None:
    """Record module calls and parameter reads of ``objective.forward(theta, batch)`` (θ None:
    at the model's own parameters, passed as aliases: nothing is copied)."""
    space = objective.space
    model = objective.model
    if theta is None:
        tensors = {"model." + n: t.detach() for n, t in space._tensors(model).items() if n in space}
    else:
        tensors = space.unflatten(theta, prefix="model.")
    watched = {id(t): n[len("model."):] for n, t in tensors.items()}
    # who holds each space tensor directly (a tied tensor has two owners)
    obj_name: dict[int, str] = {}
    for n, p in model.named_parameters():
        if n in space:
            obj_name[id(p)] = n
    if space.include_buffers:
        for n, b in model.named_buffers():
            if n in space:
                obj_name[id(b)] = n
    owners: dict[str, list[nn.Module]] = {}
    for mod in model.modules():
        for t in list(mod._parameters.values()) + list(mod._buffers.values()):
            if t is not None and id(t) in obj_name:
                owners.setdefault(obj_name[id(t)], []).append(mod)
    names = {m: n for n, m in model.named_modules(remove_duplicate=False)}

    pos = [0]
    calls: list[CallRec] = []
    stack: list[CallRec] = []
    counts: dict[nn.Module, int] = {}
    first_read: dict[str, int] = {}
    reads_in: dict[str, set] = {}

    def on_read(name):
        first_read.setdefault(name, pos[0])
        pos[0] += 1
        reads_in.setdefault(name, set()).add(id(stack[-1]) if stack else None)
        if stack:
            stack[-1].reads.add(name)

    produced: dict[int, CallRec] = {}
    keep: list = []  # outputs stay alive during the trace, so their ids stay unique

    def on_use(rec):
        rec.consumers.add(id(stack[-1]) if stack else None)

    mode = _Reads(watched, on_read, produced, on_use)

    def pre(mod, args):
        i = counts.get(mod, 0)
        counts[mod] = i + 1
        rec = CallRec(mod, i, pos[0], parent=stack[-1] if stack else None, depth=len(stack))
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)) and args \
                and isinstance(args[0], torch.Tensor):
            rec.in_id = id(args[0])
        pos[0] += 1
        calls.append(rec)
        stack.append(rec)

    def post(mod, args, out):
        rec = stack.pop()
        rec.exit = pos[0]
        pos[0] += 1
        if type(mod) in _CONV_TYPES and isinstance(out, torch.Tensor):
            rec.out_id = id(out)
            produced[id(out)] = rec
            keep.append(out)

    def on(mod, args):
        mode.active = True

    def off(mod, args, out):
        mode.active = False

    call = objective.call
    handles = [call.register_forward_pre_hook(on), call.register_forward_hook(off)]
    for mod in model.modules():
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        with mode:
            torch.func.functional_call(call, tensors, (batch,), strict=False)
    except Exception:  # nothing to learn from a model that fails here
        return None
    finally:
        for h in handles:
            h.remove()
    if stack or any(c.exit < 0 for c in calls):
        return None
    return Trace(calls, first_read, reads_in, owners, names)


# --- plans -------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What to hoist for one set of moving parameters."""

    moving: frozenset
    stubs: list[CallRec]  # outermost calls that finish before the first use of a moving tensor
    layer: CallRec | None  # the first moving layer when it is linear in its weights
    layer_name: str | None
    exclusive: tuple[str, ...]  # the layer's tensors that nothing else reads (skip them per point)
    names: dict
    all_calls: list = field(default_factory=list)
    folds: list = field(default_factory=list)  # (conv call, batch-norm call) pairs folded into one
    clone: bool = False
    verified: bool | None = None

    def describe(self) -> dict:
        return {"hoisted_modules": [self.names.get(c.module, "?") or "(model)" for c in self.stubs],
                "first_moving_layer": self.layer_name, "linear_combination": self.layer is not None,
                "folded_batchnorms": [self.names.get(b.module, "?") for _, b in self.folds]}

    def worthwhile(self) -> bool:
        """Whether the plan saves anything per point that pays for its verification (a few
        passes over the first batch): a hoisted module (preprocessing, or everything up to the
        head for head-only directions), a folded BatchNorm, or a first moving layer that
        multiplies (Linear, Conv, HF Conv1D). An embedding lookup alone (the first layer of a
        transformer whose every weight moves) is not worth it: the plain path is taken."""
        if self.folds or self.stubs:
            return True
        return self.layer is not None and not isinstance(self.layer.module, (nn.Embedding, nn.EmbeddingBag))


def make_plan(tr: Trace, moving: frozenset, space) -> Plan | None:
    """The hoisting plan for `moving` (space names), or None when nothing can be hoisted."""
    starts = []
    for n in moving:
        if n in tr.first_read:
            starts.append(tr.first_read[n])
        for mod in tr.owners.get(n, ()):
            first = next((c.enter for c in tr.calls if c.module is mod), None)
            if first is not None:
                starts.append(first)
    if not starts:
        return None
    u = min(starts)
    stubs = [c for c in tr.calls if c.exit < u and (c.parent is None or c.parent.exit >= u)]
    layer = None
    at = next((c for c in tr.calls if c.enter == u), None)
    if at is not None and _is_linear(at.module):
        own = {n for n in moving if any(m is at.module for m in tr.owners.get(n, ()))}
        lname = tr.names.get(at.module, "")
        allowed = {f"{lname}.weight" if lname else "weight", f"{lname}.bias" if lname else "bias"}
        inner_reads = at.reads & set(moving)
        if own and own <= allowed and inner_reads <= allowed and not any(c.parent is at for c in tr.calls):
            layer = at
    folds = _folds(tr, moving, stubs, space)
    if not stubs and layer is None and not folds:
        return None
    exclusive: tuple[str, ...] = ()
    lname = None
    if layer is not None:
        lname = tr.names.get(layer.module, "")
        once = sum(1 for c in tr.calls if c.module is layer.module) == 1
        ex = []
        for n in (f"{lname}.weight", f"{lname}.bias"):
            if n not in space or n not in moving:
                continue
            sole_owner = len(tr.owners.get(n, ())) == 1
            read_elsewhere = any(k != id(layer) for k in tr.reads_outside.get(n, set()))
            if once and sole_owner and not read_elsewhere:
                ex.append(n)
        exclusive = tuple(ex)
    return Plan(moving, stubs, layer, lname, exclusive, tr.names, tr.calls, folds)


def _folds(tr: Trace, moving: frozenset, stubs: list, space) -> list:
    """Eval-mode batch norms that only ever read the output of the convolution just before
    them, whose parameters and statistics do not move: fold each into its convolution."""
    hidden = set(id(c) for c in stubs)

    def is_hidden(c):
        while c is not None:
            if id(c) in hidden:
                return True
            c = c.parent
        return False

    by_out = {c.out_id: c for c in tr.calls if c.out_id is not None}
    out = []
    for b in tr.calls:
        if type(b.module) not in _BN_TYPES or b.in_id is None or b.in_id not in by_out or is_hidden(b):
            continue
        c = by_out[b.in_id]
        bn = b.module
        if bn.running_mean is None or bn.running_var is None or is_hidden(c) or c.consumers != {id(b)}:
            continue
        if c.exit > b.enter or c.module.out_channels != bn.num_features:
            continue
        bname = tr.names.get(bn, "")
        if any(f"{bname}.{k}" in moving for k in ("weight", "bias", "running_mean", "running_var")):
            continue
        if b.reads & set(moving):
            continue
        out.append((c, b))
    return out


def _is_linear(mod: nn.Module) -> bool:
    """Exactly these types (a subclass may compute something else in its forward)."""
    if type(mod) is nn.Embedding:
        return mod.max_norm is None  # max_norm renormalises the table in place
    if type(mod) in LINEAR_TYPES or type(mod) is nn.modules.linear.NonDynamicallyQuantizableLinear:
        return True
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf")  # HF GPT-2: y = x @ W + b


def layer_output(mod: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """The layer's output with these weights (bias None: no bias): linear in (weight, bias)."""
    if isinstance(mod, nn.Embedding):
        out = F.embedding(x, weight, mod.padding_idx)
        return out if bias is None else out + bias
    if isinstance(mod, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(mod, nn.modules.conv._ConvNd):
        return mod._conv_forward(x, weight, bias)  # honours padding modes
    out = x @ weight  # HF Conv1D: weight [in, out]
    return out if bias is None else out + bias


# --- per batch ---------------------------------------------------------------------------------
@dataclass
class Hoisted:
    """One batch's point-independent values: stub outputs and the first layer's m + 1 outputs."""

    outputs: dict  # (id(module), call index) -> output
    z0: torch.Tensor | None = None
    zd: list | None = None  # f(x; d_i) per direction
    finite: bool = True
    folds: dict = field(default_factory=dict)  # (id(conv), call index) -> (scale, shift) [C]

    def nbytes(self) -> int:
        seen, total = set(), 0
        for t in tree_flatten((list(self.outputs.values()), self.z0, self.zd))[0]:
            if isinstance(t, torch.Tensor):
                key = (t.untyped_storage().data_ptr(), t.device)
                if key not in seen:
                    seen.add(key)
                    total += t.untyped_storage().nbytes()
        return total


def capture(objective, plan: Plan, batch, origin: torch.Tensor, directions, inject: bool,
            channels_last: bool = False) -> Hoisted | None:
    """Run the forward pass at `origin` [P] once, up to the first moving layer, recording what
    the plan hoists; None if the pass did not go as traced. `directions`: an [m, P] tensor or
    an object with ``m`` and ``seg(i, entry)`` (`lossprobe.core.objective.Rows`), or None."""
    wanted = {(id(c.module), c.index) for c in plan.stubs}
    outputs: dict = {}
    stack: dict[int, list[int]] = {}
    counts: dict[int, int] = {}
    captured: list = []
    layer = plan.layer if inject else None
    stop_at = (id(layer.module), layer.index) if layer is not None else None

    def pre(mod, args, kwargs):
        i = counts.get(id(mod), 0)
        counts[id(mod)] = i + 1
        stack.setdefault(id(mod), []).append(i)
        if stop_at == (id(mod), i):
            x = args[0] if args else kwargs.get("input", next(iter(kwargs.values()), None))
            captured.append(x)
            raise Stop

    def post(mod, args, out):
        i = stack[id(mod)].pop()
        if (id(mod), i) in wanted:
            outputs[(id(mod), i)] = out
            if stop_at is None and len(outputs) == len(wanted):
                raise Stop

    modules = {id(c.module): c.module for c in plan.stubs}
    if layer is not None:
        modules[id(layer.module)] = layer.module
    handles = []
    for mod in modules.values():
        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(mod.register_forward_hook(post))
    try:
        objective.forward(origin, batch)
    except Stop:
        pass
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    if set(outputs) != wanted or (layer is not None and not captured):
        return None
    h = Hoisted(outputs)
    for c, b in plan.folds:
        h.folds[(id(c.module), c.index)] = bn_affine(objective, plan.names.get(b.module, ""), b.module, origin)
    if layer is not None:
        if not isinstance(captured[0], torch.Tensor):
            return None
        h.z0, h.zd = layer_outputs(objective, plan, captured[0], origin, directions)
        st = h.folds.get((id(layer.module), layer.index))
        if st is not None:  # the batch norm after the first layer, applied once per batch
            shape = (1, -1) + (1,) * (h.z0.ndim - 2)
            h.z0 = h.z0 * st[0].view(shape) + st[1].view(shape)
            if h.zd is not None:
                h.zd = [z * st[0].view(shape) for z in h.zd]
        if channels_last and h.z0.ndim == 4:
            h.z0 = h.z0.contiguous(memory_format=torch.channels_last)
            h.zd = [z.contiguous(memory_format=torch.channels_last) for z in h.zd] if h.zd is not None else None
        h.finite = h.zd is None or all(bool(torch.isfinite(z).all()) for z in h.zd)
    return h


def bn_affine(objective, name: str, bn: nn.Module, origin: torch.Tensor):
    """(scale, shift) [C] of an eval-mode batch norm at `origin`: bn(z) = scale * z + shift."""
    space = objective.space

    def get(k):
        n = f"{name}.{k}" if name else k
        if n in space:
            e = space[n]
            return origin[e.slice].view(e.shape)
        return getattr(bn, k)

    w, b, mean, var = get("weight"), get("bias"), get("running_mean"), get("running_var")
    scale = torch.rsqrt(var + bn.eps)
    if w is not None:
        scale = scale * w
    shift = -mean * scale
    if b is not None:
        shift = shift + b
    return scale, shift


def layer_outputs(objective, plan: Plan, x: torch.Tensor, origin: torch.Tensor, directions):
    space = objective.space
    mod, name = plan.layer.module, plan.layer_name
    wn, bn = (f"{name}.weight", f"{name}.bias") if name else ("weight", "bias")
    w_e = space[wn] if wn in space else None
    b_e = space[bn] if bn in space else None
    w0 = origin[w_e.slice].view(w_e.shape) if w_e is not None else mod.weight
    b0 = origin[b_e.slice].view(b_e.shape) if b_e is not None else getattr(mod, "bias", None)
    z0 = layer_output(mod, x, w0, b0)
    if directions is None or not (directions.m if hasattr(directions, "m") else len(directions)):
        return z0, None
    zd = []
    m = directions.m if hasattr(directions, "m") else len(directions)
    for i in range(m):
        seg = directions.seg if hasattr(directions, "seg") else (lambda i, e: directions[i][e.slice])
        dw = seg(i, w_e).view(w_e.shape) if w_e is not None else torch.zeros_like(mod.weight)
        db = seg(i, b_e).view(b_e.shape) if b_e is not None else None
        zd.append(layer_output(mod, x, dw, db))
    return z0, zd  # a list: each keeps the layer's output layout


# --- per point ---------------------------------------------------------------------------------
class Runner:
    """Installs per-module stand-ins for the calls a plan hoists; `point` sets the injected
    first-layer output before each forward pass, `done` checks the pass went as planned."""

    def __init__(self, plan: Plan, hoisted: Hoisted, inject: bool, channels_last: bool = False):
        self.plan, self.h = plan, hoisted
        self.channels_last = channels_last
        self.inject = inject and plan.layer is not None and hoisted.z0 is not None
        skip = set(id(c) for c in plan.stubs)
        if self.inject:
            skip.add(id(plan.layer))
        # the calls that happen per point: not nested inside a stub (or the injected layer)
        folded_conv = {id(c): c for c, _ in plan.folds}
        folded_bn = {id(b) for _, b in plan.folds}
        actions: dict[nn.Module, list] = {}
        for c in plan.all_calls:
            p, hidden = c.parent, False
            while p is not None:
                if id(p) in skip:
                    hidden = True
                    break
                p = p.parent
            if hidden:
                continue
            if id(c) in skip and c is not plan.layer:
                act = ("stub", (id(c.module), c.index))
            elif self.inject and c is plan.layer:
                act = ("inject", None)
            elif id(c) in folded_conv:
                act = ("fold", (id(c.module), c.index))
            elif id(c) in folded_bn:
                act = ("identity", None)
            elif channels_last and type(c.module) is nn.Conv2d:
                act = ("conv", None)  # weights in channels-last too (a 1-channel input is ambiguous)
            else:
                act = ("run", None)
            actions.setdefault(c.module, []).append(act)
        self.actions = {m: a for m, a in actions.items() if any(k != "run" for k, _ in a)}
        self.value = None
        self.count: dict[nn.Module, int] = {}
        self.off = False  # pass every call through (after a pass that did not go as planned)

    def _wrapper(self, mod, orig):
        acts = self.actions[mod]

        def forward(*args, **kwargs):
            i = self.count.get(mod, 0)
            self.count[mod] = i + 1
            kind, key = acts[i] if i < len(acts) and not self.off else ("run", None)
            if kind == "stub":
                out = self.h.outputs[key]
                return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out) \
                    if self.plan.clone else out
            if kind == "inject":
                return self.value
            if kind == "identity":
                return args[0]
            if kind == "fold":
                scale, shift = self.h.folds[key]
                w = mod.weight  # this point's weight (functional_call has swapped it in)
                shape = (-1,) + (1,) * (w.ndim - 1)
                b = shift if mod.bias is None else torch.addcmul(shift, mod.bias, scale)
                w = w * scale.view(shape)
                if self.channels_last and w.ndim == 4:
                    w = w.contiguous(memory_format=torch.channels_last)
                return mod._conv_forward(args[0], w, b)
            if kind == "conv":
                w = mod.weight.contiguous(memory_format=torch.channels_last)
                return mod._conv_forward(args[0], w, mod.bias)
            return orig(*args, **kwargs)

        return forward

    @contextlib.contextmanager
    def installed(self):
        saved = []
        try:
            for mod in self.actions:
                saved.append((mod, mod.__dict__.get("forward")))
                mod.forward = self._wrapper(mod, mod.forward)
            yield self
        finally:
            for mod, old in saved:
                if old is None:
                    del mod.forward
                else:
                    mod.forward = old

    def point(self, coords: list[float] | None, coords_dev: torch.Tensor | None) -> None:
        self.count.clear()
        if self.inject:
            self.value = combine(self.h.z0, self.h.zd, coords, coords_dev) if self.h.zd is not None else self.h.z0

    def done(self) -> bool:
        """Whether every planned stand-in was used as traced."""
        if self.off:
            return True
        for mod, acts in self.actions.items():
            last = max(i for i, (k, _) in enumerate(acts) if k != "run")
            if self.count.get(mod, 0) <= last:
                return False
        return True


def combine(z0: torch.Tensor, zd: list, c: list[float], c_dev: torch.Tensor | None = None) -> torch.Tensor:
    """z0 + sum_i c_i zd_i as fused scaled adds, in z0's memory layout (channels-last stays so)."""
    out = torch.empty_like(z0)
    torch.add(z0, zd[0], alpha=c[0], out=out)
    for i in range(1, len(c)):
        out.add_(zd[i], alpha=c[i])
    return out


_MOVING: dict = {}


def moving_tensors(space, directions: torch.Tensor | None) -> frozenset:
    """Names of the tensors in which some direction [m, P] is nonzero (the last few answers
    are remembered for the same live tensor object at the same version: a surface asks once
    per chunk)."""
    if directions is None or not len(directions):
        return frozenset()
    key = (id(space), id(directions))
    hit = _MOVING.get(key)
    if hit is not None and hit[0]() is directions and hit[1] == directions._version and hit[2] is space:
        return hit[3]
    # tensor by tensor, in pieces of a million entries: never an index vector of length P
    def nonzero(e):
        return any(bool((directions[:, a:min(a + (1 << 20), e.offset + e.numel)] != 0).any())
                   for a in range(e.offset, e.offset + e.numel, 1 << 20))

    out = frozenset(e.name for e in space.entries if nonzero(e))
    if len(_MOVING) > 8:
        _MOVING.clear()
    _MOVING[key] = (weakref.ref(directions), directions._version, space, out)
    return out


# --- the objective's side -------------------------------------------------------------------------
class Hoister:
    """Plans, verifies and caches hoisting for one objective."""

    def __init__(self, objective):
        self.obj = objective
        self._trace: Trace | None = None
        self._traced = False
        self._plans: dict[frozenset, Plan | None] = {}
        self._channels_last: bool | None = None

    @property
    def channels_last(self) -> bool:
        """Whether batches go to 2-D convolutions in channels-last layout: on CPU, for models
        with Conv2d, when a plain forward pass gives the same output both ways (measured
        about 2x faster per point for small BatchNorm CNNs and ResNets, see docs/surfaces.md)."""
        if self._channels_last is None:
            self._channels_last = False
            obj = self.obj
            if obj.device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in obj.model.modules()):
                try:
                    batch = take(obj.data.first(obj.batch_size), slice(0, 64))
                    if any(_image(t) for t in tree_flatten(batch)[0]):
                        with torch.inference_mode(), obj.mode(train=False):
                            a = obj.forward(None, batch)
                            b = obj.forward(None, to_channels_last(batch))
                        self._channels_last = _close(b, a)
                except Exception:
                    self._channels_last = False
        return self._channels_last

    def layout(self, batch):
        """The batch in the layout the per-point passes use."""
        return to_channels_last(batch) if self.channels_last else batch

    def tr(self) -> Trace | None:
        if not self._traced:
            self._traced = True
            obj = self.obj
            try:
                batch = take(obj.data.first(obj.batch_size), slice(0, 2))
                with torch.inference_mode(), obj.mode(train=False):
                    self._trace = trace(obj, None, batch)
            except Exception:
                self._trace = None
        return self._trace

    def reject(self, moving: frozenset) -> None:
        """Never hoist for this set of moving tensors again (a pass did not go as traced)."""
        self._plans[moving] = None

    def plan(self, moving: frozenset, buf: torch.Tensor, rows, write, force: bool = False) -> Plan | None:
        """The verified plan for `moving`, or None (the plain path). `buf` is the working copy of
        the parameters (holding the origin on the moving tensors), `rows` the directions and
        ``write(c, entries)`` writes θ(c) into `buf` (c None: the origin). Plans that cannot pay
        for their verification (`Plan.worthwhile`) are not verified nor used unless `force`."""
        if moving in self._plans:
            return self._plans[moving]
        tr = self.tr()
        plan = make_plan(tr, moving, self.obj.space) if tr is not None and moving else None
        if plan is not None and not force and not plan.worthwhile():
            plan = None
        if plan is not None:
            plan = self._verify(plan, buf, rows, write)
        self._plans[moving] = plan
        return plan

    def _verify(self, plan: Plan, buf: torch.Tensor, rows, write) -> Plan | None:
        """The hoisted forward pass must equal a plain one on up to 64 samples of the first
        batch at two points of the directions' own span near the origin (no other P-length
        vector is made); the working copy is left at the origin."""
        obj = self.obj
        try:
            batch = self.layout(take(obj.data.first(obj.batch_size), slice(0, 64)))
        except Exception:
            return None
        space = obj.space
        entries = [e for e in space.entries if e.name in plan.moving]
        m = rows.m
        pts = [[0.07 * (-1) ** i / (i + 1) for i in range(m)], [0.05 * (-1) ** (i + 1) / (i + 2) for i in range(m)]]
        try:
            for clone in (False, True):
                plan.clone = clone
                with torch.inference_mode(), obj.mode(train=False):
                    cl = self.channels_last
                    write(None, entries)
                    h = capture(obj, plan, batch, buf, rows, inject=plan.layer is not None, channels_last=cl)
                    if h is None:
                        return None
                    run = Runner(plan, h, inject=True, channels_last=cl)
                    good = True
                    fast, plain = [], []
                    for c in pts:
                        cd = torch.tensor(c, device=buf.device, dtype=buf.dtype)
                        write(cd, entries)
                        with run.installed():
                            run.point(c, cd)
                            fast.append(obj.forward(buf, batch))
                            if not run.done():
                                good = False
                        plain.append(obj.forward(buf, batch))
                    if not good:
                        return None
                if all(_close(a, b) for a, b in zip(fast, plain)):
                    plan.verified = True
                    return plan
        except Exception:
            return None
        finally:
            write(None, entries)
        return None


def _image(t) -> bool:
    return isinstance(t, torch.Tensor) and t.ndim == 4 and t.is_floating_point()


def to_channels_last(batch):
    """4-D floating tensors of a batch in channels-last memory layout (same values)."""
    return tree_map(lambda t: t.contiguous(memory_format=torch.channels_last) if _image(t) else t, batch)


def _close(fast, plain) -> bool:
    fl, pl = tree_flatten(_plain(fast))[0], tree_flatten(_plain(plain))[0]
    fl = [t for t in fl if isinstance(t, torch.Tensor)]
    pl = [t for t in pl if isinstance(t, torch.Tensor)]
    if len(fl) != len(pl) or not pl:
        return False
    for a, b in zip(fl, pl):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            scale = b.abs().max().clamp_min(1.0) if b.numel() else 1.0
            if b.numel() and not bool(((a - b).abs().max() / scale) < 1e-4):
                return False
        elif not torch.equal(a, b):
            return False
    return True


def _plain(out):
    """Model outputs as plain containers (HF ModelOutput is a dict subclass)."""
    if isinstance(out, Mapping):
        return {k: _plain(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return [_plain(v) for v in out]
    return out


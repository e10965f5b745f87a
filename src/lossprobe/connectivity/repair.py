"""REPAIR (Jordan et al. 2022): undo the variance collapse of interpolated networks.

At θ(α) = (1 − α) θ_A + α θ_B the hidden units' pre-activations have smaller spread
than at either endpoint, and the error of the midpoint comes mostly from that collapse.
REPAIR rescales, channel by channel, the outputs of every hidden Linear/Conv layer of
the interpolated network so that their mean and standard deviation equal the
interpolation of the endpoints' statistics,

    μ_t = (1 − α) μ_A + α μ_B,    σ_t = (1 − α) σ_A + α σ_B,

and folds the correction into the layer's weights and bias (W ← W·σ_t/σ_α,
b ← (b − μ_α)·σ_t/σ_α + μ_t), so the result is a plain model of the same architecture.

With BatchNorm: a BatchNorm layer already normalises its input and scales it by its
(interpolated) affine parameters, so for those layers REPAIR amounts to re-estimating the
running statistics at θ(α) on data (the "reset" of Jordan et al.); layers not followed
by BatchNorm are repaired as above. Layers are calibrated one after another in the
order the forward pass reaches them, each with the layers before it already repaired,
using exact means and variances over the whole calibration set.

Which layers: `lossprobe.align.permutation_spec` lists them (hidden Linear/Conv layers
whose output is not the model's output and not fed straight into BatchNorm, and the
BatchNorm layers); pass `layers=` / `norm_layers=` to choose yourself.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lossprobe.connectivity.alignment.matching import permutation_spec
from lossprobe.connectivity.paths import Interpolation, evaluate_per_point, named_splits
from lossprobe.core.batching import as_data, at_batch, move, take
from lossprobe.core.losses import criterion
from lossprobe.errors import Interrupt, UserError

EPS = 1e-5  # added to variances as BatchNorm does, at both the target and the measured side


class _Stop(Interrupt):
    pass


def _is_hf_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _channel_view(t: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """[rows, C]: a layer output with its channel axis last (dim 1 for conv/BN, -1 for Linear
    and HF Conv1D)."""
    if isinstance(t, (tuple, list)):
        t = t[0]
    if isinstance(module, nn.Linear) or _is_hf_conv1d(module):
        return t.reshape(-1, t.shape[-1])
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _weight_out_axis(module: nn.Module) -> int:
    """The axis of the weight that indexes output channels (HF Conv1D stores [in, out])."""
    return 1 if _is_hf_conv1d(module) else 0


class _Moments:
    def __init__(self):
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.n += x.shape[0]
        self.s = self.s + x.sum(0)
        self.ss = self.ss + (x * x).sum(0)

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.s / self.n
        return m, (self.ss / self.n - m * m).clamp_min(0)


def _calibration_batches(data, batch_size: int):
    if isinstance(data, _Batches):
        return data
    return _Batches(as_data(data, "calibration").batches(batch_size))


class _Batches(list):
    """Batches already materialised (so a list of two batches is not taken for (x, y))."""


@torch.no_grad()
def layer_statistics(model: nn.Module, layers: Sequence[str], data, batch_size: int = 1000,
                     forward=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel output mean and variance [C] (float64) of each named layer, over all of
    `data` in eval mode (one forward pass); `forward(model, batch)` calls the model."""
    fwd = criterion(forward=forward).forward
    device = next(model.parameters()).device
    mods = dict(model.named_modules())
    acc = {name: _Moments() for name in layers}
    handles = [mods[name].register_forward_hook(lambda m, i, o, name=name: acc[name].add(_channel_view(o, m)))
               for name in layers]
    was = model.training
    model.eval()
    try:
        for i, batch in enumerate(_calibration_batches(data, batch_size)):
            with at_batch(i, order="the calibration data"):
                fwd(model, move(batch, device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {k: v.mean_var() for k, v in acc.items()}


def _execution_order(model: nn.Module, names: Sequence[str], batch, forward) -> tuple[list[str], dict[str, int]]:
    """The layers in the order the forward pass first reaches them, and how often each is called."""
    mods = dict(model.named_modules())
    order: list[str] = []
    calls = {n: 0 for n in names}

    def seen(n):
        calls[n] += 1
        if n not in order:
            order.append(n)

    handles = [mods[n].register_forward_pre_hook(lambda m, i, n=n: seen(n)) for n in names]
    try:
        with torch.no_grad():
            forward(model.eval(), move(take(batch, slice(0, 2)), next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in order]
    if missing:
        raise UserError(f"REPAIR: layer '{missing[0]}' is never called in the forward pass")
    return order, calls


class Repairer:
    """REPAIR between two fixed endpoints, reusable at many α.

    The endpoints' statistics are measured once, at construction, on `data` (a few
    thousand training samples). `at(alpha)` returns the repaired interpolated model.

    Args:
        model_a: the first endpoint.
        model_b: the second endpoint (usually already aligned to A).
        data: calibration data: any form `Objective` takes.
        spec: a `PermutationSpec` whose repair_layers/norm_layers are used; derived from
            the fx graph when None and `layers` is None.
        layers: module names to repair, overriding the spec.
        norm_layers: module names to re-estimate, overriding the spec.
        forward: ``forward(model, batch) -> output`` (the batch contract of `Objective`).
    """

    def __init__(self, model_a: nn.Module, model_b: nn.Module, data, spec=None,
                 layers: Sequence[str] | None = None, norm_layers: Sequence[str] | None = None,
                 batch_size: int = 1000, forward=None):
        if layers is None:
            if spec is None:

                spec = permutation_spec(model_a)
            layers, norm_layers = spec.repair_layers, spec.norm_layers if norm_layers is None else norm_layers
        norm_layers = list(norm_layers or [])
        mods = dict(model_a.named_modules())
        for n in list(layers) + norm_layers:
            if n not in mods:
                raise UserError(f"REPAIR: the model has no module '{n}'")
        layers = list(dict.fromkeys(layers))  # each layer once, however often it is listed
        norm_layers = list(dict.fromkeys(norm_layers))
        for n in layers:
            if not isinstance(mods[n], (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not _is_hf_conv1d(mods[n]):
                raise UserError(f"REPAIR: layer '{n}' is a {type(mods[n]).__name__}, not a Linear or Conv layer")
        for n in norm_layers:
            if not isinstance(mods[n], nn.modules.batchnorm._BatchNorm):
                raise UserError(f"REPAIR: norm layer '{n}' is a {type(mods[n]).__name__}, not BatchNorm")
        self.model_a, self.model_b = model_a, model_b
        self.forward = criterion(forward=forward).forward
        self.batches = _calibration_batches(data, batch_size)
        if not self.batches:
            raise UserError("REPAIR needs calibration data (got an empty set)")
        self.layers = list(layers)
        self.norm_layers = norm_layers
        self.order, self.calls = _execution_order(model_a, self.layers + self.norm_layers, self.batches[0],
                                                  self.forward)
        self.stats_a = layer_statistics(model_a, self.layers, self.batches, forward=self.forward)
        self.stats_b = layer_statistics(model_b, self.layers, self.batches, forward=self.forward)
        self._names = [k for k, _ in model_a.named_parameters()] + [
            k for k, b in model_a.named_buffers() if b.is_floating_point()]

    def interpolated(self, alpha: float) -> nn.Module:
        """θ(α) for parameters and floating buffers, without repair."""
        out = copy.deepcopy(self.model_a)
        sa, sb = self.model_a.state_dict(), self.model_b.state_dict()
        out.load_state_dict({k: ((1 - alpha) * sa[k] + alpha * sb[k]) if sa[k].is_floating_point() else sa[k]
                             for k in sa})
        return out.eval()

    @torch.no_grad()
    def at(self, alpha: float) -> nn.Module:
        """The interpolated model at α with REPAIR folded into its weights (eval mode).

        A layer called more than once in the forward pass (a shared module) is corrected
        once, from its statistics pooled over all of its calls, as they were measured at
        the endpoints; the pass then runs to the end instead of stopping at the layer.
        """
        model = self.interpolated(float(alpha))
        mods = dict(model.named_modules())
        for name in self.order:
            mod = mods[name]
            acc = _Moments()
            is_norm = name in self.norm_layers
            stop = self.calls.get(name, 1) == 1

            def hook(m, inputs, output=None, is_norm=is_norm, stop=stop):
                acc.add(_channel_view(inputs[0] if is_norm else output, m))
                if stop:
                    raise _Stop

            h = mod.register_forward_pre_hook(hook) if is_norm else mod.register_forward_hook(hook)
            try:
                device = next(model.parameters()).device
                for i, batch in enumerate(self.batches):
                    with at_batch(i, order="the calibration data"):
                        try:
                            self.forward(model, move(batch, device))
                        except _Stop:
                            pass
            finally:
                h.remove()
            mean, var = acc.mean_var()
            if is_norm:
                mod.running_mean.copy_(mean.to(mod.running_mean))
                mod.running_var.copy_(var.to(mod.running_var))
                continue
            ma, va = self.stats_a[name]
            mb, vb = self.stats_b[name]
            mu_t = (1 - alpha) * ma + alpha * mb
            sd_t = (1 - alpha) * (va + EPS).sqrt() + alpha * (vb + EPS).sqrt()
            scale = sd_t / (var + EPS).sqrt()
            w = mod.weight
            shape = [1] * w.ndim
            shape[_weight_out_axis(mod)] = -1
            w.copy_((w.double() * scale.view(shape)).to(w))
            if mod.bias is not None:
                mod.bias.copy_(((mod.bias.double() - mean) * scale + mu_t).to(mod.bias))
        return model


def repair(model_a: nn.Module, model_b: nn.Module, data, alpha: float = 0.5, **kwargs) -> nn.Module:
    """The REPAIRed interpolation of `model_a` and `model_b` at `alpha` (see `Repairer`)."""
    return Repairer(model_a, model_b, data, **kwargs).at(alpha)


def interpolate_repaired(model_a: nn.Module, model_b: nn.Module, data, calibration,
                         alphas=None, loss="cross_entropy", batch_size: int = 4096, progress: bool = False,
                         repairer: Repairer | None = None, metric=None, **kwargs):
    """Loss and accuracy along α with REPAIR at every α, as a `lossprobe.paths.Interpolation`.

    `calibration` is the data REPAIR measures statistics on (training samples, not the
    evaluation splits). Default α grid: 0, 0.05, …, 1.
    """
    splits = named_splits(data)
    alphas = np.linspace(0, 1, 21) if alphas is None else np.asarray(alphas, dtype=float).reshape(-1)
    rep = repairer or Repairer(model_a, model_b, calibration, **kwargs)
    out = Interpolation(alphas=alphas, bn="repair")
    out.loss, out.accuracy = evaluate_per_point(lambda i: rep.at(alphas[i]), len(alphas), splits, loss, batch_size,
                                                progress="REPAIR along α" if progress else None,
                                                forward=rep.forward, metric=metric)
    return out


__all__ = ["Repairer", "interpolate_repaired", "layer_statistics", "repair"]

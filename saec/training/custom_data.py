"""Your own data: a torchvision dataset, a folder of images, a ``.npz`` of arrays, or event spike trains.

Each reader returns an :class:`~saec.training.data.ImageSet` (float32 images
[N, C, H, W] in [0, 1], int64 labels), so training, evaluation and the
figures treat it like MNIST. The spec's ``data.transform`` (grayscale,
resize) is applied to images only when it says so; the input shape is then
checked against ``input.shape`` by the trainer.

``torchvision``
    ``getattr(torchvision.datasets, data.torchvision)(root=data.root, ...)``:
    ``train=True/False`` when the class takes ``train``, else ``split="train"/"test"``;
    ``download`` is ``data.download``. Images come from the class's ``data``
    array when it has one (MNIST family, CIFAR), else one ``ds[i]`` at a time.
``image_folder``
    Every image file (PNG, JPEG, BMP, GIF, TIFF, WebP, PGM/PPM) under ``root``:
    one subfolder per class (labels = sorted subfolder names, as torchvision's
    ``ImageFolder``), or the files directly in ``root`` (label 0). Images of one
    set must share a size and mode unless ``transform`` makes them so.
``npz``
    ``images``: uint8 (0..255) or float in [0, 1], [N, H, W] or [N, C, H, W];
    ``labels`` (optional): integer [N].
``events``
    ``spikes``: [N, T, C, H, W] of 0/1 (bool or integer), e.g. a ``tonic``
    ``ToFrame`` output per recording, stacked and clipped to 0/1; ``labels``
    optional. They go to the network as they are (no encoder, ``input.kind:
    spikes``); the reconstruction target is :func:`saec.training.data.spike_target`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saec.training.imageset import DataError, DataNotFound, ImageSet, spike_target

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
# ITU-R 601-2 luma, the weights of torchvision's Grayscale and PIL's convert("L")
_LUMA = (0.299, 0.587, 0.114)


def load_custom(data_cfg: Any, split: str, root: str | Path) -> ImageSet:
    """One split of a torchvision / image_folder / npz / events dataset as the data config describes it.

    Args:
        data_cfg: the spec's ``data`` block (``dataset``, ``torchvision``, ``transform``, ``download``).
        split: ``"train"`` or ``"test"``.
        root: the dataset's root folder (torchvision), folder (image_folder) or file (npz, events).

    Returns:
        The ImageSet (``spikes`` set for events).

    Raises:
        DataNotFound: the folder or file does not exist (or torchvision finds nothing there).
        DataError: unreadable or ill-shaped data; the message names the file and the fix.
    """
    root = Path(root).expanduser()
    dataset = data_cfg.dataset
    if dataset == "torchvision":
        images, labels = _torchvision(data_cfg.torchvision, split, root, bool(data_cfg.download))
    elif not root.exists():
        raise DataNotFound(f"{root} does not exist (the {split} data of dataset {dataset!r}); fix data.root"
                           + (" or data.validation.root" if split == "test" else "") + " or pass --data-dir")
    elif dataset == "image_folder":
        images, labels = _image_folder(root, data_cfg.transform)
    elif dataset == "npz":
        images, labels = _npz_images(root)
    elif dataset == "events":
        spikes, labels = _npz_spikes(root)
        return ImageSet(spike_target(spikes), labels, f"events/{split}", spikes)
    else:  # pragma: no cover - the schema's Literal
        raise DataError(f"unknown dataset {dataset!r}")
    images = transform(images, data_cfg.transform)
    return ImageSet(images, labels, f"{dataset}/{split}")


def transform(images: Tensor, spec: Any) -> Tensor:
    """Apply ``data.transform``: grayscale (luma), then resize (bilinear, antialiased).

    Args:
        images: float32 [N, C, H, W] in [0, 1].
        spec: ``grayscale`` (bool), ``resize`` ([H, W] or None).

    Returns:
        float32 [N, C', H', W'] in [0, 1].
    """
    if getattr(spec, "grayscale", False) and images.shape[1] != 1:
        if images.shape[1] != 3:
            raise DataError(f"data.transform.grayscale: images have {images.shape[1]} channels; grayscale "
                            "converts 3-channel (RGB) images")
        weights = torch.tensor(_LUMA, dtype=images.dtype).view(1, 3, 1, 1)
        images = (images * weights).sum(1, keepdim=True)
    resize = getattr(spec, "resize", None)
    if resize is not None and tuple(images.shape[2:]) != tuple(resize):
        images = torch.nn.functional.interpolate(images, size=tuple(resize), mode="bilinear", antialias=True,
                                                 align_corners=False).clamp_(0.0, 1.0)
    return images.contiguous()


def _to_float_images(array: np.ndarray, source: str, layout: str) -> Tensor:
    """uint8 or float [0, 1] array in ``layout`` ``"NHW"``, ``"NCHW"`` or ``"NHWC"`` -> float32 [N, C, H, W]."""
    if array.dtype == np.uint8:
        images = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(255.0)
    elif np.issubdtype(array.dtype, np.floating):
        images = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise DataError(f"{source}: float images must lie in [0, 1] (found {float(images.min()):g}.."
                            f"{float(images.max()):g}); divide by 255 or store uint8")
    else:
        raise DataError(f"{source}: images of dtype {array.dtype}; store uint8 (0..255) or float in [0, 1]")
    if layout == "NHW":
        images = images.unsqueeze(1)
    elif layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    return images.contiguous()


def _labels(values: Any, n: int, source: str) -> Tensor:
    if values is None:
        return torch.zeros(n, dtype=torch.int64)
    labels = np.asarray(values)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers [N] = [{n}], got {labels.dtype} {list(labels.shape)}")
    return torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------- torchvision
def _torchvision(name: str, split: str, root: Path, download: bool) -> tuple[Tensor, Tensor]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if not (isinstance(cls, type) and issubclass(cls, tvd.VisionDataset)):
        known = ", ".join(n for n in ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "CIFAR10", "CIFAR100", "SVHN",
                                      "STL10") if hasattr(tvd, n))
        raise DataError(f"data.torchvision: {name!r} is not a dataset class of torchvision.datasets (e.g. {known})")
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"root": str(root)}
    if "download" in params:
        kwargs["download"] = download
    if "train" in params:
        kwargs["train"] = split == "train"
    elif "split" in params:
        kwargs["split"] = split
    elif split == "test":
        raise DataNotFound(f"torchvision.datasets.{name} has no test split; validate on a held-out part with "
                           "--set data.validation.source=split")
    if name == "EMNIST":
        kwargs.setdefault("split", "balanced")
    try:
        ds = cls(**kwargs)
    except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True to download it"
        raise DataNotFound(f"torchvision.datasets.{name}: {err} (root {root}, {split} split); put the dataset "
                           "there, or set data.download: true to fetch it (needs the network)") from None
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"torchvision.datasets.{name} could not be read from {root}: {err}") from None
    return _dataset_tensors(ds, f"torchvision.datasets.{name} ({root})")


def _dataset_tensors(ds: Any, source: str) -> tuple[Tensor, Tensor]:
    """All images and labels of a torchvision dataset (its arrays when it has them, else item by item)."""
    data = getattr(ds, "data", None)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    if isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim in (3, 4) and targets is not None:
        array = data.numpy() if isinstance(data, torch.Tensor) else data
        layout = "NHW" if array.ndim == 3 else ("NCHW" if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3)
                                                 else "NHWC")
        labels = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
        return _to_float_images(array, source, layout), _labels(labels, array.shape[0], source)
    images, labels = [], []
    for i in range(len(ds)):
        image, label = ds[i]
        images.append(_pil_array(image, source))
        labels.append(int(label))
    return _stack(images, source), torch.tensor(labels, dtype=torch.int64)


def _pil_array(image: Any, source: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:
        return array[None]  # [1, H, W]
    if array.ndim == 3:
        return array.transpose(2, 0, 1)  # [C, H, W]
    raise DataError(f"{source}: an image of shape {list(array.shape)}; expected [H, W] or [H, W, C]")


def _stack(images: list[np.ndarray], source: str) -> Tensor:
    if not images:
        raise DataError(f"{source}: no images")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise DataError(f"{source}: images differ in shape ({', '.join('x'.join(map(str, s)) for s in sorted(shapes)[:3])}"
                        "...); set data.transform.resize: [H, W] (and grayscale: true for mixed colour)")
    return _to_float_images(np.stack(images), source, "NCHW")


# ---------------------------------------------------------------- a folder of images
def _image_folder(root: Path, spec: Any) -> tuple[Tensor, Tensor]:
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"{root}: dataset 'image_folder' needs a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files = [(path, label) for label, name in enumerate(classes)
                 for path in sorted((root / name).rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(path, 0) for path in sorted(root.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or in its subfolders")
    grayscale = bool(getattr(spec, "grayscale", False))
    resize = getattr(spec, "resize", None)
    arrays = []
    for path, _ in files:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if grayscale or image.mode in ("L", "1", "I", "I;16") else "RGB")
                if resize is not None:  # resize here, so that images of different sizes can be stacked
                    image = image.resize((resize[1], resize[0]), Image.BILINEAR)
                arrays.append(_pil_array(image, str(path)))
        except OSError as err:
            raise DataError(f"{path}: cannot read the image ({err}); remove or replace it") from None
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return _stack(arrays, str(root)), labels


# ---------------------------------------------------------------- .npz files
def _read_npz(path: Path, key: str, layout: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The array ``key`` of a .npz file and its optional ``labels`` (``layout`` names the expected shape)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    with npz:
        if key not in npz.files:
            raise DataError(f"{path}: no array {key!r} (found {', '.join(npz.files) or 'none'}); store {layout} "
                            "under that name")
        return npz[key], (npz["labels"] if "labels" in npz.files else None)


def _npz_images(path: Path) -> tuple[Tensor, Tensor]:
    array, labels = _read_npz(path, "images", "images [N, H, W] or [N, C, H, W]")
    if array.ndim not in (3, 4):
        raise DataError(f"{path}: images must be [N, H, W] or [N, C, H, W], got {list(array.shape)}")
    images = _to_float_images(array, str(path), "NHW" if array.ndim == 3 else "NCHW")
    return images, _labels(labels, images.shape[0], str(path))


def _npz_spikes(path: Path) -> tuple[Tensor, Tensor]:
    array, labels = _read_npz(path, "spikes", "the spike trains [N, T, C, H, W] of 0/1")
    if array.ndim != 5:
        raise DataError(f"{path}: spikes must be [N, T, C, H, W], got {list(array.shape)}")
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(
            array.dtype, np.floating):
        raise DataError(f"{path}: spikes of dtype {array.dtype}; store 0/1 as bool or integers")
    if array.size and not np.isin(np.unique(array), (0, 1)).all():
        raise DataError(f"{path}: spikes must be 0 or 1 (event counts per frame: clip them, e.g. np.minimum(x, 1))")
    spikes = torch.from_numpy(array.astype(np.uint8))
    return spikes, _labels(labels, spikes.shape[0], str(path))

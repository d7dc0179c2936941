"""The one atomic file writer: complete or absent, never half; every layer writes through it."""

from __future__ import annotations

import pytest

from saec.atomicwrite import TEMPORARY_GLOB, save_figure, write_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    write_atomically(path, lambda tmp: tmp.write_text("old"))
    assert path.read_text() == "old"

    def half(tmp):
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, half)
    assert path.read_text() == "old"
    assert list(path.parent.glob(TEMPORARY_GLOB)) == []


def test_a_file_in_the_way_of_the_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_atomically(tmp_path / "file" / "out.txt", lambda tmp: tmp.write_text("y"))


def test_durable_write_and_figure(tmp_path):
    assert write_atomically(tmp_path / "d.bin", lambda tmp: tmp.write_bytes(b"\x00\x01"), durable=True).read_bytes() \
        == b"\x00\x01"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    path = save_figure(fig, tmp_path / "f.png", dpi=20)
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and list(tmp_path.glob(TEMPORARY_GLOB)) == []

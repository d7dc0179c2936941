"""Fuzzing the command line with hostile input: never a traceback, always exit 0 or 2, within a time bound.

Property-based (hypothesis) mutations of a valid spec (as data and as text), of a sweep file and of a
trained run folder, plus raw random bytes. Every case is classified:

- ``ok``: exit 0; ``clean``: exit 2 with one line on stderr;
- ``traceback``: an exception escaped, or another exit code, or a multi-line error;
- ``hang``: it ran past :data:`TIME_BOUND_S`;
- ``data lost``: a run's checkpoint that verified before a command no longer does after it.

The default run tries a small budget (:data:`BUDGET`); ``-m slow`` runs :data:`SLOW_BUDGET`. The counts
are printed at the end of the module (``pytest -s``).
"""

from __future__ import annotations

import collections
import copy
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from saec.cli import app  # noqa: E402
from saec.run import checkpoint as C  # noqa: E402
from tests.conftest import SPECS  # noqa: E402
from tests.training.test_train import MINI_SPEC, baseline  # noqa: E402,F401 (baseline: a fixture)

TIME_BOUND_S = 20.0
BUDGET = {"spec": 40, "text": 40, "bytes": 20, "sweep": 15, "run": 8}
SLOW_BUDGET = {"spec": 600, "text": 600, "bytes": 300, "sweep": 200, "run": 120}
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
runner = CliRunner()


class _Hang(BaseException):
    """Raised by the alarm: a BaseException, so that no handler of the code under test swallows it."""


def _alarm(signum, frame):
    raise _Hang


def exercise(kind: str, args: list[str]) -> str:
    """Run ``saec ARGS`` in-process; classify and count the outcome."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_BOUND_S)
    try:
        result = runner.invoke(app, args)
    except _Hang:
        outcome = "hang"
    else:
        err = result.stderr.strip()
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            outcome = "traceback"
        elif result.exit_code == 0:
            outcome = "ok"
        elif result.exit_code == 2 and err and "\n" not in err and "Traceback" not in result.output:
            outcome = "clean"
        else:
            outcome = "traceback"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    COUNTS[kind]["tried"] += 1
    COUNTS[kind][outcome] += 1
    assert outcome in ("ok", "clean"), (outcome, args, getattr(result, "exception", None),
                                        getattr(result, "output", "")[-2000:])
    return outcome


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    for kind, counts in sorted(COUNTS.items()):
        print(f"\nfuzz {kind}: tried {counts['tried']}, exit 0 {counts['ok']}, clean errors {counts['clean']}, "
              f"tracebacks {counts['traceback']}, hangs {counts['hang']}, data lost {counts['data lost']}"
              + (" (exit 0 here: compiled and trained one step; clean: refused at compile)" if kind == "trains" else ""))


# ---------------------------------------------------------------- hostile values and mutations
HOSTILE_SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.sampled_from([".", "..", "latent", "flat", "conv1", "output", "n" * 300, "lif", "linear", "conv2d",
                     "flatten", "unflatten", "conv_transpose2d", "sae", "ae", "vae", "paper", "reference",
                     "mnist5k", "/dev/zero", "../../etc", 1_000_000_000, 0, -1, 1e308, 2**63]),
)
HOSTILE = st.one_of(HOSTILE_SCALARS, st.lists(HOSTILE_SCALARS, max_size=4),
                    st.dictionaries(st.text(max_size=6), HOSTILE_SCALARS, max_size=3))


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw, base: dict) -> dict:
    """``base`` with 1-3 random edits: a value replaced, a key deleted or an unknown key added."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        path = paths[draw(st.integers(0, len(paths) - 1))]
        parent = data
        for elem in path[:-1]:
            parent = parent[elem]
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op == "set":
            parent[path[-1]] = draw(HOSTILE)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(HOSTILE)
        else:
            parent.append(draw(HOSTILE))
    return data


@st.composite
def text_edits(draw, text: str) -> bytes:
    """``text`` as bytes with random insertions, deletions and overwrites."""
    data = bytearray(text.encode())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "overwrite"]))
        chunk = draw(st.one_of(st.binary(min_size=1, max_size=8),
                               st.sampled_from([b"&a [*a]", b"*a", b"[", b"{", b"}", b"- ", b": ", b"!!python/object",
                                                b"\x00", b"\t", b"\xff", b"\xef\xbf\xbe", b"\n  ", b"? [1]\n: 2\n"])))
        if op == "insert":
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos:pos + len(chunk)]
        else:
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


MINI = yaml.safe_load(MINI_SPEC)
SWEEP = {"name": "fuzz", "base": str(SPECS / "ae.yaml"), "set": {"training.epochs": 1},
         "grid": {"training.lr": [0.001, 0.002]}, "seeds": [0, 1]}


def _settings(kind: str, budget: dict[str, int]):
    return settings(max_examples=budget[kind], deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def _spec_file(content: bytes | str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="saec-fuzz-"))
    path = folder / "spec.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


def _dump(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


# ---------------------------------------------------------------- specs, texts, bytes, sweeps
def fuzz_spec(data: dict) -> None:
    path = _spec_file(_dump(data))
    try:
        exercise("spec", ["compile", str(path), "-q"])
    finally:
        shutil.rmtree(path.parent)


def fuzz_text(content: bytes, kind: str) -> None:
    path = _spec_file(content)
    try:
        exercise(kind, ["compile", str(path), "-q"])
    finally:
        shutil.rmtree(path.parent)


def fuzz_sweep(data: dict) -> None:
    folder = Path(tempfile.mkdtemp(prefix="saec-fuzz-"))
    try:
        if isinstance(data, dict):
            data.setdefault("out", str(folder / "out"))
        (folder / "sweep.yaml").write_text(_dump(data))
        exercise("sweep", ["sweep", str(folder / "sweep.yaml"), "--table-only"])
    finally:
        shutil.rmtree(folder)


@_settings("spec", BUDGET)
@given(mutated(MINI))
def test_fuzz_spec_mutations(data):
    fuzz_spec(data)


@_settings("text", BUDGET)
@given(text_edits(MINI_SPEC))
def test_fuzz_spec_text_edits(content):
    fuzz_text(content, "text")


@_settings("bytes", BUDGET)
@given(st.binary(max_size=3000))
def test_fuzz_raw_bytes(content):
    fuzz_text(content, "bytes")


@_settings("sweep", BUDGET)
@given(mutated(SWEEP))
def test_fuzz_sweep_mutations(data):
    fuzz_sweep(data)


# ---------------------------------------------------------------- run folders
READERS = [
    lambda run: ["eval", str(run), "--device", "cpu", "--no-figures", "--limit", "4"],
    lambda run: ["stats", str(run), "--device", "cpu", "--examples", "4"],
    lambda run: ["export", str(run), "--format", "onnx"],
    lambda run: ["export", str(run), "--format", "nir", "--examples", "1"],
    lambda run: ["train", "--resume", str(run), "--device", "cpu", "--no-progress"],
]


def _checkpoint_verifies(run: Path) -> bool:
    try:
        return C.load_checkpoint(run, repair=False) is not None
    except Exception:  # noqa: BLE001 - any failure means "does not verify"
        return False


@st.composite
def run_damage(draw):
    """(file index, operation, position fraction, bytes, reader index)."""
    return (draw(st.integers(0, 10_000)), draw(st.sampled_from(["truncate", "flip", "garbage", "delete", "empty",
                                                                 "json"])),
            draw(st.floats(0, 1)), draw(st.binary(min_size=1, max_size=64)), draw(st.integers(0, len(READERS) - 1)),
            draw(HOSTILE))


def fuzz_run(trained: Path, damage) -> None:
    index, op, where, junk, reader, value = damage
    folder = Path(tempfile.mkdtemp(prefix="saec-fuzz-"))
    run = folder / "run"
    try:
        shutil.copytree(trained, run, ignore=shutil.ignore_patterns("figures"))
        files = sorted(p for p in run.rglob("*") if p.is_file())
        target = files[index % len(files)]
        data = target.read_bytes()
        if op == "truncate":
            target.write_bytes(data[: int(len(data) * where)])
        elif op == "flip" and data:
            pos = min(int(len(data) * where), len(data) - 1)
            target.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
        elif op == "garbage":
            target.write_bytes(junk * 8)
        elif op == "delete":
            target.unlink()
        elif op == "empty":
            target.write_bytes(b"")
        elif op == "json" and target.suffix == ".json":
            import json

            try:
                doc = json.loads(data)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and doc:
                doc[sorted(doc)[int(where * (len(doc) - 1))]] = value
                target.write_text(json.dumps(doc, allow_nan=True))
        intact = _checkpoint_verifies(run)
        exercise("run", READERS[reader](run))
        if intact and not _checkpoint_verifies(run):
            COUNTS["run"]["data lost"] += 1
            raise AssertionError(f"{READERS[reader](run)} damaged the checkpoint after {op} of {target}")
    finally:
        shutil.rmtree(folder)


def test_fuzz_run_folders(baseline):
    @_settings("run", BUDGET)
    @given(run_damage())
    def check(damage):
        fuzz_run(baseline[0], damage)

    check()


# ---------------------------------------------------------------- a spec that compiles, trains
#: Plausible values for the fields training depends on: most combinations compile.
PLAUSIBLE = {
    ("encoding", "timesteps"): st.integers(1, 6),
    ("readout", "t_min"): st.integers(0, 7),
    ("latent",): st.sampled_from(["latent", "fc_dec", "conv1", "output", "flat"]),
    ("neuron", "lower_bound"): st.one_of(st.none(), st.floats(-3, 2)),
    ("neuron", "threshold"): st.floats(0.1, 3),
    ("neuron", "reset"): st.sampled_from(["zero", "subtract", "none"]),
    ("neuron", "lower_bound_mode"): st.sampled_from(["clamp", "revive"]),
    ("neuron", "integrate"): st.sampled_from(["potential", "current"]),
    ("training", "seed"): st.integers(0, 2**63 - 1),
    ("training", "lr"): st.floats(1e-6, 10),
    ("training", "optimizer"): st.sampled_from(["adam", "adamw", "sgd"]),
    ("regularizers", "l2"): st.floats(0, 10),
    ("preset",): st.sampled_from(["saec", "reference", "paper"]),
    ("kind",): st.sampled_from(["sae", "ae", "vae"]),
}


@st.composite
def plausible_specs(draw) -> dict:
    data = copy.deepcopy(MINI)
    data["training"].update(epochs=1, max_steps=1)
    for path, strategy in PLAUSIBLE.items():
        if draw(st.booleans()):
            node = data
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = draw(strategy)
    return data


def fuzz_compiles_then_trains(data: dict) -> None:
    """A spec that compiles trains one step without an error (a NaN loss is a clean stop, exit 1)."""
    from saec.compiler.pipeline import compile_spec
    from saec.run import report
    from saec.run.train import train
    from saec.training.train import TrainingDiverged
    from saec.errors import UserError

    folder = Path(tempfile.mkdtemp(prefix="saec-fuzz-"))
    try:
        (folder / "spec.yaml").write_text(_dump(data))
        COUNTS["trains"]["tried"] += 1
        try:
            _, graph = compile_spec(str(folder / "spec.yaml"))
        except UserError:
            COUNTS["trains"]["clean"] += 1
            return
        spec = __import__("saec.spec.loader", fromlist=["load_spec"]).load_spec(folder / "spec.yaml").spec
        real_finish = report.finish_run
        report.finish_run = lambda out, *a, **k: {}  # the loop and its checkpoint, not the figures
        try:
            train(spec, graph, folder / "run", device="cpu", progress=False, log=lambda line: None)
            COUNTS["trains"]["ok"] += 1
        except TrainingDiverged:
            COUNTS["trains"]["ok"] += 1  # a clean, documented stop
        except Exception:
            COUNTS["trains"]["traceback"] += 1
            raise
        finally:
            report.finish_run = real_finish
    finally:
        shutil.rmtree(folder)


def test_fuzz_specs_that_compile_train():
    @settings(max_examples=4, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(plausible_specs())
    def check(data):
        fuzz_compiles_then_trains(data)

    check()


@pytest.mark.slow
def test_fuzz_specs_that_compile_train_larger_budget():
    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(plausible_specs())
    def check(data):
        fuzz_compiles_then_trains(data)

    check()


# ---------------------------------------------------------------- the larger budget
@pytest.mark.slow
def test_fuzz_larger_budget(baseline):
    for test, strategy, kind in [(fuzz_spec, mutated(MINI), "spec"), (lambda c: fuzz_text(c, "text"),
                                  text_edits(MINI_SPEC), "text"),
                                 (lambda c: fuzz_text(c, "bytes"), st.binary(max_size=3000), "bytes"),
                                 (fuzz_sweep, mutated(SWEEP), "sweep"),
                                 (lambda d: fuzz_run(baseline[0], d), run_damage(), "run")]:
        settings(max_examples=SLOW_BUDGET[kind], deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))(given(strategy)(test))()


def test_a_non_utf8_byte_in_metrics_jsonl_is_no_traceback(baseline):
    """Found by the larger budget: ``saec eval`` read metrics.jsonl as UTF-8 in one piece, so one
    flipped byte raised UnicodeDecodeError. The damaged line is skipped now; every reader stays clean."""
    trained = baseline[0]
    files = sorted(p for p in trained.rglob("*") if p.is_file() and "figures" not in p.relative_to(trained).parts)
    index = [p.relative_to(trained).as_posix() for p in files].index("metrics.jsonl")  # fuzz_run's order
    for reader in range(len(READERS)):
        fuzz_run(trained, (index, "flip", 0.0, b"\x00", reader, 0))

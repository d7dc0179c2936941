"""One saec worker of benchmarks/train_step.py, run through its own code, and what its switches change.

    python tests/benchmarks/switch_probe.py 'saec:no-pool+ftz'

Runs ``_worker_main`` (the worker process's entry: environment, threads,
``Trainer``, ``_saec_trainer``) on the paper SAE at T = 2, B = 2, one thread,
two steps, and prints one JSON object of observations, made independently of
the switch code (tests/benchmarks/test_bench_smoke.py reads them):

- ``omp_wait_policy``: OMP_WAIT_POLICY as the worker left it (the test starts
  the probe without it);
- ``c_scan_calls``: calls of the C LIF kernel (forward and backward) in the second step;
- ``spike_weight_grad_calls``: calls of the spike-driven weight-gradient kernel in that step;
- ``spike_input_grad_calls``: calls of the input-gradient kernel (active inputs only) in that step;
- ``spike_forward_calls``: calls of the spike-driven forward kernel in that step;
- ``scan_backends``: the scan backends the LIF scan was called with in that step (the
  ``backend`` argument its kernel choice received, sorted);
- ``fresh_pool_bytes``: large tensors (at least ``POOL_FROM_BYTES``) the buffer pool
  allocated afresh in the second step, and ``pool_hits``: those it handed out again in that step;
- ``saved``: what autograd saved in the second step (counts by dtype, channels-last
  4-D tensors), ``computed``: the dtypes of every aten op's results in that step,
  ``lif_scan_nodes``: fused LIF scan nodes in the graph of x_hat;
- ``denormal_flushed``: whether 1e-39 * 1 comes out as 0 (flush-to-zero on);
- ``thp_aligned``: whether 4 MiB tensors start on 2 MiB (huge-page) boundaries;
- ``heap_64mib``: whether a 64 MiB block comes from glibc's heap (not a fresh mmap), and
  ``heap_kept_after_free`` / ``heap_trimmed_after_free``: whether the heap, grown for it, keeps
  that memory once the block is freed or gives it back to the OS.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import train_step  # noqa: E402  (imports no torch: the worker decides OMP_WAIT_POLICY before torch loads)

# At T = 2, B = 2 the step's large tensors are 100-200 kB: the pool takes them from 64 kB up (the
# switch under test, no-pool, sets its own threshold after this one).
POOL_FROM_BYTES = 64 << 10


# torch's allocator aligns to the page size when THP_MEM_ALLOC_ENABLE=1 (64 bytes otherwise; glibc's
# own mmap'd blocks start 16 bytes into a page).
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> _MallInfo2:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2()


def probe(name: str) -> dict:
    observed: dict = {}
    real_init, real_step = train_step.Trainer.__init__, train_step.Trainer.step

    def init(self, *args, **kwargs):
        import torch  # the worker has loaded it by now

        from saec.training import objective as objective_module
        from saec.runtime import pool
        from saec.runtime.kernels import cpu_lif
        from saec.runtime.lif import dispatch

        pool.MIN_POOLED_BYTES = POOL_FROM_BYTES
        counters = {"c_scan_calls": 0, "fresh_pool_bytes": 0, "fresh_pool_tensors": 0}
        self._probe_counters, self._probe_on = counters, False
        backends: set[str] = set()
        real_kernel_for = dispatch.kernel_for

        def kernel_for(t, backend):
            if self._probe_on:
                backends.add(backend)
            return real_kernel_for(t, backend)

        dispatch.kernel_for = kernel_for
        observed["scan_backends"] = backends

        def counting(fn, counter):
            counters.setdefault(counter, 0)

            def wrapper(*a, **k):
                counters[counter] += self._probe_on
                return fn(*a, **k)
            return wrapper

        cpu_lif.forward = counting(cpu_lif.forward, "c_scan_calls")
        cpu_lif.backward = counting(cpu_lif.backward, "c_scan_calls")
        from saec.runtime.kernels import cpu_spike

        for kernel, counter in (("weight_grad", "spike_weight_grad_calls"), ("input_grad", "spike_input_grad_calls"),
                                ("forward", "spike_forward_calls")):  # the fast path calls them through the module
            setattr(cpu_spike, kernel, counting(getattr(cpu_spike, kernel), counter))

        class CountingTorch:  # pool.py's `torch`: counts the fresh buffers the pool asks for
            def __getattr__(self, attr):
                return getattr(torch, attr)

            def empty(self, *shape, **kw):
                t = torch.empty(*shape, **kw)
                if self_probe_on() and t.nbytes >= POOL_FROM_BYTES:
                    counters["fresh_pool_bytes"] += t.nbytes
                    counters["fresh_pool_tensors"] += 1
                return t

            def empty_strided(self, *a, **kw):
                t = torch.empty_strided(*a, **kw)
                if self_probe_on() and t.nbytes >= POOL_FROM_BYTES:
                    counters["fresh_pool_bytes"] += t.nbytes
                    counters["fresh_pool_tensors"] += 1
                return t

        def self_probe_on() -> bool:
            return self._probe_on

        pool.torch = CountingTorch()
        real_objective = objective_module.objective

        def objective(model, out, x):
            if self._probe_on:
                names, todo, seen = [], [out.x_hat.grad_fn], set()
                while todo:
                    node = todo.pop()
                    if node is None or node in seen:
                        continue
                    seen.add(node)
                    names.append(type(node).__name__)
                    todo.extend(fn for fn, _ in node.next_functions)
                observed["lif_scan_nodes"] = sum("LIFScan" in n for n in names)
            self._probe_pool = model._pool
            return real_objective(model, out, x)

        objective_module.objective = objective
        real_init(self, *args, **kwargs)

    def step(self):
        import torch

        if self.count != 1:  # the first step fills the pool
            return real_step(self)
        saved = {"float32": 0, "bfloat16": 0, "bool": 0, "other": 0, "channels_last_4d": 0}

        def pack(t):
            key = str(t.dtype).replace("torch.", "")
            saved[key if key in saved else "other"] += 1
            if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
                saved["channels_last_4d"] += 1
            return t

        from torch.utils._python_dispatch import TorchDispatchMode

        computed: dict[str, int] = {}

        class Dtypes(TorchDispatchMode):  # the dtype of every tensor an aten op returns
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                result = func(*args, **(kwargs or {}))
                for t in result if isinstance(result, (tuple, list)) else (result,):
                    if isinstance(t, torch.Tensor):
                        key = str(t.dtype).replace("torch.", "")
                        computed[key] = computed.get(key, 0) + 1
                return result

        hits_before = self._probe_pool.hits  # the pool of the first step's forward
        self._probe_on = True
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), Dtypes():
                result = real_step(self)
        finally:
            self._probe_on = False
        observed["pool_hits"] = self._probe_pool.hits - hits_before  # the second step's, forward and backward
        observed["saved"], observed["computed"] = saved, computed
        observed.update({k: v for k, v in self._probe_counters.items()})
        return result

    train_step.Trainer.__init__, train_step.Trainer.step = init, step
    args = argparse.Namespace(worker=name, threads=1, timesteps=[2], batch=2, device="cpu", data=None, images=4)
    stdin, stdout = sys.stdin, sys.stdout
    sys.stdin, replies = io.StringIO("step\nstep\ndone\n"), io.StringIO()
    sys.stdout = replies
    try:
        train_step._worker_main(args)
    finally:
        sys.stdin, sys.stdout = stdin, stdout
    observed["replies"] = [json.loads(line) for line in replies.getvalue().splitlines()]
    observed["scan_backends"] = sorted(observed.get("scan_backends", ()))

    import torch

    observed["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    observed["denormal_flushed"] = bool((torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0.0)
    blocks = [torch.empty(4 << 20, dtype=torch.uint8) for _ in range(4)]
    observed["thp_aligned"] = all(b.data_ptr() % PAGE_BYTES == 0 for b in blocks)
    del blocks
    # glibc itself (what the heap switches set), with nothing allocated between malloc and free
    # that could land above the block and keep it from being trimmed.
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    before = _mallinfo()
    block = libc.malloc(64 << 20)
    during = _mallinfo()
    libc.free(block)
    after = _mallinfo()
    observed["heap_64mib"] = (during.uordblks - before.uordblks >= 64 << 20
                              and during.hblkhd - before.hblkhd < 64 << 20)
    grew = during.arena > before.arena  # the heap grew for the block: freeing it leaves free space at the top
    observed["heap_kept_after_free"] = observed["heap_64mib"] and grew and after.arena >= during.arena
    observed["heap_trimmed_after_free"] = observed["heap_64mib"] and grew and after.arena < during.arena
    return observed


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))

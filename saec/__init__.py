"""saec, the spiking auto-encoder compiler.

The Python API (see :mod:`saec.api` and the README's "Python API")::

    import saec
    compiled = saec.compile("specs/sae_dense.yaml", overrides={"data.dataset": "mnist5k"})
    run = saec.train(compiled, "runs/mine")
    out = run.module()(images)        # AutoencoderOutput: reconstruction, spikes, counts, latent

Names are imported on first use, so ``import saec`` (and ``saec compile``) does not import torch.
"""

__version__ = "0.1.0"

__all__ = ["AutoencoderModule", "AutoencoderOutput", "Compiled", "Run", "SpecError", "UserError", "__version__", "compile",
           "export", "load_run", "resume", "train"]

_LAZY = {
    "compile": "saec.api", "train": "saec.api", "resume": "saec.api", "load_run": "saec.api", "export": "saec.api",
    "Compiled": "saec.api", "Run": "saec.api",
    "AutoencoderModule": "saec.runtime.module", "AutoencoderOutput": "saec.runtime.module",
    "SpecError": "saec.spec.errors", "UserError": "saec.errors",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'saec' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

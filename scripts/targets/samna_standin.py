"""A stand-in for SynSense's ``samna`` package, for running sinabs' and rockpool's pure-Python code.

samna is SynSense's chip library (device I/O, configuration objects, the chip simulator). Every
samna wheel on the package index is a stub that tries to download the real package when imported,
which fails offline; yet ``sinabs.backend.dynapcnn`` and ``rockpool.devices.xylo`` import it at
module top. The code saec's drivers use (sinabs' network building, discretisation and core mapping;
rockpool's mapper, quantiser and XyloSim wrapper) never calls into samna, so a module whose every
attribute is a ``MagicMock`` lets it import. Anything that does reach samna (building a chip
configuration, opening a device) then gets mock objects, not answers: the drivers do not use those.

Usage, before importing sinabs or rockpool::

    import samna_standin; samna_standin.install()
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from unittest.mock import MagicMock

#: top-level names the stand-in answers for (samnagui: sinabs' visualiser imports it)
STANDIN_PACKAGES = ("samna", "samnagui")


class _SamnaStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and creates ``samna`` and any ``samna.<submodule>`` as a MagicMock module."""

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in STANDIN_PACKAGES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = MagicMock(name=spec.name)
        module.__name__ = spec.name
        module.__spec__ = spec
        module.__path__ = []
        module.__file__ = None
        module.__loader__ = self
        return module

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    """Register the stand-in ahead of any installed samna (the index's stub) and drop one already imported."""
    for name in [n for n in sys.modules if n.split(".")[0] in STANDIN_PACKAGES]:
        del sys.modules[name]
    if not any(isinstance(f, _SamnaStandIn) for f in sys.meta_path):
        sys.meta_path.insert(0, _SamnaStandIn())

#!/usr/bin/env bash
# Build lava (lava-nc 0.10.0 + lava-dl 0.6.0) in its own virtual environment,
# beside saec, never as a saec dependency. saec's vendor tests
# (tests/exporters/test_netx_lava.py) find it through SAEC_LAVA_PYTHON or at
# the default location (envs/lava in the repository, git-ignored).
#
#   bash scripts/envs/lava.sh [ENV_DIR]          # default ENV_DIR: envs/lava
#   export SAEC_LAVA_PYTHON=ENV_DIR/bin/python   # for an ENV_DIR elsewhere
#
# Why each step (measured on CPython 3.11, CPU only):
# - lava-nc 0.10.0 declares Python < 3.11 and lava-dl 0.6.0 pins torch < 2.4,
#   so both install with --no-deps --ignore-requires-python and their
#   dependencies are listed here by hand;
# - a CPU torch goes in first, alone (a CUDA build would be pulled otherwise);
# - lava/magma/compiler/var_model.py gives dataclass fields a mutable default
#   (ByteEncoder()), which Python 3.11 rejects at import: patched to
#   field(default_factory=ByteEncoder);
# - slayer imports torchvision only for object detection; the index's
#   torchvision is a CUDA build that cannot load beside torch+cpu, so a
#   stand-in module is installed instead.
set -euo pipefail

ENV_DIR="${1:-envs/lava}"
PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

"$PYTHON" -m venv "$ENV_DIR"
PIP="$ENV_DIR/bin/pip"
"$PIP" install --upgrade pip wheel setuptools
# CPU torch first, alone. Where the CPU index is not configured, set
# PIP_EXTRA_INDEX_URL to it (e.g. the PyTorch CPU wheel index).
"$PIP" install "torch==${TORCH_VERSION}" || "$PIP" install "torch==${TORCH_VERSION}+cpu"
"$PIP" install --no-deps --ignore-requires-python lava-nc==0.10.0 lava-dl==0.6.0
"$PIP" install numpy==1.26.4 scipy==1.15.3 networkx==2.8.7 "asteval<0.10" \
    scikit-learn h5py matplotlib ninja nir==1.0.8 "opencv-python-headless<4.12"

SITE="$("$ENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# Python 3.11: dataclass fields may not default to a mutable instance.
VAR_MODEL="$SITE/lava/magma/compiler/var_model.py"
if grep -q '= ByteEncoder()' "$VAR_MODEL"; then
    sed -i 's/= ByteEncoder()/= field(default_factory=ByteEncoder)/' "$VAR_MODEL"
    grep -q '^from dataclasses import .*\bfield\b' "$VAR_MODEL" || \
        sed -i '0,/^from dataclasses import dataclass/s//from dataclasses import dataclass, field/' "$VAR_MODEL"
fi

# torchvision stand-in (slayer's object-detection helpers only).
if ! "$ENV_DIR/bin/python" -c 'import torchvision' 2>/dev/null; then
    mkdir -p "$SITE/torchvision"
    cat > "$SITE/torchvision/__init__.py" <<'PY'
"""Stand-in for torchvision inside the lava environment.

lava-dl's slayer imports torchvision only for its object-detection helpers,
which saec never uses; the real package on the index is a CUDA build that
cannot load beside the CPU torch installed here.
"""
import types as _types

__version__ = "0.0.0+standin"
ops = _types.ModuleType("torchvision.ops")
transforms = _types.ModuleType("torchvision.transforms")
datasets = _types.ModuleType("torchvision.datasets")
PY
fi

"$ENV_DIR/bin/python" - <<'PY'
import lava.lib.dl.netx as netx
from lava.magma.core.run_configs import Loihi2SimCfg
print("lava env ok:", netx.__name__, Loihi2SimCfg.__name__)
PY

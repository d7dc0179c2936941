#!/usr/bin/env bash
# Builds a separate Python 3.11 environment with SynSense's sinabs 3.1.3, in
# which saec's Speck verification driver (scripts/targets/speck_verify.py) runs.
# sinabs is never a saec dependency: it pins nir<=1.0.4, which cannot read the
# NIR 1.0.8 files saec writes, so nir/nirtorch are installed afterwards without
# their dependency checks. samna (SynSense's chip library) has no working wheel
# on the index (every one downloads the real package at import), so the driver
# registers a stand-in module (scripts/targets/samna_standin.py) before import.
#
# usage: scripts/envs/sinabs.sh [ENV_DIR]      (default envs/sinabs, or $SAEC_ENVS/sinabs)
# then:  export SAEC_SINABS_PYTHON=ENV_DIR/bin/python
set -euo pipefail
ENV_DIR=${1:-${SAEC_ENVS:-envs}/sinabs}
PYTHON=${PYTHON:-python3.11}
"$PYTHON" -m venv "$ENV_DIR"
PIP="$ENV_DIR/bin/python -m pip install -q"
# A CPU torch first, alone, so that nothing below pulls a CUDA build.
$PIP "torch==2.13.0"
$PIP "sinabs==3.1.3"
$PIP --no-deps "nir==1.0.8" "nirtorch==2.6"
echo "sinabs environment ready: export SAEC_SINABS_PYTHON=$ENV_DIR/bin/python"

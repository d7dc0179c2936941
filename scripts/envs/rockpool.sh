#!/usr/bin/env bash
# Builds a separate Python 3.11 environment with SynSense's rockpool 3.1.0 and
# the XyloSim bit-accurate Xylo simulator (xylosim 0.1.3, built from source in
# about a minute), in which saec's Xylo verification driver
# (scripts/targets/xylo_verify.py) runs. Never a saec dependency.
# rockpool.devices.xylo imports samna unconditionally; the driver registers a
# stand-in module (scripts/targets/samna_standin.py) before import.
#
# usage: scripts/envs/rockpool.sh [ENV_DIR]    (default envs/rockpool, or $SAEC_ENVS/rockpool)
# then:  export SAEC_ROCKPOOL_PYTHON=ENV_DIR/bin/python
set -euo pipefail
ENV_DIR=${1:-${SAEC_ENVS:-envs}/rockpool}
PYTHON=${PYTHON:-python3.11}
"$PYTHON" -m venv "$ENV_DIR"
PIP="$ENV_DIR/bin/python -m pip install -q"
$PIP "torch==2.13.0"
$PIP "rockpool==3.1.0" "nir==1.0.8"
$PIP "nirtorch==2.6" "xylosim==0.1.3" bitstruct
echo "rockpool environment ready: export SAEC_ROCKPOOL_PYTHON=$ENV_DIR/bin/python"

#!/usr/bin/env bash
# One prepared GPU run: fast path vs reference path on CUDA, then saec vs the peers
# (s/step, peak torch.cuda memory) at T=16 and T=32, B=64, fp32 (TF32 off). Installs
# nothing from the internet: peers and saec's pure-Python deps come as wheels from
# .gpubench/whl (pip --no-index --no-deps --target), saec from this checkout, the
# images from .gpubench/mnist_test_1024.pt. Writes check.txt, bench.txt, bench.json
# and machine.txt under $OUT. About 3-5 minutes on one H200.
#
# Prepare (on a machine with pip and the MNIST test set), in the repository root:
#   mkdir -p .gpubench/whl && echo /.gpubench/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpubench/whl \
#     snntorch==1.0.0 spikingjelly==2.0.0 loguru==0.7.3 pydantic==2.14.4 pydantic_core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
#   python -c "import torch; from saec.training.data import load_images; \
#     torch.save(load_images('mnist', 'test').images[:1024].clone(), '.gpubench/mnist_test_1024.pt')"
# Run there:   bash benchmarks/gpu.sh            (carry .gpubench)
# CPU dry run: DEVICE=cpu WHEELS=0 PYTHON=.venv/bin/python TIMESTEPS="2 3" BATCH=2 REPS=1 ROUNDS=1 \
#   WARMUP=0 OUT=/tmp/gpu-dry bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/saec-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
TIMESTEPS=${TIMESTEPS:-16 32}
BATCH=${BATCH:-64}
export PYTHONUNBUFFERED=1

if [ "${WHEELS:-1}" = 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpubench/whl/*.whl || { echo "wheel install failed" | tee "$OUT/check.txt"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc; "$PY" -c \
  "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__)"; } > "$OUT/machine.txt" 2>&1

status=0
timeout 150 "$PY" benchmarks/device_check.py --device "$DEVICE" --timing-reps "${REPS:-20}" 2>&1 | tee "$OUT/check.txt" || status=1
DATA=.gpubench/mnist_test_1024.pt
[ -f "$DATA" ] || DATA=
# shellcheck disable=SC2086
timeout 330 "$PY" benchmarks/train_step.py --device "$DEVICE" --timesteps $TIMESTEPS --batch "$BATCH" \
  --warmup "${WARMUP:-3}" --rounds "${ROUNDS:-10}" ${DATA:+--data "$DATA"} --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" || status=1
exit $status

#!/usr/bin/env bash
# The main job: DINOv2 pretraining on Fashion-MNIST + k-NN evaluation, with progress and a report
# (<output-dir>/report.md). Sets up what it needs on a fresh machine: .venv with the project, and the
# Fashion-MNIST files (Debian package dataset-fashion-mnist, installed when running as root).
# Arguments go to scripts/main_job.py, e.g. `bash scripts/main_job.sh --output-dir runs/fmnist optim.epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DINOV2_VENV:-.venv}
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e .
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && [[ " $* " != *" --source"* ]]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST not found in $FMNIST: run 'sudo apt-get install -y dataset-fashion-mnist'," \
      "or pass --source <folder with the four idx files>" >&2
    exit 1
  fi
fi
exec "$VENV/bin/python" scripts/main_job.py "$@"

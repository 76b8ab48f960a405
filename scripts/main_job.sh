#!/usr/bin/env bash
# The main job: DINOv2 pretraining on a labelled image folder (default: Fashion-MNIST), evaluated with k-NN and
# logistic regression against raw pixels and a random init, with a report (<output-dir>/report.md).
# Sets up what it needs on a fresh machine: .venv with the project, and (without --dataset-dir) the Fashion-MNIST
# files (Debian package dataset-fashion-mnist, installed when running as root).
# Arguments go to scripts/main_job.py, e.g.
#   bash scripts/main_job.sh                                   # Fashion-MNIST, 20 min of training
#   bash scripts/main_job.sh --dataset-dir DIR --budget-minutes 30 student.arch=vit_small
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DINOV2_VENV:-.venv}
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e .
if [[ " $* " != *" --dataset-dir"* ]] && [[ " $* " != *" --source"* ]] && [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST not found in $FMNIST: run 'sudo apt-get install -y dataset-fashion-mnist'," \
      "pass --source <folder with the four idx files>, or use your own images with --dataset-dir DIR" >&2
    exit 1
  fi
fi
exec "$VENV/bin/python" scripts/main_job.py "$@"

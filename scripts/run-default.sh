#!/usr/bin/env bash
# Install (when needed) and run the default job: a federated simulation on the embedded
# Hipparcos catalog (5 nodes owning declination bands, FedAvg), export the model, and show its
# predictions for five held-out test stars beside its test RMSE. Extra arguments are Hydra
# overrides for the training run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
astroscale-fl train "$@"
echo "held-out test stars with the exported model's predictions (scripts/showcase.py):"
python scripts/showcase.py models/hipparcos_absmag/latest

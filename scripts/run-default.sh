#!/usr/bin/env bash
# Install (when needed) and run the default job: a federated simulation on the embedded
# Hipparcos catalog (5 nodes owning declination bands, FedAvg), export the model, and predict
# one held-out star with it. Extra arguments are Hydra overrides for the training run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
astroscale-fl train "$@"
MODEL=models/hipparcos_absmag/latest
echo "prediction for the model card's example star (a held-out test star):"
mapfile -t VALUES < <(python -c "import json,sys; [print(repr(v)) for v in json.load(open('$MODEL/model_card.json'))['example']['inputs']]")
python scripts/predict.py --model "$MODEL" "${VALUES[@]}"
python -c "import json; e=json.load(open('$MODEL/model_card.json'))['example']; print(json.dumps({'HIP': e['id'], 'true_M_Hp': e['target']}))"

#!/usr/bin/env python
"""Predict with an exported AstroScale FL model (same as `astroscale-fl predict`).

    python scripts/predict.py --model outputs/.../model 1.23 0.45 ...
    python scripts/predict.py --model DIR --input stars.csv --output predictions.csv
    python scripts/predict.py --model DIR --list-inputs
"""

import sys

from astroscale_fl.export.predict import main

if __name__ == "__main__":
    sys.exit(main())

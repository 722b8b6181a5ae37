"""``python -m astroscale_fl.serve``: same as ``astroscale-fl serve``."""

import sys

from astroscale_fl.serve.cli import main

sys.exit(main())

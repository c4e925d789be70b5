"""``python -m openmace``: the command line (also ``torchrun ... -m openmace train``)."""

import sys

from openmace.cli.main import main

sys.exit(main())

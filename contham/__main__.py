"""``python -m contham ...`` (and ``torchrun ... -m contham train ...``): the ``contham`` command."""

import sys

from .experiments.cli import main

sys.exit(main())

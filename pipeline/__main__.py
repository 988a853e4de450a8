"""``python -m pipeline`` is the ``filterlens`` command."""

import sys

from pipeline.cli import main

sys.exit(main())

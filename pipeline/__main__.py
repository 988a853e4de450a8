"""``python -m pipeline`` is the ``filterlens`` command."""

import sys

from pipeline.cli.main import main

sys.exit(main())

"""`python -m dealsd.simulator`: serve the local Keepa until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from dealsd.simulator.cli import main

sys.exit(main())

"""Run the Braze emulator as a process: `python -m cdi_operator.braze.emulator --help`."""

import sys

from cdi_operator.braze.emulator.cli import main

sys.exit(main())

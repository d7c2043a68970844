"""`python -m tapeout.flows.cli ...`: the `tapeout` command."""

import sys

from tapeout.flows.cli import main

sys.exit(main())

"""``python -m lczscale.cli``: the ``lczscale`` command without the console script (the
tests' and ``run.sh``'s way to run it with a given interpreter)."""

import sys

from lczscale.cli import main

sys.exit(main())

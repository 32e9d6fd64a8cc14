"""`python -m infra.container`: the image's entrypoint (see :mod:`infra.container.entry`)."""

import sys

from infra.container.entry import main

sys.exit(main())

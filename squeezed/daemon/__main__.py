"""``python -m squeezed.daemon``: run the daemon."""

import sys

from squeezed.daemon import main

sys.exit(main())

"""``python -m tinygrad_sgd``: the same as the ``tinygrad-sgd`` command."""

import sys

from .cli import main

sys.exit(main())

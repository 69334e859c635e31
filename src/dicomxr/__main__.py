"""``python -m dicomxr`` runs the command line."""

import sys

from dicomxr.cli import main

sys.exit(main())

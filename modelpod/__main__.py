import sys

from modelpod.cli import main

sys.exit(main())

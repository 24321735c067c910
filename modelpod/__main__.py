import sys

from modelpod.cli.main import main

sys.exit(main())

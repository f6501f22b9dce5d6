import sys

from kerasft.export.cli import main

sys.exit(main())

import sys

from ssd.cli import main

sys.exit(main())

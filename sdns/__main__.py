import sys

from sdns.cli import main

sys.exit(main())

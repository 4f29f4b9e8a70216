import sys

from dealsd.cli import main

sys.exit(main())

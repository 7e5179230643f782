import sys

from asymcl.cli import main

sys.exit(main())

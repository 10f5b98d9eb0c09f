import sys

from retnet.cli.main import main

sys.exit(main())

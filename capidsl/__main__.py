import sys

from capidsl.cli.main import main

sys.exit(main())

import sys

from sfumato.cli.main import main

sys.exit(main())

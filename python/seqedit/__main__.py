import sys

from seqedit.cli import main

sys.exit(main())

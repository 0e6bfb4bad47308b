import sys

from modelfleet.devcluster.cli import main

sys.exit(main())

import sys

from defectlab.cli import main

sys.exit(main())

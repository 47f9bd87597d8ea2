import sys

from defectlab.runtime.cli import main

sys.exit(main())

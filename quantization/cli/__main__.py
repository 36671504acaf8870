import sys

from quantization.cli.main import main

sys.exit(main())

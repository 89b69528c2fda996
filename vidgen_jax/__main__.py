import sys

from vidgen_jax.cli import main

sys.exit(main())

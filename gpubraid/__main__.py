"""``python -m gpubraid``: the same command line as the ``gpubraid`` script."""
import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())

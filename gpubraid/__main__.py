"""``python -m gpubraid``: the same command line as the ``gpubraid`` script."""
import sys

from .runtime.interrupts import Interrupts

if __name__ == "__main__":
    with Interrupts():  # a signal during the imports below is one line too, not a traceback
        from .cli.main import main
    sys.exit(main())

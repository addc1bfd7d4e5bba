"""Re-plot a benchmark result from its JSON: ``python -m bench.plot bench/results/<run>/<name>.json [out.png]``."""
from __future__ import annotations

import importlib
import sys

from bench import common

# Results written before bench/model.py was renamed name their benchmark by the old module name.
RENAMED = {"model": "perf_model"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    for path in argv[:1]:
        name = common.load_json(path)["benchmark"]
        mod = importlib.import_module(f"bench.{RENAMED.get(name, name)}")
        # some plot() functions take the JSON path only (their PNG beside it)
        print(mod.plot(path, argv[1]) if len(argv) > 1 else mod.plot(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())

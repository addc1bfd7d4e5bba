"""Re-plot a benchmark result from its JSON: ``python bench/plot.py bench/results/<file>.json [out.png]``."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    for path in argv[:1]:
        name = common.load_json(path)["benchmark"]
        mod = importlib.import_module(name)
        print(mod.plot(path, argv[1] if len(argv) > 1 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Moved to the `padfree bench` command (padfree.bench); this script forwards its arguments there.

    python benchmarks/bench_train_step.py --shape 0.8b --device cuda --json bench.json
    # same as: padfree bench --shape 0.8b --device cuda --json bench.json
"""

import sys

from padfree.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

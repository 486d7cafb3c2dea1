"""`padfree bench`: upstream padded, upstream packed and padfree training steps, side by side.

    from padfree.bench import BenchSettings, run_bench
    run_bench(BenchSettings(shape="tiny", device="cpu", row_tokens=2048, steps=5, json="bench.json"))

Modules: shapes (the model shapes), train_step (workload, batches, one path's timing), gate (the
packed == per-document check run before timing), run (the report).
"""

from padfree.bench.run import BenchSettings, run_bench
from padfree.bench.shapes import SHAPES, shape_config
from padfree.bench.train_step import DEFAULT_PATHS, PATHS

__all__ = ["DEFAULT_PATHS", "PATHS", "SHAPES", "BenchSettings", "run_bench", "shape_config"]

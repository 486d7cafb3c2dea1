"""Moved to `padfree.bench.shapes`; kept so scripts that `from shapes import shape_config` still run."""

from padfree.bench.shapes import SHAPES, shape_config

__all__ = ["SHAPES", "shape_config"]

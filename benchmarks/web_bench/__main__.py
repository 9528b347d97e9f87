"""``python benchmarks/web_bench [options]`` (``--help`` lists them)."""

import sys
from pathlib import Path

# Run as a directory, Python puts the package's own folder first on sys.path; the package
# is imported by name from benchmarks/, beside bench_tunnel.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from web_bench.cli import main  # noqa: E402

sys.exit(main())

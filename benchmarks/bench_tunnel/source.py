"""Where sshtunnel_mgr (and tests.harness) are imported from, decided once, before any of
them is imported: the working tree, or with ``--ref REV`` that revision exported to a
temporary directory. The package's ``__init__`` imports this module first."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _prepare_source(argv: Sequence[str]) -> tuple[Path, str]:
    """Where sshtunnel_mgr (and tests.harness) are imported from, for this process and for
    every sshtun process it starts: the working tree, or with ``--ref REV`` that git revision
    exported to a temporary directory (so that edits in progress do not change the code
    under test halfway through a run)."""
    ref = None
    for i, arg in enumerate(argv):
        if arg == "--ref" and i + 1 < len(argv):
            ref = argv[i + 1]
        elif arg.startswith("--ref="):
            ref = arg.split("=", 1)[1]
    if ref is None:
        return ROOT, "working tree"
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest = Path(tempfile.mkdtemp(prefix=f"sshtun-src-{sha[:10]}-"))
    atexit.register(shutil.rmtree, dest, True)
    archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest, f"git {ref} ({sha[:10]})"


def _run_as_benchmark() -> bool:
    """The script being run is this package (``python benchmarks/bench_tunnel``) or another
    script in benchmarks/ that imports it (then ``--ref`` on its command line applies too)."""
    main = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    return main is not None and (ROOT / "benchmarks") in main.parents


SRC, SRC_LABEL = _prepare_source(sys.argv[1:] if _run_as_benchmark() else [])
sys.path.insert(0, str(SRC))
# Children (python -m sshtunnel_mgr ...) import from the same place; they run in the work dir
# so that the current directory never shadows it.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

"""`python -m bench [NAME [ARGS...]]`: run one benchmark with its arguments, or all of them."""

import runpy
import sys
from pathlib import Path

BENCHES = ["qps", "startup", "freshness"]

args = sys.argv[1:]
names = [args.pop(0)] if args and not args[0].startswith("-") else BENCHES
sys.path.insert(0, str(Path(__file__).parent))
for name in names:
    sys.argv = [name, *args]
    runpy.run_module(name, run_name="__main__")

"""`python -m bench [NAME [ARGS...]]`: run one benchmark with its arguments, or all of them."""

import runpy
import sys
from pathlib import Path

BENCHES = ["qps", "startup", "freshness", "balancer"]

args = sys.argv[1:]
names = [args.pop(0)] if args and not args[0].startswith("-") else BENCHES
here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))
# The test helpers start sdns, etcd, ZooKeeper and namespaces the same way for benchmarks.
sys.path.insert(0, str(here.parent / "tests"))
for name in names:
    sys.argv = [name, *args]
    runpy.run_module(name, run_name="__main__")

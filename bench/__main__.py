"""`python -m bench [NAME [ARGS...]]`: run one benchmark with its arguments, or all of them.

The benchmarks start sdns, etcd, ZooKeeper and namespaces with the tests' helpers
(``tests.helpers``), from the repository root."""

import runpy
import sys

BENCHES = ["qps", "counting", "checks", "startup", "freshness", "churn", "rolling", "balancer"]

args = sys.argv[1:]
names = [args.pop(0)] if args and not args[0].startswith("-") else BENCHES
for name in names:
    sys.argv = [name, *args]
    runpy.run_module(f"bench.{name}", run_name="__main__")

"""`python -m modelfleet.devcluster up|down`: a control plane that outlives the command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelfleet.devcluster.cluster import LocalCluster, find_binaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet-devcluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".demo/cluster"), help="work directory")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir.resolve(), find_binaries())
    if args.command == "down":
        cluster.stop(remove=True)
        print(f"stopped the control plane in {args.dir}")
        return 0
    cluster.stop(remove=True)
    cluster.start()
    print(cluster.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`modelpod serve --backend ray`: the flags of the Ray Serve backend, and serving through it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from modelpod.extras import needs_extra

OPTIONS = ("backend", "ray_address", "ray_app", "ray_route_prefix", "ray_replicas", "ray_max_replicas",
           "ray_replica_cpus")  # fmt: skip


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray Serve backend (pip install 'modelpod[ray]')")
    group.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: this process serves HTTP and gRPC; ray: deploy the models as Ray Serve replicas "
        "behind Ray's HTTP proxy on --host/--http-port (HTTP only) [default local]",
    )
    group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="the Ray cluster to deploy to [env RAY_ADDRESS; default: start a local one, "
                       "stopped on exit]")  # fmt: skip
    group.add_argument("--ray-app", default="modelpod", metavar="NAME",
                       help="the Ray Serve application's name [default modelpod]")  # fmt: skip
    group.add_argument("--ray-route-prefix", default="/", metavar="PATH",
                       help="the application's path on Ray's HTTP proxy [default /]")  # fmt: skip
    group.add_argument("--ray-replicas", type=int, default=1, metavar="N",
                       help="replicas; the minimum with --ray-max-replicas [default 1]")  # fmt: skip
    group.add_argument("--ray-max-replicas", type=int, default=None, metavar="N",
                       help="let Ray Serve scale between --ray-replicas and N replicas")  # fmt: skip
    group.add_argument("--ray-replica-cpus", type=float, default=None, metavar="CPUS",
                       help="CPUs Ray reserves for each replica [default: Ray Serve's, 1]")  # fmt: skip


def run(arguments: argparse.Namespace, targets: list[Any], settings: Any) -> int:
    """Deploy, serve until SIGINT or SIGTERM, remove the deployment; 2 for a usage error."""
    replicas, most = arguments.ray_replicas, arguments.ray_max_replicas
    if replicas < 1 or (most is not None and most < replicas):
        print("modelpod: --ray-replicas must be at least 1, and --ray-max-replicas at least that",
              file=sys.stderr)  # fmt: skip
        return 2
    with needs_extra("ray", "--backend ray"):
        from modelpod.ray import serve_until_stopped

    serve_until_stopped(
        targets,
        settings,
        arguments.store_models,
        address=arguments.ray_address,
        name=arguments.ray_app,
        route_prefix=arguments.ray_route_prefix,
        num_replicas=replicas,
        max_replicas=most,
        replica_cpus=arguments.ray_replica_cpus,
    )
    return 0

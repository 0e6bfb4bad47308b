"""The modelfleet operator process: kopf settings, peering, probes, metrics, webhook.

Run it as ``python operator/main.py --backend local`` against the cluster in
$KUBECONFIG (or in-cluster credentials). Two replicas can run at once: kopf
peering keeps one active and the other on standby.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def priority(value: str) -> int:
    """An integer, or ``auto``: a hash of the pod's name, so each replica has its own."""
    if value != "auto":
        return int(value)
    from controllers.probes import auto_priority

    return auto_priority()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env = os.environ.get
    parser.add_argument(
        "--backend", choices=["local", "kuberay"], default=env("MODELFLEET_BACKEND", "kuberay")
    )
    parser.add_argument(
        "--namespace", action="append", default=[], help="watch only these (repeatable)"
    )
    parser.add_argument("--metrics-addr", default=env("MODELFLEET_METRICS_ADDR", "0.0.0.0"))
    parser.add_argument(
        "--metrics-port", type=int, default=int(env("MODELFLEET_METRICS_PORT", "8080"))
    )
    parser.add_argument(
        "--webhook",
        choices=["managed", "external", "off"],
        default=env("MODELFLEET_WEBHOOK", "managed"),
        help="managed: register the webhook configuration ourselves (local runs); "
        "external: serve only, the chart registers it; off: no admission webhook",
    )
    parser.add_argument("--webhook-addr", default=env("MODELFLEET_WEBHOOK_ADDR", "127.0.0.1"))
    parser.add_argument(
        "--webhook-port", type=int, default=int(env("MODELFLEET_WEBHOOK_PORT", "9443"))
    )
    parser.add_argument("--webhook-cert", default=env("MODELFLEET_WEBHOOK_CERT"))
    parser.add_argument("--webhook-key", default=env("MODELFLEET_WEBHOOK_KEY"))
    parser.add_argument("--peering", default=env("MODELFLEET_PEERING", "modelfleet"))
    parser.add_argument("--standalone", action="store_true", help="no peering: the only replica")
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=int(env("MODELFLEET_PEERING_LIFETIME", "60")),
        help="seconds after which a silent peer is considered gone",
    )
    parser.add_argument(
        "--priority",
        type=priority,
        default=env("MODELFLEET_PRIORITY", "0"),
        help="peering priority, the highest live one works; auto: derived from the pod's name",
    )
    parser.add_argument(
        "--runtime-image", default=env("MODELFLEET_RUNTIME_IMAGE", "modelfleet/runtime:0.1.0")
    )
    parser.add_argument(
        "--federated-image",
        default=env("MODELFLEET_FEDERATED_IMAGE", "modelfleet/federated:0.1.0"),
        help="kuberay backend: image of FedJobs' SuperLink and SuperNode pods "
        "(images/federated/Dockerfile)",
    )
    parser.add_argument(
        "--ray-token-auth",
        action=argparse.BooleanOptionalAction,
        default=env("MODELFLEET_RAY_TOKEN_AUTH", "true").lower() == "true",
        help="kuberay backend: Ray token authentication on every RayCluster "
        "(authOptions.mode=token; needs KubeRay 1.5 or newer)",
    )
    parser.add_argument(
        "--serve-from-namespace",
        action="append",
        default=[],
        help="kuberay backend: a namespace whose pods may call services' Serve port, "
        "besides each service's own (repeatable)",
    )
    parser.add_argument(
        "--kuberay-namespace",
        default=env("MODELFLEET_KUBERAY_NAMESPACE", "kuberay-system"),
        help="kuberay backend: the KubeRay operator's namespace, the only one allowed to "
        "reach the Ray dashboard ports",
    )
    parser.add_argument(
        "--ray-address",
        default=env("MODELFLEET_RAY_ADDRESS"),
        help="local backend: the Ray to serve pools on ('auto', host:port); "
        "unset starts a private Ray inside the operator on the first pool",
    )
    parser.add_argument("--serve-host", default=env("MODELFLEET_SERVE_HOST", "127.0.0.1"))
    parser.add_argument("--serve-port", type=int, default=int(env("MODELFLEET_SERVE_PORT", "8000")))
    parser.add_argument(
        "--replica-cpus",
        type=float,
        default=float(env("MODELFLEET_REPLICA_CPUS", "0.5")),
        help="local backend: Ray CPUs each engine replica reserves",
    )
    parser.add_argument(
        "--resync-seconds", type=float, default=float(env("MODELFLEET_RESYNC_SECONDS", "30"))
    )
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def make_backend(args: argparse.Namespace, api: Any) -> Any:
    """The chosen backend; only its own dependencies are imported (Ray for local)."""
    if args.backend == "kuberay":
        from modelfleet.backends.kuberay import KubeRayBackend

        return KubeRayBackend(
            api,
            args.runtime_image,
            token_auth=args.ray_token_auth,
            serve_from=args.serve_from_namespace,
            kuberay_namespace=args.kuberay_namespace,
            federated_image=args.federated_image,
        )
    from controllers.secrets import secret_reader
    from modelfleet.backends.local import LocalBackend
    from modelfleet.backends.local_serve import ServeSettings

    return LocalBackend(
        ServeSettings(args.ray_address, args.serve_host, args.serve_port, args.replica_cpus),
        secret_reader(api),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Handlers are registered at import, and whether deletes need a finalizer depends on
    # the backend, so it must be known before the imports.
    os.environ["MODELFLEET_BACKEND"] = args.backend
    from controllers.log_context import configure_logging

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)

    import kopf
    from kubernetes import client, config

    import controllers.fedjob
    import controllers.fusionjob
    import controllers.modelpool
    import controllers.routingpolicy
    from controllers.context import FINALIZER, OperatorContext, configure
    from controllers.probes import ensure_peering, serve_probes
    from controllers.resync import Resync, peering_gate, watch_children
    from modelfleet.core import tls

    if args.webhook != "off":
        import controllers.admission  # registers the validating handlers
    if args.backend == "local":
        import controllers.apikeys  # noqa: F401  (follows the Secrets of local API keys)
    else:
        watch_children()

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.ApiClient()
    backend = make_backend(args, api)
    configure(OperatorContext(backend=backend, api=api))

    probes: list[Any] = []
    identity = own_identity()
    gate = (
        (lambda _: True)
        if args.standalone
        else peering_gate(api, args.peering, identity, args.priority)
    )
    resync = Resync(args.resync_seconds, gate, args.namespace)

    @kopf.on.cleanup()
    async def stop_probes(**_: Any) -> None:
        resync.stop()
        for runner in probes:
            await runner.cleanup()

    @kopf.on.startup()
    async def configure_operator(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="modelfleet.io"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="modelfleet.io", key="last-handled-configuration"
        )
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.WARNING
        settings.execution.max_workers = 8
        settings.watching.server_timeout = 300
        settings.peering.priority = args.priority
        settings.peering.lifetime = args.peering_lifetime
        if args.webhook != "off":
            cert, key = args.webhook_cert, args.webhook_key
            if not cert:
                directory = Path(tempfile.mkdtemp(prefix="modelfleet-webhook-"))
                ca = tls.create_ca(directory, "modelfleet-webhook-ca")
                pair = tls.issue(
                    ca, directory, "webhook", args.webhook_addr, [args.webhook_addr, "localhost"]
                )
                cert, key, cafile = str(pair.cert), str(pair.key), str(ca.cert)
            else:
                cafile = cert
            settings.admission.server = kopf.WebhookServer(
                addr=args.webhook_addr,
                port=args.webhook_port,
                host=args.webhook_addr,
                certfile=cert,
                pkeyfile=key,
                cafile=cafile,
            )
            if args.webhook == "managed":
                settings.admission.managed = "validate.modelfleet.io"
        probes.append(await serve_probes(args.metrics_addr, args.metrics_port))
        if not args.standalone:
            ensure_peering(api, args.peering, args.namespace)
        resync.start()

    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        priority=args.priority,
        identity=identity,
    )


def own_identity() -> str:
    """This replica's name in its kopf peering, chosen here rather than by kopf so the
    resync loop can find itself among the peers (``controllers.resync.leads``): the pod's
    name from ``POD_ID`` as kopf would take it (the chart sets it), else host and a nonce."""
    import secrets
    import socket

    return os.environ.get("POD_ID") or f"modelfleet@{socket.gethostname()}/{secrets.token_hex(4)}"


if __name__ == "__main__":
    main()

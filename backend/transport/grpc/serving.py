"""What both gRPC servers (the API server and the encoder worker) do alike: health that says
NOT_SERVING until the models are warm, reflection over their services, binding the port,
a graceful stop, and running until SIGINT/SIGTERM."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from backend.transport.grpc.signals import until_signalled

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServingHealth:
    """The health service of one server and the service names it reports on ("" is the
    server as a whole)."""

    def __init__(self, services: Iterable[str]) -> None:
        self.services = tuple(services)
        self._servicer = health_aio.HealthServicer()

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register health and reflection (over the services, health and reflection)."""
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
        reflection.enable_server_reflection(
            (*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    async def set(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType,
                  names: Iterable[str] | None = None) -> None:
        """`status` for `names` (default: the server and every service)."""
        for name in ("", *self.services) if names is None else names:
            await self._servicer.set(name, status)

    async def stop(self, server: grpc.aio.Server | None, grace: float) -> None:
        """NOT_SERVING everywhere, then let calls in flight finish for up to `grace` s."""
        await self._servicer.enter_graceful_shutdown()
        if server is not None:
            await server.stop(grace)


def bound_port(port: int, host: str, wanted: int) -> int:
    """The port `add_*_port` returned; OSError when it could not bind (it returns 0)."""
    if port == 0:
        raise OSError(f"cannot bind {host}:{wanted}")
    return port


async def run_until_signalled(start: Callable[[], Awaitable[object]],
                              stop: Callable[[], Awaitable[None]]) -> None:
    """Start, wait for SIGINT/SIGTERM, then stop gracefully."""
    await start()
    await until_signalled()
    await stop()

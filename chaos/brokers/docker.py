"""Redis in a Docker container, driven through the docker SDK.

No registry is reachable, so the image ``taskq-redis:local`` is built ``FROM scratch`` out
of the host's ``redis-server`` and the shared libraries ``ldd`` lists -- the same recipe
as ``ci/start-docker.sh``; :func:`ensure_redis_image` builds it when it is missing.
Containers use the host network (the engine runs with ``--bridge=none``) and listen on
127.0.0.1 on a free port. The verbs map onto the engine's: stop, start, kill -s KILL,
pause and unpause (the cgroup freezer).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from chaos.brokers.base import Broker
from chaos.brokers.local_redis import redis_ping, redis_server_args
from chaos.errors import BrokerError, DockerUnavailable
from chaos.journal import Journal
from chaos.net import free_port

__all__ = [
    "REDIS_IMAGE",
    "DockerRedis",
    "docker_client",
    "docker_unavailable",
    "ensure_redis_image",
]

REDIS_IMAGE = "taskq-redis:local"
LABEL = "org.taskq.chaos"
_DOCKERFILE = 'FROM scratch\nCOPY rootfs/ /\nWORKDIR /data\nENTRYPOINT ["/usr/bin/redis-server"]\n'


def docker_client(timeout: float = 60.0) -> Any:
    """A docker SDK client that has answered a ping, or :class:`DockerUnavailable`."""
    try:
        import docker
    except ImportError:
        raise DockerUnavailable(
            "the docker SDK is not installed; pip install 'taskq[docker]'"
        ) from None
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types
        raise DockerUnavailable(
            f"no Docker engine answers ({type(exc).__name__}: {exc}); run `bash ci/start-docker.sh`"
        ) from None
    return client


def docker_unavailable() -> str | None:
    """Why Docker cannot be used here, or None if it can."""
    try:
        docker_client(timeout=10).close()
    except DockerUnavailable as exc:
        return str(exc)
    return None


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r"(/\S+)", out)))


def ensure_redis_image(client: Any, image: str = REDIS_IMAGE) -> str:
    """Build ``image`` from the host's redis-server unless it exists; return its name."""
    import docker.errors

    try:
        client.images.get(image)
        return image
    except docker.errors.ImageNotFound:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        raise BrokerError("redis-server is not installed on the host; the image copies it")
    binary = os.path.realpath(binary)
    with tempfile.TemporaryDirectory(prefix="taskq-redis-image-") as tmp:
        root = Path(tmp) / "rootfs"
        for sub in ("usr/bin", "data", "tmp"):
            (root / sub).mkdir(parents=True)
        shutil.copy2(binary, root / "usr/bin/redis-server")
        for lib in _libraries(binary):
            dest = root / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)
        (Path(tmp) / "Dockerfile").write_text(_DOCKERFILE)
        try:
            client.images.build(path=tmp, tag=image, labels={LABEL: "redis"}, rm=True)
        except docker.errors.BuildError as exc:
            raise BrokerError(f"building {image} failed: {exc}") from exc
    return image


class DockerRedis(Broker):
    """A durable Redis (AOF, ``appendfsync always``) in a container on the host network."""

    kind = "docker-redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        image: str = REDIS_IMAGE,
        client: Any = None,
        durable: bool = True,
        journal: Journal | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(journal=journal, ready_timeout=ready_timeout)
        self._client = client if client is not None else docker_client()
        self._owns_client = client is None
        self.image = ensure_redis_image(self._client, image)
        self.port = port or free_port(self.host)
        self.durable = durable
        self.name = f"taskq-chaos-redis-{uuid.uuid4().hex[:8]}"
        self.container: Any = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return redis_server_args(self.host, self.port, "/data", durable=self.durable)

    def is_ready(self) -> bool:
        return redis_ping(self.host, self.port)

    def _failure(self) -> str | None:
        if self.container is None:
            return None
        self.container.reload()
        if self.container.status in ("exited", "dead"):
            return f"container {self.name} is {self.container.status}{self._diagnostics()}"
        return None

    def _diagnostics(self) -> str:
        if self.container is None:
            return ""
        try:
            logs = self.container.logs(tail=15).decode(errors="replace")
        except Exception:  # diagnostics are best effort
            return ""
        return f"\n--- last lines of docker logs {self.name} ---\n{logs}"

    def _start(self) -> None:
        try:
            if self.container is None:
                self.container = self._client.containers.run(
                    self.image,
                    self.command(),
                    name=self.name,
                    detach=True,
                    network_mode="host",
                    labels={LABEL: "redis"},
                )
            else:
                self.container.start()
        except Exception as exc:  # wrap the SDK's errors where they enter
            raise BrokerError(f"cannot start container {self.name}: {exc}") from exc

    def _stop(self, timeout: float) -> None:
        self.container.stop(timeout=int(max(1, timeout)))

    def _crash(self) -> None:
        self.container.kill(signal="SIGKILL")
        self.container.wait(timeout=30)

    def _pause(self) -> None:
        self.container.pause()

    def _resume(self) -> None:
        self.container.unpause()

    def close(self) -> None:
        try:
            if self.container is not None:
                with contextlib.suppress(Exception):  # already gone is fine
                    self.container.remove(force=True, v=True)
                self.container = None
            self.running = self.paused = False
        finally:
            if self._owns_client:
                self._client.close()

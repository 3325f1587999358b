#!/usr/bin/env bash
# Make sure a Docker engine runs and the local image `taskq-redis:local` exists.
#
# Idempotent: an engine that already answers `docker info` is used as it is. Otherwise
# Debian's docker.io is installed (if dockerd is missing) and dockerd is started with
# --bridge=none --iptables=false (containers use the host network, nothing leaves
# 127.0.0.1). The image is built FROM scratch out of the host's redis-server and the
# shared libraries it needs: no registry is reachable, and none is needed.
# chaos.brokers.docker builds the same image itself when it is missing.
set -euo pipefail

IMAGE="${TASKQ_REDIS_IMAGE:-taskq-redis:local}"
LOG=/var/log/dockerd-ci.log
DEADLINE_S="${TASKQ_DOCKER_DEADLINE:-60}"

engine_up() { docker info >/dev/null 2>&1; }

start_engine() {
    if ! command -v dockerd >/dev/null 2>&1; then
        echo "ci: installing docker.io (dockerd is missing)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
    fi
    echo "ci: starting dockerd (log: $LOG)"
    # setsid: the engine must outlive the shell (and process group) that started it.
    setsid nohup dockerd --bridge=none --iptables=false >>"$LOG" 2>&1 </dev/null &
    local deadline=$((SECONDS + DEADLINE_S))
    until engine_up; do
        if ((SECONDS >= deadline)); then
            echo "ci: dockerd did not answer within ${DEADLINE_S} s; last log lines:" >&2
            tail -n 20 "$LOG" >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

build_image() {
    local redis ctx
    redis="$(command -v redis-server)"
    redis="$(readlink -f "$redis")"
    ctx="$(mktemp -d)"
    trap 'rm -rf "$ctx"' RETURN
    mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/data" "$ctx/rootfs/tmp"
    cp "$redis" "$ctx/rootfs/usr/bin/redis-server"
    # Every absolute path ldd prints (libraries and the dynamic loader), copied to the
    # same path inside the image, following symlinks.
    ldd "$redis" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
        mkdir -p "$ctx/rootfs$(dirname "$lib")"
        cp -L "$lib" "$ctx/rootfs$lib"
    done
    cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
WORKDIR /data
ENTRYPOINT ["/usr/bin/redis-server"]
EOF
    docker build -q -t "$IMAGE" --label org.taskq.chaos=redis "$ctx" >/dev/null
    echo "ci: built $IMAGE"
}

if engine_up; then
    echo "ci: docker engine already up"
else
    start_engine
    echo "ci: docker engine up"
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "ci: image $IMAGE already present"
else
    build_image
fi

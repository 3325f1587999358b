#!/usr/bin/env bash
# Make sure the shared Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672) are up.
# Uses running services as they are; starts installed-but-stopped ones; installs
# missing ones from Debian's packages. Never flushes or reconfigures a running broker.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # wait_port PORT SECONDS NAME
    local deadline=$((SECONDS + $2))
    until port_open "$1"; do
        if ((SECONDS >= deadline)); then
            echo "ci: $3 did not open 127.0.0.1:$1 within $2 s" >&2
            return 1
        fi
        sleep 0.5
    done
}

apt_updated=0
apt_install() {
    if ((apt_updated == 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if port_open 6379; then
    echo "ci: redis already up on 127.0.0.1:6379"
else
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_port 6379 30 redis
    echo "ci: started redis on 127.0.0.1:6379"
fi

if port_open 5672; then
    echo "ci: rabbitmq already up on 127.0.0.1:5672"
else
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    rabbitmq-server -detached || true
    wait_port 5672 90 rabbitmq
    echo "ci: started rabbitmq on 127.0.0.1:5672"
fi

#!/usr/bin/env bash
# .ci/with-broker.sh VERSION COMMAND [ARG...]
#
# Runs COMMAND with AMQP_URL pointing at a RabbitMQ VERSION container of its
# own (the image warren-rabbitmq:VERSION that .ci/brokers.sh builds, or the
# one WARREN_RABBITMQ_IMAGE_<VERSION with dots as underscores> names),
# published on a loopback port only, and removes the container afterwards
# whatever COMMAND returns. For test modules that take their broker from
# AMQP_URL (otelwarren) rather than through warrentest. Fails if the broker
# is not up within two minutes.
set -euo pipefail

version=$1
shift
var="WARREN_RABBITMQ_IMAGE_${version//./_}"
image=${!var:-warren-rabbitmq:$version}

id=$(docker run -d --label warren.ci=with-broker -p 127.0.0.1::5672 "$image")
trap 'docker rm -f "$id" >/dev/null 2>&1 || true' EXIT

# (grep reads all of the log: with pipefail, grep -q would end the pipe
# early and docker logs's SIGPIPE would count as a miss.)
for _ in $(seq 1 240); do
	if docker logs "$id" 2>&1 | grep "Server startup complete" >/dev/null; then
		break
	fi
	if [ "$(docker inspect -f '{{.State.Running}}' "$id")" != true ]; then
		docker logs "$id" >&2 || true
		echo "with-broker: the $image container stopped" >&2
		exit 1
	fi
	sleep 0.5
done
if ! docker logs "$id" 2>&1 | grep "Server startup complete" >/dev/null; then
	echo "with-broker: $image did not start within two minutes" >&2
	exit 1
fi
port=$(docker port "$id" 5672/tcp | head -n1 | sed 's/.*://')
echo "with-broker: RabbitMQ $version ($image) on 127.0.0.1:$port" >&2
AMQP_URL="amqp://guest:guest@127.0.0.1:$port/" "$@"

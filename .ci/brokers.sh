#!/usr/bin/env bash
# .ci/brokers.sh [VERSION...]   (default: 3.10 4.3)
#
# Makes this machine ready to run the integration suite against RabbitMQ in
# containers, idempotently: whatever is already there is kept.
#
#  1. installs docker.io, iptables and debootstrap from Debian if missing;
#  2. starts a Docker engine in the background if none answers, locked down
#     so that nothing can leave the machine: --ip-forward=false, HTTP(S)
#     proxy set to a closed local port (any pull fails at once), published
#     ports on 127.0.0.1 only, --bip=172.17.0.1/16 (a local gateway for
#     testcontainers), and iptables DOCKER-USER rules that drop whatever a
#     container sends off its bridge;
#  3. builds the image warren-rabbitmq:VERSION for each VERSION from Debian
#     packages (3.10: bookworm, 4.3: sid) with debootstrap, a chroot and
#     `docker import`, unless the engine has it already. The root file
#     systems are cached as tarballs under .cache/brokers/ (gitignored), so
#     a rebuilt engine imports them again in seconds.
#
# Each image's rabbitmq-server version is checked against VERSION (3.10.x,
# 4.3.x) when it is built and when it is found. Nothing is pulled from a
# registry. Needs root for anything it has to install, start or build.
#
# Environment: WARREN_DEBIAN_MIRROR (default: the machine's own Debian
# mirror from its apt sources), WARREN_BROKERS_CACHE (default .cache/brokers).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${WARREN_BROKERS_CACHE:-$REPO/.cache/brokers}
IMAGE_REPO=warren-rabbitmq
# A local port nothing listens on: the engine's proxy for pulls.
CLOSED_PROXY=http://127.0.0.1:9
LABEL_VERSION=org.warrenmq.rabbitmq.version

VERSIONS=("$@")
if [ ${#VERSIONS[@]} -eq 0 ]; then
	VERSIONS=(3.10 4.3)
fi

log() { printf 'brokers: %s\n' "$*" >&2; }
die() { printf 'brokers: FAIL: %s\n' "$*" >&2; exit 1; }

suite_of() {
	case "$1" in
	3.10) echo bookworm ;;
	4.3) echo sid ;;
	*) die "no Debian suite known for RabbitMQ $1 (known: 3.10 -> bookworm, 4.3 -> sid)" ;;
	esac
}
for v in "${VERSIONS[@]}"; do suite_of "$v" >/dev/null; done

is_root() { [ "$(id -u)" -eq 0 ]; }

mkdir -p "$CACHE"
# One set-up at a time on this machine: the engine and its images are shared.
exec 9>/tmp/warren-brokers.lock
flock 9

START=$(date +%s)

# 1. Packages.
missing=()
for pkg in docker.io iptables debootstrap; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep 'install ok installed' >/dev/null; then
		missing+=("$pkg")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	is_root || die "packages ${missing[*]} are missing and only root can install them"
	log "installing ${missing[*]}"
	# Maintainer scripts must not start services (there is no systemd, and
	# an engine must only ever start locked down, below).
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The engine.
engine_up() { docker info >/dev/null 2>&1; }
lock_down_iptables() {
	# What a container sends off its bridge (docker0, or a user-defined
	# network's br-*) is dropped; traffic between the host and containers
	# does not cross FORWARD and is unaffected.
	local rule
	for rule in "-i docker0 ! -o docker0" "-i br-+ ! -o br-+"; do
		# shellcheck disable=SC2086
		iptables -C DOCKER-USER $rule -j DROP 2>/dev/null || iptables -I DOCKER-USER $rule -j DROP
	done
}
if ! engine_up; then
	is_root || die "no Docker engine answers and only root can start one"
	# A socket left by an engine that died would stop a new one from starting.
	if [ -S /var/run/docker.sock ] && ! pgrep -x dockerd >/dev/null; then
		rm -f /var/run/docker.sock
	fi
	log "starting dockerd (log: $CACHE/dockerd.log)"
	env HTTP_PROXY=$CLOSED_PROXY HTTPS_PROXY=$CLOSED_PROXY http_proxy=$CLOSED_PROXY https_proxy=$CLOSED_PROXY \
		NO_PROXY= no_proxy= \
		setsid dockerd --ip-forward=false --bip=172.17.0.1/16 --ip=127.0.0.1 \
		</dev/null >>"$CACHE/dockerd.log" 2>&1 9>&- &
	for _ in $(seq 1 120); do
		engine_up && break
		sleep 0.5
	done
	engine_up || { tail -20 "$CACHE/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
fi
if is_root && command -v iptables >/dev/null && iptables -n -L DOCKER-USER >/dev/null 2>&1; then
	lock_down_iptables
fi
proxy=$(docker info -f '{{.HTTPSProxy}}' 2>/dev/null || true)
if [ "$proxy" != "$CLOSED_PROXY" ]; then
	msg="the Docker engine was not started by this script (HTTPS proxy \"$proxy\", not $CLOSED_PROXY): it may pull from registries"
	if [ -n "${CI:-}" ] && [ "${CI:-}" != false ] && [ "${CI:-}" != 0 ]; then
		die "$msg"
	fi
	log "warning: $msg"
fi
log "engine: Docker $(docker version -f '{{.Server.Version}}' 2>/dev/null), storage $(docker info -f '{{.Driver}}' 2>/dev/null)"

# 3. Images.
mirror() {
	if [ -n "${WARREN_DEBIAN_MIRROR:-}" ]; then
		echo "$WARREN_DEBIAN_MIRROR"
		return
	fi
	local m
	m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
	if [ -z "$m" ]; then
		m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
			awk '{print $2}' | grep -v security | grep debian | head -1 || true)
	fi
	echo "${m:-http://deb.debian.org/debian}"
}

# image_version TAG prints the RabbitMQ version an image was built with, or
# nothing if the engine has no such image.
image_version() {
	docker image inspect -f "{{index .Config.Labels \"$LABEL_VERSION\"}}" "$1" 2>/dev/null || true
}

# build_rootfs SUITE VERSION TARBALL debootstraps SUITE, installs
# rabbitmq-server in it, checks its version and writes TARBALL.
build_rootfs() {
	local suite=$1 want=$2 tarball=$3
	local root=$CACHE/root-$suite
	is_root || die "building the $suite root file system needs root"
	rm -rf "$root"
	local t0
	t0=$(date +%s)
	log "debootstrap $suite from $(mirror)"
	debootstrap --variant=minbase "$suite" "$root" "$(mirror)" >"$CACHE/debootstrap-$suite.log" 2>&1 ||
		{ tail -20 "$CACHE/debootstrap-$suite.log" >&2; die "debootstrap $suite failed"; }
	log "debootstrap $suite: $(($(date +%s) - t0)) s"
	# sid's Release file looks expired to these machines' clocks.
	echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99warren-valid-until"
	# Maintainer scripts must not start the broker (nor anything else).
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 755 "$root/usr/sbin/policy-rc.d"
	cp /etc/resolv.conf "$root/etc/resolv.conf"
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
	t0=$(date +%s)
	# Own pid and mount namespaces: maintainer scripts can neither see nor
	# signal the host's processes (its RabbitMQ service).
	unshare --pid --fork --mount-proc="$root/proc" \
		chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
		sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends rabbitmq-server && apt-get clean' \
		>"$CACHE/install-$suite.log" 2>&1 ||
		{ tail -20 "$CACHE/install-$suite.log" >&2; die "installing rabbitmq-server in $suite failed"; }
	log "rabbitmq-server in $suite: $(($(date +%s) - t0)) s"
	local got
	got=$(chroot "$root" dpkg-query -W -f='${Version}' rabbitmq-server)
	got=${got%%-*}
	case "$got" in
	"$want".*) ;;
	*) die "Debian $suite gives rabbitmq-server $got, not $want.x: pin another suite for $want" ;;
	esac
	rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
	rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
	# The defaults the tests need, in conf.d so that they still apply when
	# testcontainers' RabbitMQ module replaces rabbitmq.conf: guest may log
	# in from outside the container, and the log goes to the console, where
	# the module waits for "Server startup complete".
	mkdir -p "$root/etc/rabbitmq/conf.d"
	printf '%s\n' 'loopback_users = none' 'log.console = true' 'log.console.level = info' 'log.file = false' \
		>"$root/etc/rabbitmq/conf.d/10-defaults.conf"
	# The package's env file may pin a node name; the node is rabbit@HOSTNAME
	# unless RABBITMQ_NODENAME says otherwise.
	echo '# warren: the defaults (node rabbit@HOSTNAME)' >"$root/etc/rabbitmq/rabbitmq-env.conf"
	echo "$got" >"$root/etc/warren-rabbitmq-version"
	tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
	mv "$tarball.tmp" "$tarball"
	echo "$got" >"$tarball.version"
	rm -rf "$root"
}

for v in "${VERSIONS[@]}"; do
	tag=$IMAGE_REPO:$v
	have=$(image_version "$tag")
	if [ -n "$have" ]; then
		case "$have" in
		"$v".*)
			log "image $tag: RabbitMQ $have (present)"
			continue
			;;
		*) die "image $tag holds RabbitMQ $have, not $v.x: remove it (docker rmi $tag) and run again" ;;
		esac
	fi
	suite=$(suite_of "$v")
	tarball=$CACHE/rootfs-$suite.tar
	if [ ! -s "$tarball" ] || [ ! -s "$tarball.version" ]; then
		build_rootfs "$suite" "$v" "$tarball"
	fi
	got=$(cat "$tarball.version")
	case "$got" in
	"$v".*) ;;
	*) die "cached $tarball holds RabbitMQ $got, not $v.x: remove it and run again" ;;
	esac
	t0=$(date +%s)
	docker import \
		-c 'ENV HOME=/var/lib/rabbitmq' \
		-c 'ENV PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		-c 'ENV LANG=C.UTF-8' -c 'ENV LC_ALL=C.UTF-8' \
		-c 'EXPOSE 5672' \
		-c "LABEL $LABEL_VERSION=$got org.warrenmq.debian.suite=$suite" \
		-c 'CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]' \
		- "$tag" <"$tarball" >/dev/null
	log "image $tag: RabbitMQ $got from Debian $suite, imported in $(($(date +%s) - t0)) s"
done
log "ready in $(($(date +%s) - START)) s: ${VERSIONS[*]}"

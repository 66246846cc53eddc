#!/usr/bin/env bash
# Scores daemon/systemd/migd.service with `systemd-analyze security --offline=yes` and fails if
# the overall exposure is above 2.0 (SPEC §10). Installs nothing: CI must have Debian's
# `systemd` package, which ships systemd-analyze (`apt-get install -y systemd`).
set -euo pipefail
cd "$(dirname "$0")/.."
unit=${1:-daemon/systemd/migd.service}
limit=2.0
if ! command -v systemd-analyze >/dev/null; then
    echo "unit-security: systemd-analyze not found (apt-get install -y systemd)" >&2
    exit 1
fi
report=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1) || {
    echo "$report" >&2
    echo "unit-security: systemd-analyze failed on $unit" >&2
    exit 1
}
# Last line: "→ Overall exposure level for migd.service: 1.6 OK 🙂"
exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' | tail -n1)
if [ -z "$exposure" ]; then
    echo "$report" >&2
    echo "unit-security: could not find the overall exposure in systemd-analyze's output" >&2
    exit 1
fi
printf '%s\n' "$report" | grep -E '^✗' || true
echo "unit-security: $unit exposure $exposure (limit $limit)"
if awk -v e="$exposure" -v l="$limit" 'BEGIN { exit !(e > l) }'; then
    echo "unit-security: FAIL: exposure $exposure is above $limit" >&2
    exit 1
fi
echo "unit-security: OK"

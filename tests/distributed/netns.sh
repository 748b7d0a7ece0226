#!/usr/bin/env bash
# Run pytest NODEIDS inside the current (fresh, loopback-only) network namespace:
#   unshare -n bash tests/distributed/netns.sh REPORT.json NODEID...
# Brings up lo, starts a throwaway PostgreSQL here when its binaries exist (the outer one is
# unreachable from inside), runs the tests, stops PostgreSQL. Ray then only ever sees 127.0.0.1.
set -uo pipefail
ip link set lo up
report=$1; shift
here=$(cd "$(dirname "$0")/../.." && pwd)
unset SEMINDEX_TEST_PG_URL
pgdir=$(mktemp -d /tmp/semindex-ray-pg.XXXXXX)
rmdir "$pgdir"
if out=$(bash "$here/scripts/pg.sh" start "$pgdir" 2>/dev/null); then eval "$out"; started=1; else started=0; fi
export SEMINDEX_NETNS=1 SEMINDEX_NETNS_REPORT="$report" PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
"$here/.venv/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" "$@"
rc=$?
if [ "$started" = 1 ]; then bash "$here/scripts/pg.sh" stop "$pgdir" >/dev/null 2>&1; fi
exit $rc

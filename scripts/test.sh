#!/usr/bin/env bash
# Run the test suite the way CI does: `bash scripts/test.sh [PYTEST ARGS]` (what `make test` runs).
#
# The storage, search and API tests run on SQLite *and* PostgreSQL. When $SEMINDEX_TEST_PG_URL is
# not set, this starts a throwaway PostgreSQL cluster on 127.0.0.1 (scripts/pg.sh; it installs
# postgresql with apt-get when missing and running as root), points the tests at it and stops it
# afterwards, whatever happens. A machine that can have no PostgreSQL can say so explicitly:
# SEMINDEX_TEST_PG=skip runs the PostgreSQL variants as skips (as they were before this script).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1
# Bytecode caches on, whatever the environment says: with PYTHONDONTWRITEBYTECODE set (this image
# sets it), every pytest worker re-parses and re-rewrites the ~560 modules of the pytest plugins'
# distributions and every `semindex` subprocess recompiles the package: seconds per run. The
# caches land in __pycache__ folders, which git ignores.
unset PYTHONDONTWRITEBYTECODE

if [ -z "${SEMINDEX_TEST_PG_URL:-}" ] && [ "${SEMINDEX_TEST_PG:-}" != skip ]; then
  PGDIR=$(mktemp -d /tmp/semindex-test-pg.XXXXXX)
  trap 'bash scripts/pg.sh stop "$PGDIR" </dev/null || true' EXIT
  if ! pg_env=$(bash scripts/pg.sh start "$PGDIR" </dev/null); then
    echo "scripts/test.sh: could not start PostgreSQL for the tests (see above); install postgresql," \
         "set SEMINDEX_TEST_PG_URL to a server, or run with SEMINDEX_TEST_PG=skip" >&2
    exit 1
  fi
  eval "$pg_env"
  : "${SEMINDEX_TEST_PG_URL:?scripts/pg.sh did not give a database URL}"
  export SEMINDEX_TEST_PG_URL
  echo "PostgreSQL for the tests: $SEMINDEX_TEST_PG_URL (stopped afterwards)"
fi

# One worker per core (pytest-xdist), whole files per worker (--dist loadfile): module-scoped
# servers and the ordered tests of a file stay together. SEMINDEX_TEST_WORKERS=0 runs in one
# process; a -n in the arguments wins over this default.
WORKERS=${SEMINDEX_TEST_WORKERS:-auto}
# not exec: the trap above must run after pytest to stop the cluster
status=0
"$PY" -m pytest -q -n "$WORKERS" --dist loadfile "$@" || status=$?
exit $status

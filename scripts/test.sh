#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite through real mounts.
# Extra arguments go to pytest (e.g. scripts/test.sh -k locks -x).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/setup.sh"
venv="${AGENTFS_VENV:-/opt/agentfs/venv}"
cd "$here"
set +e
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
# pytest's 5 means no test ran: never a success.
[ "$rc" = 5 ] && echo "test.sh: no tests ran" >&2
exit "$rc"

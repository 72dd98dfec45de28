#!/usr/bin/env bash
# Stops whatever infra/up.sh (or the individual scripts) started: Kafka in either mode and the
# private PostgreSQL. Servers that were already running before (not started by these scripts)
# are left alone. Data is kept; use `kafka.sh reset [--cluster]` / `postgres.sh reset` to wipe.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Keep going if one part fails so a broken Kafka never leaves PostgreSQL running, but still
# report the failure through the exit code.
rc=0
"$here/kafka.sh" stop || rc=1
"$here/kafka.sh" stop --cluster || rc=1
"$here/postgres.sh" stop || rc=1
exit $rc

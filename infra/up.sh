#!/usr/bin/env bash
# Starts everything feedline's services and tests need: PostgreSQL, then Kafka.
#   infra/up.sh [--cluster]    --cluster runs the 3-broker Kafka cluster instead of one broker
# Both steps are idempotent, so re-running after a partial failure is safe.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

kafka_args=()
case ${1:-} in
  "") ;;
  --cluster) kafka_args=(--cluster) ;;
  *) echo "usage: infra/up.sh [--cluster]" >&2; exit 2 ;;
esac

pg_url=$("$here/postgres.sh" start)
bootstrap=$("$here/kafka.sh" start "${kafka_args[@]}")

echo
echo "DATABASE_URL=$pg_url"
echo "KAFKA_BOOTSTRAP_SERVERS=$bootstrap"

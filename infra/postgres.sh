#!/usr/bin/env bash
# Local PostgreSQL for feedline development and tests, without Docker or systemd.
#
#   infra/postgres.sh start    install Debian's postgresql if missing, run it on 127.0.0.1:5432,
#                              ensure role feedline/feedline (LOGIN CREATEDB) and its databases
#   infra/postgres.sh stop     stop the server only if this script started it
#   infra/postgres.sh status   exit 0 if 5432 accepts connections, 3 if not
#   infra/postgres.sh reset    stop and wipe the private data directory
#
# FEEDLINE_PG_PORT=15432 runs a second private cluster on that port, with its own data under
# $FEEDLINE_STATE/postgres-15432 (for fault tests that restart PostgreSQL).
#
# The server is a private cluster under $FEEDLINE_STATE/postgres (not the Debian "main" cluster),
# so it never touches system databases. If something else already serves 127.0.0.1:5432 it is
# reused: the role and databases are ensured there and it is never stopped by this script.
#
#   postgres://feedline:feedline@127.0.0.1:5432/feedline   (also /orders and /customers)
set -euo pipefail

readonly HOST=127.0.0.1
# Another port is another private cluster (its own data, log and lock), so a fault test can
# stop and restart it without touching the server on 5432 that everyone else uses.
readonly PORT=${FEEDLINE_PG_PORT:-5432}
[[ $PORT =~ ^[0-9]+$ ]] || { echo "[postgres] ERROR: FEEDLINE_PG_PORT must be a port number, got '$PORT'" >&2; exit 2; }
readonly ROLE=feedline
readonly PASSWORD=feedline
readonly DATABASES=(feedline orders customers)

readonly STATE_ROOT=${FEEDLINE_STATE:-/tmp/feedline-infra}
if (( PORT == 5432 )); then readonly PG_STATE=$STATE_ROOT/postgres; else readonly PG_STATE=$STATE_ROOT/postgres-$PORT; fi
readonly DATA=$PG_STATE/data
readonly SOCKET_DIR=$PG_STATE/run
readonly LOGFILE=$PG_STATE/postgres.log
readonly START_TIMEOUT=${FEEDLINE_PG_START_TIMEOUT:-60}

say() { echo "[postgres] $*" >&2; }
die() { echo "[postgres] ERROR: $*" >&2; exit 1; }

# PostgreSQL refuses to run as root, so as root everything runs as the Debian `postgres` user;
# as an ordinary user the cluster simply belongs to that user.
if (( EUID == 0 )); then
  PG_USER=postgres
  as_pg() { runuser -u postgres -- "$@"; }
else
  PG_USER=$(id -un)
  as_pg() { "$@"; }
fi

# ---------------------------------------------------------------------------------------------
# Binaries

installed_versions() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/pg_ctl && -x $d/initdb ]] && basename "$(dirname "$d")"
  done | sort -V
}

install_postgres() {
  (( EUID == 0 )) || die "PostgreSQL is not installed; run this as root or: sudo apt-get install -y postgresql"
  command -v apt-get >/dev/null || die "PostgreSQL is not installed and apt-get is unavailable"
  say "PostgreSQL not found; installing Debian's postgresql package ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The server package normally creates and (without systemd, via the init script) starts a
  # default "main" cluster on 5432, which would then shadow our private cluster. Turning that
  # off first is what the official postgres Docker image does too. Only done when we are the
  # ones installing postgresql-common, so an admin's existing choice is respected.
  if ! dpkg-query -W -f='${Status}' postgresql-common 2>/dev/null | grep -q 'install ok installed'; then
    apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
    sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf
  fi
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  [[ -n $(installed_versions) ]] || die "installed postgresql but found no server binaries under /usr/lib/postgresql"
}

# Picks the binaries: the data directory's own major version if it exists (a cluster can only be
# run by its major version), else the newest installed. Only `start` may install; for the other
# commands a missing installation just means "nothing of ours can be running" (returns 1).
select_bin() {
  local versions want
  versions=$(installed_versions)
  if [[ -z $versions ]]; then
    [[ ${1:-} == --install ]] || return 1
    install_postgres
    versions=$(installed_versions)
  fi
  if [[ -f $DATA/PG_VERSION ]]; then
    want=$(cat "$DATA/PG_VERSION")
    grep -qx "$want" <<<"$versions" ||
      die "$DATA was created by PostgreSQL $want, which is not installed (have: ${versions//$'\n'/ }); run 'infra/postgres.sh reset'"
  else
    want=$(tail -n 1 <<<"$versions")
  fi
  PG_VERSION=$want
  PG_BIN=/usr/lib/postgresql/$want/bin
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null; }

ours_running() {
  [[ -f $DATA/PG_VERSION ]] || return 1
  as_pg "$PG_BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
# Private cluster

init_cluster() {
  [[ -f $DATA/PG_VERSION ]] && return 0
  mkdir -p "$PG_STATE"
  chown "$PG_USER": "$PG_STATE"
  chmod 700 "$PG_STATE"
  # initdb runs as $PG_USER, which must be able to reach the state dir (e.g. not under /root).
  as_pg test -w "$PG_STATE" ||
    die "user '$PG_USER' cannot write $PG_STATE; set FEEDLINE_STATE to a directory it can reach (e.g. /tmp/feedline-infra)"
  say "initialising a private PostgreSQL $PG_VERSION cluster in $DATA"
  # Local socket: trust is safe because the socket lives in a 0700 directory only $PG_USER (and
  # root) can enter. TCP: passwords (scram) so apps connect exactly as they would in production.
  as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C >"$PG_STATE/initdb.log" 2>&1 ||
    { cat "$PG_STATE/initdb.log" >&2; die "initdb failed"; }
  echo "include_if_exists = 'feedline.conf'" | as_pg tee -a "$DATA/postgresql.conf" >/dev/null
}

write_conf() {
  as_pg mkdir -p -m 700 "$SOCKET_DIR"
  # Rewritten on every start so changes here apply to existing clusters too.
  as_pg tee "$DATA/feedline.conf" >/dev/null <<EOF
# Generated by infra/postgres.sh -- edits are overwritten on start.
listen_addresses = '$HOST'
port = $PORT
unix_socket_directories = '$SOCKET_DIR'
# Tests create a database per test and run in parallel; the default 100 runs out quickly.
max_connections = 200
EOF
}

start_private() {
  init_cluster
  write_conf
  say "starting PostgreSQL $PG_VERSION on $HOST:$PORT (log: $LOGFILE)"
  as_pg touch "$LOGFILE"
  # pg_ctl daemonises postgres itself (no systemd needed) and -w waits for it to accept connections.
  if ! as_pg "$PG_BIN/pg_ctl" start -D "$DATA" -l "$LOGFILE" -w -t "$START_TIMEOUT" -s; then
    tail -n 30 "$LOGFILE" >&2 || true
    die "PostgreSQL failed to start"
  fi
}

wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$PG_BIN/pg_isready" -h "$HOST" -p "$PORT" -q; do
    if (( SECONDS >= deadline )); then
      tail -n 30 "$LOGFILE" >&2 2>/dev/null || true
      die "$HOST:$PORT not ready after ${START_TIMEOUT}s"
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------------------------
# Role and databases

printf -v DB_LIST "'%s'," "${DATABASES[@]}"
DB_LIST=${DB_LIST%,}
# Idempotent: re-running only resets the password/attributes/owners to the known values.
# (CREATE DATABASE cannot run inside a DO block, hence psql's \gexec.)
ENSURE_SQL="
SELECT 'CREATE ROLE $ROLE' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$ROLE') \\gexec
ALTER ROLE $ROLE WITH LOGIN CREATEDB PASSWORD '$PASSWORD';
SELECT format('CREATE DATABASE %I OWNER $ROLE', d) FROM unnest(ARRAY[$DB_LIST]) AS d
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d) \\gexec
SELECT format('ALTER DATABASE %I OWNER TO $ROLE', d) FROM unnest(ARRAY[$DB_LIST]) AS d \\gexec
"

ensure_role_private() {
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres \
    <<<"$ENSURE_SQL" >/dev/null
}

# On a server we did not start we can only use whatever access is available, in this order:
# an explicit admin URL, the Debian default cluster's peer-authenticated socket (as root), or
# the feedline role itself (which can still create its missing databases thanks to CREATEDB).
ensure_role_foreign() {
  if [[ -n ${FEEDLINE_PG_ADMIN_URL:-} ]]; then
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$FEEDLINE_PG_ADMIN_URL" <<<"$ENSURE_SQL" >/dev/null
    return
  fi
  if (( EUID == 0 )) && [[ -S /var/run/postgresql/.s.PGSQL.$PORT ]] &&
     runuser -u postgres -- "$PG_BIN/psql" -X -q -h /var/run/postgresql -p "$PORT" -d postgres -c 'select 1' >/dev/null 2>&1; then
    runuser -u postgres -- "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$PORT" -d postgres \
      <<<"$ENSURE_SQL" >/dev/null
    return
  fi
  local url="postgres://$ROLE:$PASSWORD@$HOST:$PORT/postgres" d
  if "$PG_BIN/psql" -X -q "$url" -c 'select 1' >/dev/null 2>&1; then
    for d in "${DATABASES[@]}"; do
      if [[ -z $("$PG_BIN/psql" -X -qtA "$url" -c "select 1 from pg_database where datname = '$d'") ]]; then
        "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$url" -c "create database \"$d\"" >/dev/null
      fi
    done
    return
  fi
  die "cannot get admin access to the server on $HOST:$PORT to create role '$ROLE'; set FEEDLINE_PG_ADMIN_URL=postgres://<superuser>:<pw>@$HOST:$PORT/postgres or stop that server"
}

check_login() {
  local url="postgres://$ROLE:$PASSWORD@$HOST:$PORT/feedline" maxconn
  maxconn=$("$PG_BIN/psql" -X -qtA "$url" -c 'show max_connections') ||
    die "role '$ROLE' cannot log in at $url"
  (( maxconn >= 200 )) || say "warning: server max_connections is $maxconn (< 200); parallel tests may run out of connections"
}

# ---------------------------------------------------------------------------------------------
# Commands

lock() {
  mkdir -p "$STATE_ROOT"
  exec 9>"$STATE_ROOT/$(basename "$PG_STATE").lock"
  flock -w 120 9 || die "another postgres.sh is busy"
}

cmd_start() {
  lock
  select_bin --install
  if ours_running; then
    say "already running (private cluster in $DATA)"
    wait_ready
    ensure_role_private
  elif port_open; then
    say "$HOST:$PORT is served by a PostgreSQL not started by postgres.sh; reusing it (it will not be stopped by this script)"
    wait_ready
    ensure_role_foreign
  else
    local t0=$SECONDS
    start_private 9>&-
    wait_ready
    ensure_role_private
    say "ready in $((SECONDS - t0))s"
  fi
  check_login
  say "role '$ROLE' and databases ${DATABASES[*]} ready; connect with:"
  echo "postgres://$ROLE:$PASSWORD@$HOST:$PORT/feedline"
}

cmd_stop() {
  lock
  if select_bin && ours_running; then
    say "stopping the private cluster ($DATA)"
    # fast = roll back open transactions and disconnect clients; tests never need a smart wait.
    as_pg "$PG_BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 30 -s ||
      as_pg "$PG_BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 30 -s
    say "stopped; data kept in $DATA (use 'reset' to wipe)"
  elif port_open; then
    say "$HOST:$PORT is not served by postgres.sh's cluster; leaving it alone"
  else
    say "not running"
  fi
}

cmd_status() {
  if ! select_bin; then
    echo "postgres: not installed$(port_open && echo ", but $HOST:$PORT accepts connections")"
    port_open && return 0
    return 3
  fi
  if ours_running && "$PG_BIN/pg_isready" -h "$HOST" -p "$PORT" -q; then
    echo "postgres: up (private cluster, PostgreSQL $PG_VERSION, data $DATA, log $LOGFILE)"
    echo "postgres://$ROLE:$PASSWORD@$HOST:$PORT/feedline"
    return 0
  elif ours_running; then
    echo "postgres: private cluster running but $HOST:$PORT not accepting connections (log $LOGFILE)"
    return 3
  elif "$PG_BIN/pg_isready" -h "$HOST" -p "$PORT" -q; then
    echo "postgres: up on $HOST:$PORT (not started by postgres.sh)"
    return 0
  fi
  echo "postgres: stopped"
  return 3
}

cmd_reset() {
  cmd_stop
  rm -rf "$PG_STATE"
  say "wiped $PG_STATE"
}

case ${1:-} in
  start)  cmd_start ;;
  stop)   cmd_stop ;;
  status) cmd_status ;;
  reset)  cmd_reset ;;
  *) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac

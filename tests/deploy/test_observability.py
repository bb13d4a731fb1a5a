"""deploy/grafana/dashboard.json and deploy/prometheus/alerts.yml against what the bridge exports.

Every metric name in a PromQL expression of the dashboard (panel targets, template queries) and of
the alert rules must be a series the bridge's real ``/metrics`` output has: the output of the
observability server (:class:`~bridge.runtime.observe.ObserveServer`, with prometheus_client's
process collectors) over a snapshot in which every optional family is present. A renamed or
misspelled metric fails here instead of leaving an empty panel or an alert that never fires.
With ``promtool`` installed (Debian package ``prometheus``) the rules are also checked by it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bridge.runtime.observe import ObserveServer
from bridge.runtime.stats import Health, Snapshot
from tests.observe_rig import address_rich_snapshot

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

#: series Prometheus makes itself for every target
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, label names and values,
    durations and numbers left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m.group(1) for m in _IDENT.finditer(text)
            if not m.group(2) and m.group(1).lower() not in _KEYWORDS}


def test_promql_metric_names() -> None:
    expr = ('sum by (instance, job) (rate(ktb_dial_failures_total{reason!="kaspad", a=~"x|y"}'
            '[30m])) / on(instance) group_left(version) ktb_build_info > 1e9 and '
            'histogram_quantile(0.99, sum by (le) (rate(foo_bucket[$__rate_interval]))) > 2.5 '
            'unless bar offset 5m')
    assert promql_metric_names(expr) == {"ktb_dial_failures_total", "ktb_build_info",
                                         "foo_bucket", "bar"}
    assert promql_metric_names("up{job=\"kaspa-tor-bridge\"} == 0") == {"up"}


def exported_names(snap: Snapshot) -> set[str]:
    """The series names of the bridge's /metrics for ``snap`` (the real renderer)."""
    class Source:
        def snapshot(self) -> Snapshot:
            return snap

        def health(self) -> Health:
            return snap.health

    server = ObserveServer(Source(), "127.0.0.1", 0)
    raw = server.respond(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    # sample names only: a counter's family name (without _total) or a histogram's (without
    # _bucket/_sum/_count) selects no series in Prometheus
    return {s.name for fam in text_string_to_metric_families(body.decode())
            for s in fam.samples}


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _walk_panels(p.get("panels", []))


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template query."""
    out = []
    for p in _walk_panels(dash["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
        out.append((f"variable {var['name']}", m.group(1) if m else query))
    return out


def alert_exprs(rules: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


def _unknown(exprs: list[tuple[str, str]], known: set[str]) -> list[tuple[str, str]]:
    return [(where, name) for where, expr in exprs for name in sorted(promql_metric_names(expr))
            if name not in known and name not in PROMETHEUS_OWN]


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    known = exported_names(address_rich_snapshot())
    dash = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = dashboard_exprs(dash) + alert_exprs(rules)
    assert not _unknown(exprs, known), "metrics the bridge does not export"
    used = set().union(*(promql_metric_names(e) for _, e in exprs))
    # what operators need most is there (and the extraction found it)
    for name in ("ktb_healthy", "ktb_tor_usable", "ktb_tor_onion_published", "ktb_slots_filled",
                 "ktb_dial_duration_seconds_bucket", "ktb_relay_message_latency_seconds_bucket",
                 "ktb_tor_usable_to_warm_seconds_bucket", "ktb_first_warm_upstream_seconds",
                 "ktb_build_info", "process_resident_memory_bytes", "ktb_dial_failures_total"):
        assert name in used, name
    # and the check bites: a misspelled name is reported
    assert _unknown([("x", "ktb_slots_filed == 0")], known) == [("x", "ktb_slots_filed")]
    assert _unknown([("x", "ktb_info")], known) == []  # (deprecated, still exported)
    assert "ktb_info" not in used, "the dashboard and rules use ktb_build_info"


def test_dashboard_is_a_grafana_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    panels = list(_walk_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for p in panels:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            assert t["refId"] and t["expr"]
            # every query is scoped to the chosen bridges
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    names = set()
    for group in rules["groups"]:
        assert group["name"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
            assert r["labels"]["severity"] in ("critical", "warning", "info")
            assert r["annotations"]["summary"] and r["annotations"]["description"]
            if "for" in r:
                assert re.fullmatch(r"\d+[smhd]", r["for"])
            names.add(r["alert"])
    assert {"KaspaTorBridgeDown", "KaspaTorBridgeTorNotUsable", "KaspaTorBridgeOnionNotPublished",
            "KaspaTorBridgeNoFilledSlots", "KaspaTorBridgeHighDialFailureRatio",
            "KaspaTorBridgeRSSGrowth"} <= names


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by what they stand for."""
    return (expr.replace("$__rate_interval", "1m").replace("$job", ".*")
            .replace("$instance", ".*"))


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package prometheus)")
def test_promtool_checks_the_rules_and_the_dashboard_queries(tmp_path: Path) -> None:
    """The alert rules as they are, and every dashboard query as a recording rule (promtool
    parses both with Prometheus' own PromQL parser)."""
    promtool = shutil.which("promtool")
    assert promtool is not None
    run = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    dash = json.loads(DASHBOARD.read_text())
    queries = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
               for i, (_, expr) in enumerate(dashboard_exprs(dash))]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    run = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr

"""The alert rules (charts/polyvivid-operator/files/alerts.yaml) pass `promtool check rules`, and
`promtool test rules` runs their unit tests (alerts.test.yaml: each alert fires when it should, with its
labels and text, and stays quiet when it should). promtool comes from Debian's prometheus package
(`make setup` unpacks it into .venv/bin)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .promql import FILES

HERE = Path(__file__).resolve().parent


def promtool() -> str:
    beside = Path(sys.executable).parent / "promtool"
    found = str(beside) if beside.exists() else shutil.which("promtool")
    assert found, "promtool is missing: run scripts/install_promtool.sh .venv/bin (make setup does)"
    return found


def run(*args: str, cwd: Path = HERE) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules():
    result = run("check", "rules", str(FILES / "alerts.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = run("test", "rules", "alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_expects_it_to_fire():
    rules = yaml.safe_load((FILES / "alerts.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((HERE / "alerts.test.yaml").read_text())["tests"]
    firing = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert alerts == firing


def test_a_wrong_expectation_fails(tmp_path):
    """The unit tests can fail: the same file with the stalled alert expected an hour early does."""
    tests = yaml.safe_load((HERE / "alerts.test.yaml").read_text())
    tests["rule_files"] = [str(FILES / "alerts.yaml")]
    first = tests["tests"][0]["alert_rule_test"]
    first[1]["exp_alerts"] = first[2]["exp_alerts"]  # 75m: not yet firing in truth
    (tmp_path / "wrong.test.yaml").write_text(yaml.safe_dump(tests))
    result = run("test", "rules", "wrong.test.yaml", cwd=tmp_path)
    assert result.returncode != 0 and "PolyVividTrainingStalled" in result.stdout + result.stderr

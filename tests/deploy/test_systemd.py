"""The systemd unit (deploy/systemd): it asks for exactly the capabilities the chart does, verifies
with systemd-analyze where systemd is installed, and the install script parses."""

import re
import shutil
import subprocess

import pytest
import yaml

from conftest import CHART, ROOT

UNIT = ROOT / "deploy" / "systemd" / "tollgate.service"


def unit_values(key):
    return [l.split("=", 1)[1].split() for l in UNIT.read_text().splitlines() if l.startswith(key + "=")]


def test_the_unit_grants_the_charts_capabilities_and_nothing_else(renderer):
    (ambient,) = unit_values("AmbientCapabilities")
    (bounding,) = unit_values("CapabilityBoundingSet")
    r = subprocess.run([str(renderer), str(CHART), "--set", "secrets.adminToken=x"], capture_output=True, text=True, check=True)
    (ds,) = [d for d in yaml.safe_load_all(r.stdout) if d and d["kind"] == "DaemonSet"]
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    want = sorted("CAP_" + cap for cap in c["securityContext"]["capabilities"]["add"])
    assert len(want) == 3
    assert sorted(ambient) == want and sorted(bounding) == want
    text = UNIT.read_text()
    for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "User=tollgate", "ProtectHome=yes"]:
        assert hardening in text
    # The stop timeout covers the default shutdown grace (30 s) with a margin.
    assert int(re.search(r"TimeoutStopSec=(\d+)", text).group(1)) > 30


def test_systemd_analyze_verifies_the_unit(tollgate_bin, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = tmp_path / "tollgate.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tollgate", str(tollgate_bin)))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # Lines about other units on this host are not the unit's problem.
    own = [l for l in (r.stdout + r.stderr).splitlines() if "tollgate.service" in l]
    assert r.returncode == 0 and not own, r.stdout + r.stderr


def test_the_install_script_parses():
    r = subprocess.run(["sh", "-n", str(ROOT / "deploy" / "systemd" / "install.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

"""Shared fixtures for the deployment checks: the chart renderer and the agent binary."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tollgate"


def target_dir() -> pathlib.Path:
    t = os.environ.get("CARGO_TARGET_DIR")
    return ROOT / t if t else ROOT / "target"


@pytest.fixture(scope="session")
def renderer() -> pathlib.Path:
    """Builds deploy/helm/render (Go text/template + Sprig, Helm's engine) once per run."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("`go` is not installed (apt-get install golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev); `cargo xtask test` installs it")
    out = target_dir() / "helm-render"
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="", GOCACHE=str(target_dir() / "go-cache"))
    subprocess.run([go, "build", "-o", str(out), "./deploy/helm/render"], cwd=ROOT, env=env, check=True)
    return out


@pytest.fixture(scope="session")
def tollgate_bin() -> pathlib.Path:
    bin_dir = pathlib.Path(os.environ.get("TOLLGATE_BIN_DIR", target_dir() / "debug"))
    path = bin_dir / "tollgate"
    if not path.exists():
        pytest.fail(f"{path} does not exist: build it with `cargo build -p tollgate`")
    return path

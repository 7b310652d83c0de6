"""The packages install with pip alone, as a new user installs them: from a clean export of the repository (the
files git tracks, no make, no generated stubs), into fresh virtual environments.

- `pip install ./client`: the client alone, no torch; its seq2seq-client translates through a running server, and a
  console script whose extra is missing says in one line which extra to install.
- `pip install .` then `pip install ".[serve]"` (torch first, as README says): seq2seq-serve without its extra says
  which extra; with it, it starts from another directory with the shipped model (package data).

Minutes, not seconds (pip builds the stubs and installs the dependencies; pip's cache makes reruns faster).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """The repository as a user gets it: tracked files (and new ones not ignored), nothing generated."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    out = tmp_path_factory.mktemp("export") / "repo"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, out / name)
    assert not list(out.rglob("*_pb2*.py")), "the export must hold no generated stubs"
    return out


def venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin"


def pip(bin_dir: Path, *args: str) -> None:
    r = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]


def run(bin_dir: Path, script: str, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQ2SEQ_")}
    return subprocess.run([str(bin_dir / script), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env)


def serving(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def serve_venv(export, tmp_path_factory) -> Path:
    """`pip install torch==2.13.0`, then the project without extras (for the missing-extra test), then [serve]."""
    bin_dir = venv(tmp_path_factory.mktemp("serve") / "venv")
    pip(bin_dir, "torch==2.13.0")
    pip(bin_dir, str(export))
    return bin_dir


def test_a_console_script_without_its_extra_names_the_extra_in_one_line(serve_venv, tmp_path):
    r = run(serve_venv, "seq2seq-serve", cwd=tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "seq2seq-serve: error:" in lines[0] and "seq2seq-fr-en[serve]" in lines[0], r.stderr


def test_the_serve_extra_starts_from_any_directory_with_the_shipped_model(serve_venv, export, tmp_path):
    pip(serve_venv, f"{export}[serve]")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQ2SEQ_")}
    server = subprocess.Popen([str(serve_venv / "seq2seq-serve"), "--port", str(port), "--metrics-port", "-1",
                               "--log-format", "text"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert serving(port, 120), server.stderr.read() if server.poll() is not None else "not SERVING in 120 s"
        r = run(serve_venv, "seq2seq-client", "--server", f"127.0.0.1:{port}", "Un homme fait du vélo.", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "man" in r.stdout.lower(), r.stdout
        model = subprocess.run([str(serve_venv / "python"), "-c",
                                "from seq2seq.checkpoint import default_model; print(default_model())"],
                               capture_output=True, text=True, cwd=tmp_path, check=True).stdout.strip()
        assert "site-packages" in model and model.endswith("fr-en-small"), model  # the installed copy, not ROOT
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture(scope="module")
def server_port(tmp_path_factory):
    """A server of this checkout (shipped model) for the client-alone test."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), "--metrics-port", "-1"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert serving(port, 120)
    yield port
    proc.terminate()
    proc.wait(30)


def test_the_client_alone_installs_without_torch_and_translates(export, server_port, tmp_path):
    bin_dir = venv(tmp_path / "venv")
    pip(bin_dir, str(export / "client"))
    freeze = subprocess.run([str(bin_dir / "python"), "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    assert "torch" not in freeze and "seq2seq-client" in freeze, freeze
    r = run(bin_dir, "seq2seq-client", "--server", f"127.0.0.1:{server_port}", "Un chien court dans l'herbe.",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "dog" in r.stdout.lower(), r.stdout
    # the web gateway's extra (aiohttp) is not installed: one line that names it
    r = run(bin_dir, "seq2seq-web", cwd=tmp_path)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "seq2seq-client[web]" in r.stderr, r.stderr

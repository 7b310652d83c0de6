"""The bundle of the GPU check (issue 24, scripts/gpu_check.sh): one ignored folder, made here, with what the bare
device machine lacks. It travels with the call by `carry`; ../shared does not travel, and the machine has no network.

    python scripts/gpu_bundle.py [--bundle .gpu-bundle] [--data ../shared/data]     # `make gpu-bundle`
    python3 scripts/gpu_bundle.py --bundle .gpu-bundle --install-into /tmp/site      # on the device

    wheels/    cp312 manylinux wheels of the runtime needs its image may lack or hold too old, at the versions
               installed in the Python running this (the project's venv: what the CPU tests pass with)
    stubs/     the generated gRPC stubs (client/seq2seq_api/translation/, made by the install; ignored by git)
    data/      the corpora the check reads, copied from ../shared/data
    MANIFEST.json  versions, files, what the stubs need, what the wheels need from the image

A wheel or corpus already there is not fetched again. The bundle is checked by installing its wheels with the
command the device runs, for a CPython 3.12 on manylinux x86_64 (pip's --python-version), into a scratch folder.
Prints the bundle's size and the size of the whole tree a device call sends; fails past their limits.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
# Not in the device image (KINDS.md): datasets and its exact pins dill, multiprocess, fsspec; sentence-splitter;
# grpcio-health-checking and -reflection. In it, maybe older than the stubs need: grpcio, protobuf.
WHEELS = ("datasets", "dill", "multiprocess", "fsspec", "sentence-splitter", "grpcio", "grpcio-health-checking",
          "grpcio-reflection", "protobuf")
CORPORA = ("multi30k/train", "multi30k/val", "multi30k/test_2016_flickr", "multi30k/test_2017_flickr",
           "tatoeba/train", "tatoeba/test_v2021-08-07")  # each PREFIX.fr.gz + PREFIX.en.gz
MONOLINGUAL = ("multi30k/train_captions.en.gz",)  # what the pipeline back-translates
STUBS = ROOT / "client" / "seq2seq_api" / "translation"
# pip's tags for the device's python3: CPython 3.12 (Ubuntu 24.04, glibc 2.39) on x86-64
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"] + [
    arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                    "manylinux1_x86_64") for arg in ("--platform", tag)]
MIB = 2 ** 20
BUNDLE_LIMIT, TREE_LIMIT = 40 * MIB, 64 * MIB  # the and the device tool's


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stub_needs(stubs: Path) -> dict[str, str]:
    """The grpcio and protobuf versions the generated code checks for at import (its header lines)."""
    grpc_code = (stubs / "v1" / "translator_pb2_grpc.py").read_text()
    pb_code = (stubs / "v1" / "translator_pb2.py").read_text()
    return {"grpcio": re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_code).group(1),
            "protobuf": re.search(r"# Protobuf Python Version: ([\d.]+)", pb_code).group(1)}


def fetch_wheels(folder: Path) -> dict[str, dict]:
    """One wheel per name in WHEELS, at the version installed here; other versions and other wheels are removed
    (two versions of one name stop the device's install)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {canonicalize_name(n): importlib.metadata.version(n) for n in WHEELS}
    for path in folder.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        if wanted.get(name) != str(version):
            path.unlink()
    have = {parse_wheel_filename(p.name)[0] for p in folder.glob("*.whl")}
    missing = [f"{n}=={v}" for n, v in wanted.items() if n not in have]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *TARGET,
                        "-d", str(folder), *missing], check=True)
    wheels = {}
    for path in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        wheels[name] = {"version": str(version), "file": path.name, "sha256": sha256(path)}
    return wheels


def copy_corpora(data: Path, folder: Path) -> dict[str, str]:
    files = [f"{c}.{lang}.gz" for c in CORPORA for lang in ("fr", "en")] + list(MONOLINGUAL)
    copied = {}
    for rel in files:
        source, target = data / rel, folder / rel
        if not source.is_file():
            raise SystemExit(f"gpu_bundle.py: {source} is missing (the corpora are read from --data)")
        if not target.is_file() or sha256(target) != sha256(source):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        copied[rel] = sha256(target)
    return copied


def install(wheels: Path, site: Path, target: list[str]) -> None:
    """The device's install command (with `target`, pip installs for that Python instead of this one)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--only-binary=:all:", *target, "--target", str(site),
                    *map(str, sorted(wheels.glob("*.whl")))], check=True)


def check(bundle: Path, manifest: dict) -> None:
    """The wheels install as one set for CPython 3.12, at the manifest's versions; they meet the stubs' needs and
    each other's requirements."""
    with tempfile.TemporaryDirectory() as site:
        install(bundle / "wheels", Path(site), TARGET)
        installed = {canonicalize_name(d.metadata["Name"]): d.version
                     for d in importlib.metadata.distributions(path=[site])}
    versions = {n: w["version"] for n, w in manifest["wheels"].items()}
    if installed != versions:
        raise SystemExit(f"gpu_bundle.py: installed {installed}, the manifest says {versions}")
    for name, floor in manifest["stubs_need"].items():
        if Requirement(f"{name}>={floor}").specifier.contains(versions[name]) is False:
            raise SystemExit(f"gpu_bundle.py: the stubs need {name} >= {floor}, the bundle has {versions[name]}")
    for name, spec in manifest["requires"].items():
        if name in versions and not Requirement(f"{name}{spec}").specifier.contains(versions[name]):
            raise SystemExit(f"gpu_bundle.py: the wheels need {name}{spec}, the bundle has {versions[name]}")


def requirements(wheels: Path) -> dict[str, str]:
    """name -> what the bundled wheels require of it on the device (extras left out), all requirers together."""
    specs: dict[str, set[str]] = {}
    for path in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(path) as z:
            metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        for line in metadata.splitlines():
            if line.startswith("Requires-Dist:"):
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is None or req.marker.evaluate({"extra": "", "python_version": "3.12"}):
                    specs.setdefault(canonicalize_name(req.name), set()).add(str(req.specifier))
    return {name: ",".join(sorted(s for s in spec if s)) for name, spec in sorted(specs.items())}


def size(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def tree_size(bundle: Path) -> int:
    """What a device call sends: tracked and untracked-not-ignored files (git's view), plus the carried bundle."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return size(ROOT / p for p in listed if p) + size(bundle.rglob("*"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(ROOT / ".gpu-bundle"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--install-into", metavar="SITE", help="install the bundle's wheels for this Python there (the "
                   "device; then PYTHONPATH=SITE), and do nothing else")
    args = p.parse_args()
    bundle = Path(args.bundle)
    if args.install_into:
        return install(bundle / "wheels", Path(args.install_into), [])
    if not (STUBS / "v1" / "translator_pb2.py").is_file():
        raise SystemExit(f"gpu_bundle.py: no stubs in {STUBS}: `make venv` generates them")
    shutil.rmtree(bundle / "stubs", ignore_errors=True)
    shutil.copytree(STUBS, bundle / "stubs" / "translation", ignore=shutil.ignore_patterns("__pycache__"))
    manifest = {"wheels": fetch_wheels(bundle / "wheels"), "stubs_need": stub_needs(STUBS),
                "requires": requirements(bundle / "wheels"), "corpora": copy_corpora(Path(args.data), bundle / "data")}
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    check(bundle, manifest)
    total, tree = size(bundle.rglob("*")), tree_size(bundle)
    parts = ", ".join(f"{d} {size((bundle / d).rglob('*')) / MIB:.1f}" for d in ("wheels", "data", "stubs"))
    print(f"bundle {bundle}: {total / MIB:.1f} MiB ({parts}); {len(manifest['wheels'])} wheels for CPython 3.12 "
          f"install as one set; the tree a device call sends with it: {tree / MIB:.1f} MiB")
    if total > BUNDLE_LIMIT or tree > TREE_LIMIT:
        raise SystemExit(f"gpu_bundle.py: over the limits ({BUNDLE_LIMIT // MIB} MiB bundle, {TREE_LIMIT // MIB} MiB "
                         "tree)")


if __name__ == "__main__":
    main()

# The build step that generates the gRPC stubs lives in client/stubs_build.py (the client distribution uses it too);
# everything else is in pyproject.toml.
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "client"))
from stubs_build import BuildPyWithStubs  # noqa: E402

setup(cmdclass={"build_py": BuildPyWithStubs})

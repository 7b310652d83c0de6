# The build step lives in stubs_build.py (shared with the repository's pyproject.toml); the rest is pyproject.toml.
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stubs_build import BuildPyWithStubs  # noqa: E402

setup(cmdclass={"build_py": BuildPyWithStubs})

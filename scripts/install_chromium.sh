#!/bin/sh
# Headless Chromium for the attention viewer's browser test (tests/test_attention_maps.py): Debian's chromium, the
# chromedriver of the same version, and a font for the screenshot. selenium itself comes from the test extra
# (pip install -e '.[test]'); the test hands it both paths, so it never downloads a driver.
set -eu
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core
chromium --version
chromedriver --version

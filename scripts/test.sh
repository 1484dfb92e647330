#!/usr/bin/env bash
# The README's test command: installs what the tests drive besides the Rust
# toolchain, when it is missing, then runs every test.
#   - schemathesis (PyPI, pinned) into target/test-tools/venv, for
#     tests/openapi_fuzz.rs;
#   - Debian's chromium and chromium-driver (apt-get), for tests/web.rs;
#   - Debian's nats-server (apt-get), for tests/jetstream.rs;
#   - Debian's python3-cryptography (apt-get), for the AES in
#     docs/integrity.md's verifier, which a unit test runs.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=target/test-tools/venv

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
apt_install() {
    echo "== installing Debian's $*"
    $SUDO apt-get install -y -q "$@" \
        || { $SUDO apt-get update -q && $SUDO apt-get install -y -q "$@"; }
}

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    apt_install chromium chromium-driver
fi
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    apt_install nats-server
fi
if ! python3 -c "import cryptography" 2>/dev/null; then
    apt_install python3-cryptography
fi

exec cargo test --all-features "$@"

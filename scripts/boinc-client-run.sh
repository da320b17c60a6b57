#!/usr/bin/env bash
# Run one job of an app version directory under the real BOINC client (Debian boinc-client),
# without a project server. Usage: scripts/boinc-client-run.sh APP_DIR [options]
# (options: python -m vmwrapper.boincclient --help). Installs what is missing first.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/install-deps.sh"
[ -x "$ROOT/.venv/bin/python" ] || make -C "$ROOT" venv >/dev/null
exec "$ROOT/.venv/bin/python" -m vmwrapper.boincclient "$@"

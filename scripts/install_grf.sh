#!/usr/bin/env bash
# Install Google Research Football (gfootball) into the current Python environment.
#
# Usage:  scripts/install_grf.sh            # uses $PYTHON, else the `python` on PATH (activate your venv)
#         PYTHON=.venv/bin/python scripts/install_grf.sh
#         SKIP_APT=1 scripts/install_grf.sh # system packages are already there
#
# What makes the build work (checked on Debian 12 / Ubuntu 22.04+, Python 3.11):
#   * the C++ engine needs SDL2, Boost.Python and GL/EGL headers (apt packages below);
#   * gfootball's setup.py imports psutil, so the build runs with --no-build-isolation after psutil,
#     setuptools and wheel are installed, with the target Python first on PATH (the engine's CMake
#     build looks up `python3` there);
#   * gfootball needs the old `gym==0.25.2` (gym 0.26 changed reset()) and imports `six` undeclared.
# The build takes ~8 minutes on 2 cores (much longer on a busy machine). Nothing is rebuilt when the
# wanted version is installed already, or when its wheel is in $GRF_WHEEL_DIR (~/.cache/marlx/wheels).
set -euo pipefail

GFOOTBALL_VERSION="${GFOOTBALL_VERSION:-2.10.2}"
PYTHON="${PYTHON:-python}"
PYTHON="$(command -v "$PYTHON")"
# Absolute (without resolving the venv's symlink): the engine build runs in a temporary folder.
PY_BIN_DIR="$(cd "$(dirname "$PYTHON")" && pwd)"
PYTHON="$PY_BIN_DIR/$(basename "$PYTHON")"

installed="$("$PYTHON" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
try:
    print(m.version("gfootball"))
except m.PackageNotFoundError:
    pass
PY
)"
if [[ "$installed" == "$GFOOTBALL_VERSION" ]] && "$PYTHON" -c "import gfootball.env" 2>/dev/null; then
    echo "gfootball $installed is installed already in $PYTHON; nothing to do"
    exit 0
fi

APT_PACKAGES=(
    build-essential cmake git
    libgl1-mesa-dev libegl1-mesa-dev
    libsdl2-dev libsdl2-image-dev libsdl2-ttf-dev libsdl2-gfx-dev
    libboost-python-dev libboost-thread-dev libboost-system-dev libboost-filesystem-dev
)
if [[ -z "${SKIP_APT:-}" ]] && command -v dpkg >/dev/null && dpkg -s "${APT_PACKAGES[@]}" >/dev/null 2>&1; then
    echo "system packages are installed already"
    SKIP_APT=1
fi
if [[ -z "${SKIP_APT:-}" ]]; then
    if command -v apt-get >/dev/null; then
        SUDO=""
        if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
        echo "installing system packages: ${APT_PACKAGES[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
    else
        echo "apt-get not found: install the equivalents of these packages yourself, then rerun with SKIP_APT=1:" >&2
        echo "  ${APT_PACKAGES[*]}" >&2
        exit 1
    fi
fi

export PATH="$PY_BIN_DIR:$PATH"
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"
"$PYTHON" -m pip install --quiet psutil setuptools wheel six "gym==0.25.2"
# The built wheel is kept outside the environment, so that a new venv (CI) installs it in seconds.
WHEEL_DIR="${GRF_WHEEL_DIR:-$HOME/.cache/marlx/wheels}"
mkdir -p "$WHEEL_DIR"
PY_TAG="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
wheel="$(ls "$WHEEL_DIR"/gfootball-"$GFOOTBALL_VERSION"-"$PY_TAG"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$wheel" ]]; then
    echo "building gfootball $GFOOTBALL_VERSION (C++ engine, ~8 minutes) into $WHEEL_DIR"
    "$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$WHEEL_DIR" "gfootball==$GFOOTBALL_VERSION"
    wheel="$(ls "$WHEEL_DIR"/gfootball-"$GFOOTBALL_VERSION"-"$PY_TAG"-*.whl | head -n1)"
else
    echo "using the gfootball wheel built before: $wheel"
fi
"$PYTHON" -m pip install "$wheel"

"$PYTHON" - <<'PY'
import gfootball.env as football_env
env = football_env.create_environment(
    env_name="academy_3_vs_1_with_keeper", representation="simple115v2",
    number_of_left_players_agent_controls=3, render=False)
obs = env.reset()
env.step([0, 0, 0])
env.close()
print("gfootball works: obs", obs.shape)
PY

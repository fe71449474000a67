#!/usr/bin/env bash
# Sets up a fresh machine: the Debian image data, a virtualenv in .venv with the pinned
# packages (torch from the local wheel cache when the machine has one). Idempotent: a second
# run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
[ -d /usr/share/openclipart/png ] || need_pkgs+=(openclipart-png)
[ -d /usr/share/datasets/fashion-mnist ] || need_pkgs+=(dataset-fashion-mnist)
# Non-catalog clutter for the shelf evaluation's photo sets (real icons, not openclipart).
[ -d /usr/share/icons/oxygen/base/256x256 ] || need_pkgs+=(oxygen-icon-theme)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian image data: ${need_pkgs[*]}"
    apt-get install -y -q "${need_pkgs[@]}" >/dev/null || {
      apt-get update -q >/dev/null && apt-get install -y -q "${need_pkgs[@]}" >/dev/null; }
  else
    echo "note: install the Debian packages ${need_pkgs[*]} for the demo and the image tests" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.prodsearch-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned, so that nothing pulls an unpinned build.
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

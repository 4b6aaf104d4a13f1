#!/bin/sh
# Create or refresh a virtual environment from a lock file, exactly:
#
#   requirements/make-venv.sh VENV LOCK
#
# The venv holds exactly the lock's pins plus lungwatch itself (editable, no dependencies).
# When the lock changed since the venv was built (its sha256 is kept in VENV/.lock.sha256), the
# venv is rebuilt from scratch, so nothing from an older lock is left behind; when only the
# project changed, lungwatch is reinstalled. pip (not uv) installs, so the machine's pip
# configuration is honoured: torch==2.13.0+cpu comes from the local wheel folder there.
set -eu
venv="${1:?usage: make-venv.sh VENV LOCK}"
lock="${2:?usage: make-venv.sh VENV LOCK}"
python="${PYTHON:-python3}"
pip_flags="--disable-pip-version-check -q"

lock_sha=$(sha256sum "$lock" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.lock.sha256" 2>/dev/null)" != "$lock_sha" ]; then
    locked_for=$(sed -n 's/.*--python-version \([0-9.]*\).*/\1/p' "$lock" | head -n 1)
    running=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ -n "$locked_for" ] && [ "$locked_for" != "$running" ]; then
        echo "venv: $lock is locked for Python $locked_for but $python is $running;" \
            "set PYTHON=python$locked_for or run 'make lock' with this Python" >&2
        exit 1
    fi
    echo "venv: building $venv from $lock"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install $pip_flags --no-deps -r "$lock"
    "$venv/bin/pip" check >/dev/null || { "$venv/bin/pip" check >&2; exit 1; }
    echo "$lock_sha" > "$venv/.lock.sha256"
fi
# The project itself: no dependencies (the lock has them), built with the lock's setuptools.
# shellcheck disable=SC2086
"$venv/bin/pip" install $pip_flags --no-deps --no-build-isolation -e .

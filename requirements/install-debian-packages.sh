#!/bin/sh
# Install the Debian packages that requirements/debian-packages.txt lists for GROUP and that are
# not installed yet. As root it runs apt-get; otherwise sudo (without a password prompt).
# Where neither is possible it prints one line naming what to install and exits 1.
#
#   requirements/install-debian-packages.sh GROUP      (GROUP: edge or dev)
#
# LUNGWATCH_SKIP_SYSDEPS=1 skips the step (a non-Debian machine that has the libraries).
set -eu
group="${1:?usage: install-debian-packages.sh edge|dev}"
list="$(dirname "$0")/debian-packages.txt"

[ "${LUNGWATCH_SKIP_SYSDEPS:-0}" = 1 ] && exit 0

wanted=$(sed -e 's/#.*//' "$list" | awk -v g="$group" \
    'NF >= 2 { for (i = 2; i <= NF; i++) if ($i == "all" || $i == g) { print $1; break } }')

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "sysdeps: not a Debian system (no dpkg-query); install the equivalents of: $(echo $wanted)" \
        "and rerun with LUNGWATCH_SKIP_SYSDEPS=1" >&2
    exit 1
fi

missing=""
for package in $wanted; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
else
    echo "sysdeps: missing Debian packages:$missing; install them as root: apt-get install$missing" >&2
    exit 1
fi

echo "sysdeps: installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086  # one word per package
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null

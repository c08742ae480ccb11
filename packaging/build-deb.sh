#!/bin/sh
# Build the otp-agent .deb from a clean copy of the source tree and run lintian on it.
#
#     packaging/build-deb.sh [--install-build-deps] OUTDIR
#
# --install-build-deps (as root) first installs, with apt-get, what the build needs: the
# Build-Depends of packaging/debian/control, dpkg-dev, fakeroot and lintian (and git, which
# copies the tree).
# OUTDIR receives otp-agent_<version>_all.deb, the .changes and .buildinfo files, the build log
# (build-deb.log) and lintian's report (lintian.txt); the last line printed is lintian's summary.
# The copy holds the files git tracks plus untracked ones that are not ignored, so a working tree
# builds as it is, without .venv, caches or earlier build products.
# Needs the packages of .ci/apt/packaging.txt; uses Debian's /usr/bin/python3 whatever PATH says.
set -eu

BUILD_DEPS="debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
python3-build python3-installer python3-wheel dpkg-dev build-essential fakeroot lintian git"
if [ "${1:-}" = "--install-build-deps" ]; then
    shift
    if [ "$(id -u)" != 0 ]; then
        echo "build-deb: --install-build-deps needs root (apt-get)" >&2
        exit 2
    fi
    echo "build-deb: apt-get install $BUILD_DEPS" | tr '\n' ' '
    echo
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $BUILD_DEPS >/dev/null
fi
if [ $# -ne 1 ]; then
    echo "usage: $0 [--install-build-deps] OUTDIR" >&2
    exit 2
fi
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

# Debian's toolchain only: no virtualenv, pyenv shim or user site-packages may leak in.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION PYTHONSTARTUP 2>/dev/null || true
export PYTHONNOUSERSITE=1 LC_ALL=C.UTF-8 DEB_BUILD_OPTIONS=nocheck

work=$(mktemp -d "${TMPDIR:-/tmp}/otp-agent-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
src="$work/otp-agent"
mkdir "$src"
(cd "$top" && git ls-files -z --cached --others --exclude-standard) \
    | (cd "$top" && xargs -0 sh -c 'for f; do [ -e "$f" ] || [ -L "$f" ] && printf "%s\0" "$f"; done' sh) \
    | (cd "$top" && tar --null -T - -cf -) | (cd "$src" && tar -xf -)
cp -a "$src/packaging/debian" "$src/debian"

echo "build-deb: building in $src"
if ! (cd "$src" && dpkg-buildpackage -b -us -uc) >"$out/build-deb.log" 2>&1; then
    tail -n 40 "$out/build-deb.log" >&2
    echo "build-deb: dpkg-buildpackage failed (full log: $out/build-deb.log)" >&2
    exit 1
fi
for f in "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo; do
    cp "$f" "$out/"
done
deb=$(ls "$work"/*.deb)
echo "build-deb: built $out/$(basename "$deb")"

# lintian: every tag (info and pedantic included) goes to the report; errors fail the build.
lintian --info --display-info --pedantic --show-overrides --tag-display-limit 0 "$work"/*.changes >"$out/lintian.txt" 2>&1 || true
e=$(grep -c '^E: ' "$out/lintian.txt" || true)
w=$(grep -c '^W: ' "$out/lintian.txt" || true)
i=$(grep -c '^I: ' "$out/lintian.txt" || true)
p=$(grep -c '^P: ' "$out/lintian.txt" || true)
o=$(grep -c '^O: ' "$out/lintian.txt" || true)
grep -E '^[EWIPO]: ' "$out/lintian.txt" | sed 's/^/lintian: /' || true
echo "lintian summary: $e errors, $w warnings, $i info, $p pedantic, $o overridden (see packaging/debian/*.lintian-overrides)"
[ "$e" -eq 0 ]

#!/bin/sh
# Build the otp-agent .rpm (and .src.rpm) from a clean copy of the source tree and run rpmlint.
#
#     packaging/build-rpm.sh OUTDIR
#
# OUTDIR receives the binary and source RPMs, the build log (build-rpm.log), the package's file
# list and scripts (rpm-contents.txt) and rpmlint's report (rpmlint.txt); the last line printed is
# rpmlint's summary. On Debian this uses Debian's rpm (rpmbuild) and rpmlint packages; build
# dependencies are not checked (--nodeps): they are Debian packages, not RPMs.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION PYTHONSTARTUP 2>/dev/null || true
export PYTHONNOUSERSITE=1 LC_ALL=C.UTF-8

version=$(sed -n 's/^Version: *//p' "$top/packaging/rpm/otp-agent.spec")
work=$(mktemp -d "${TMPDIR:-/tmp}/otp-agent-rpm.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/rpmbuild/SOURCES" "$work/src/otp-agent-$version"
(cd "$top" && git ls-files -z --cached --others --exclude-standard) \
    | (cd "$top" && xargs -0 sh -c 'for f; do [ -e "$f" ] || [ -L "$f" ] && printf "%s\0" "$f"; done' sh) \
    | (cd "$top" && tar --null -T - -cf -) | (cd "$work/src/otp-agent-$version" && tar -xf -)
tar -C "$work/src" -czf "$work/rpmbuild/SOURCES/otp-agent-$version.tar.gz" "otp-agent-$version"

echo "build-rpm: building otp-agent $version"
if ! rpmbuild -ba --nodeps --define "_topdir $work/rpmbuild" \
        "$top/packaging/rpm/otp-agent.spec" >"$out/build-rpm.log" 2>&1; then
    tail -n 40 "$out/build-rpm.log" >&2
    echo "build-rpm: rpmbuild failed (full log: $out/build-rpm.log)" >&2
    exit 1
fi
cp "$work"/rpmbuild/RPMS/noarch/*.rpm "$work"/rpmbuild/SRPMS/*.rpm "$out/"
rpm=$(ls "$work"/rpmbuild/RPMS/noarch/otp-agent-*.rpm)
echo "build-rpm: built $out/$(basename "$rpm")"
{
    echo "== file list (mode owner group path)"
    rpm -qp --queryformat '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm"
    echo "== config files"
    rpm -qpc "$rpm"
    echo "== requires"
    rpm -qpR "$rpm"
    echo "== scripts"
    rpm -qp --scripts "$rpm"
} >"$out/rpm-contents.txt" 2>&1

# rpmlint knows Fedora/openSUSE policy, not Debian's filesystem: the report is informational
# except for errors, which fail the build.
rpmlint -c "$top/packaging/rpm/rpmlint.toml" -r "$top/packaging/rpm/otp-agent.rpmlintrc" "$top/packaging/rpm/otp-agent.spec" "$work"/rpmbuild/SRPMS/*.rpm "$rpm" >"$out/rpmlint.txt" 2>&1 || true
grep -E ': [EW]: ' "$out/rpmlint.txt" | sed 's/^/rpmlint: /' || true
summary=$(grep -E 'packages and [0-9]+ specfiles checked' "$out/rpmlint.txt" | tail -n 1)
echo "rpmlint summary: ${summary:-none (see $out/rpmlint.txt)}"
errors=$(printf '%s\n' "$summary" | sed -n 's/.* \([0-9][0-9]*\) errors.*/\1/p')
[ "${errors:-1}" -eq 0 ]

# Sourced by contrib/demo.sh and .ci/test: make sure ./.venv exists with the project installed.
# Needs only python3; as root it installs Debian's python3-venv when the venv module is missing.
# Usage: . .ci/bootstrap.sh EXTRAS   (EXTRAS: "" for the demo, "test,postgresql" for the suite)

otp_bootstrap() {
    extras="$1"
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv"
        if ! python3 -m venv .venv >/dev/null 2>&1; then
            rm -rf .venv
            if [ "$(id -u)" != 0 ]; then
                echo "python3 cannot create a virtualenv: run 'apt-get install python3-venv' as root" >&2
                return 1
            fi
            echo "==> installing python3-venv (Debian)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv .venv || return 1
        fi
    fi
    stamp=".venv/.installed-$(cat pyproject.toml | cksum | cut -d' ' -f1)-${extras:-base}"
    if [ ! -e "$stamp" ]; then
        echo "==> installing otp-agent${extras:+ [$extras]} into .venv"
        .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip || return 1
        .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}" || return 1
        touch "$stamp"
    fi
}

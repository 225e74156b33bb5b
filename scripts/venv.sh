# Sourced by scripts/etcdpy and scripts/test: make sure ./.venv exists and holds etcdpy.
#
# Why a venv: Debian 12's python3 is "externally managed" (PEP 668), so `pip install .`
# into it is refused; a venv in the checkout needs no root and touches nothing else.
# Debian ships venv's pip bootstrap separately (python3-venv): it is installed with apt
# only when it is missing and we may (root, or sudo available).

ensure_venv() {
  local extras="${1:-}"
  if [ ! -x .venv/bin/python ]; then
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      echo "installing python3-venv (Debian keeps venv's pip bootstrap in a separate package)" >&2
      if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv .venv
  fi
  # Editable, so the venv always runs this checkout's code.
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
}

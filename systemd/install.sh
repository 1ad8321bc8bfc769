#!/usr/bin/env bash
# Install or upgrade cp-agent as a systemd service on Raspberry Pi OS / Debian.
#
# Idempotent: running it again upgrades the code in the virtualenv and the unit file, and
# leaves an existing /etc/cp-agent/config.yaml alone. It enables the service but starts it
# only with --start, because restarting a charger in the middle of a session ends that
# session. Works in an image-build chroot too (no running systemd or udev needed).
#
#   sudo systemd/install.sh [--with-evdev] [--with-lgpio] [--ctl-user NAME] [--start]
#
# On a Raspberry Pi it also installs lgpio into the venv: gpiozero's pin factory on a Pi 5 (and
# a Pi 4 on bookworm), which the apt package python3-lgpio cannot provide to a virtualenv.
# It links /usr/local/bin/cp-agent to the venv's command and puts the service user in the
# device groups, so `sudo -u cp-agent cp-agent doctor --config /etc/cp-agent/config.yaml`
# sees the devices as the service does.

set -euo pipefail

PREFIX=/opt/cp-agent
VENV="$PREFIX/venv"
CONF_DIR=/etc/cp-agent
CONFIG="$CONF_DIR/config.yaml"
UNIT_DIR=/etc/systemd/system
SYSUSERS_DIR=/etc/sysusers.d
UDEV_RULE=/etc/udev/rules.d/60-cp-agent.rules
BIN_LINK=/usr/local/bin/cp-agent
DT_MODEL=/proc/device-tree/model
SERVICE_USER=cp-agent
DEVICE_GROUPS=(gpio dialout i2c input)
PYTHON=${PYTHON:-python3}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

with_evdev=0
with_lgpio=0
ctl_user=
start=0

usage() {
    cat <<EOF
usage: $0 [--with-evdev] [--with-lgpio] [--ctl-user NAME] [--start]

  --with-evdev     also install python-evdev (USB keyboard-wedge RFID readers)
  --with-lgpio     install lgpio (GPIO) even where no Raspberry Pi is detected, e.g. when
                   building a Pi image in a chroot; on a Pi it is installed anyway
  --ctl-user NAME  add NAME to the $SERVICE_USER group, so it may use 'cp-agent ctl'
  --start          (re)start the service once installed
EOF
}

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# True on a Raspberry Pi: the device tree names the board ("Raspberry Pi 5 Model B Rev 1.0").
is_raspberry_pi() {
    [ -r "$DT_MODEL" ] && grep -qa '^Raspberry Pi' "$DT_MODEL"
}

# gpiozero's default pin factory on a Pi 5 (and a Pi 4 on bookworm) needs the lgpio module.
# Raspberry Pi OS ships it as python3-lgpio, which a virtualenv does not see, so it goes into
# the venv from PyPI (wheels for the Pi's Pythons; piwheels on Raspberry Pi OS).
install_gpio_library() {
    # find_spec, not import: importing lgpio creates a FIFO in the current directory.
    if "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("lgpio") is None)'
    then
        return 0
    fi
    say "installing lgpio into $VENV (GPIO on a Raspberry Pi 5, and a Pi 4 on bookworm)"
    if ! "$VENV/bin/python" -m pip install --quiet --no-cache-dir lgpio; then
        warn "could not install lgpio: GPIO will not work. To build it from source:" \
            "apt-get install -y swig python3-dev liblgpio-dev && $VENV/bin/python -m pip install lgpio"
    fi
}

# The documented commands say `cp-agent ...`: put the venv's command on PATH (sudo's too).
link_command() {
    if [ -e "$BIN_LINK" ] && [ ! -L "$BIN_LINK" ]; then
        warn "$BIN_LINK exists and is not a symlink: left alone (the agent is $VENV/bin/cp-agent)"
        return 0
    fi
    say "linking $BIN_LINK -> $VENV/bin/cp-agent"
    install -d -m 0755 "$(dirname "$BIN_LINK")"
    ln -sfn "$VENV/bin/cp-agent" "$BIN_LINK"
}

# The unit grants the device groups with SupplementaryGroups=; membership gives them to the
# service user outside the unit too (`sudo -u cp-agent cp-agent doctor`). Only groups that
# exist are joined: this creates none.
join_device_groups() {
    local present=() g
    for g in "${DEVICE_GROUPS[@]}"; do
        if getent group "$g" >/dev/null; then
            present+=("$g")
        fi
    done
    [ "${#present[@]}" -gt 0 ] || return 0
    say "adding $SERVICE_USER to groups ${present[*]}"
    usermod -a -G "$(IFS=,; printf '%s' "${present[*]}")" "$SERVICE_USER"
}

# Sourced (tests/test_setup_traps.py calls the functions above one by one): stop here.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    return 0
fi

while [ $# -gt 0 ]; do
    case "$1" in
        --with-evdev) with_evdev=1 ;;
        --with-lgpio) with_lgpio=1 ;;
        --ctl-user)
            [ $# -ge 2 ] || die "--ctl-user needs a user name"
            ctl_user=$2
            shift
            ;;
        --start) start=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
[ -f "$REPO/pyproject.toml" ] || die "$REPO does not look like a cp-agent checkout"
if [ -n "$ctl_user" ] && ! getent passwd "$ctl_user" >/dev/null; then
    die "no such user: $ctl_user"
fi

# ------------------------------------------------------------------ python
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (apt-get install python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "cp-agent needs Python 3.11 or newer (Raspberry Pi OS / Debian 12 'bookworm' has it)"
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    command -v apt-get >/dev/null || die "the Python venv module is missing"
    say "installing python3-venv"
    apt-get install -y python3-venv
fi

# ------------------------------------------------------------------ user and groups
if command -v systemd-sysusers >/dev/null; then
    say "creating user $SERVICE_USER and device groups (systemd-sysusers)"
    install -D -m 0644 "$REPO/systemd/cp-agent.sysusers.conf" "$SYSUSERS_DIR/cp-agent.conf"
    systemd-sysusers "$SYSUSERS_DIR/cp-agent.conf"
else
    say "creating user $SERVICE_USER and device groups (useradd)"
    for g in "${DEVICE_GROUPS[@]}"; do
        getent group "$g" >/dev/null || groupadd --system "$g"
    done
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        if getent group "$SERVICE_USER" >/dev/null; then
            group_opt=(--gid "$SERVICE_USER")
        else
            group_opt=(--user-group)
        fi
        useradd --system "${group_opt[@]}" --home-dir /var/lib/cp-agent --no-create-home \
            --shell /usr/sbin/nologin --comment "cp-agent OCPP charge point agent" \
            "$SERVICE_USER"
    fi
fi
join_device_groups
if [ -n "$ctl_user" ]; then
    say "adding $ctl_user to group $SERVICE_USER (takes effect at the next login)"
    usermod -a -G "$SERVICE_USER" "$ctl_user"
fi

# ------------------------------------------------------------------ device permissions
# Serial ports (dialout) and input devices (input) are group-accessible on every Debian;
# GPIO and I2C nodes only on Raspberry Pi OS. This rule does the same elsewhere.
udev_rules='# Installed by cp-agent install.sh: group access to GPIO and I2C character devices.
SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"
SUBSYSTEM=="i2c-dev", KERNEL=="i2c-[0-9]*", GROUP="i2c", MODE="0660"'
if [ "$(cat "$UDEV_RULE" 2>/dev/null)" != "$udev_rules" ]; then
    say "installing $UDEV_RULE"
    install -d -m 0755 "$(dirname "$UDEV_RULE")"
    printf '%s\n' "$udev_rules" >"$UDEV_RULE"
    chmod 0644 "$UDEV_RULE"
    if [ -d /run/udev ] && command -v udevadm >/dev/null; then
        udevadm control --reload || warn "udevadm could not reload its rules"
        udevadm trigger --action=change --subsystem-match=gpio --subsystem-match=i2c-dev || true
    fi
fi

# ------------------------------------------------------------------ code
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
    # The system Python was upgraded underneath the venv: rebuild it.
    warn "$VENV is broken, recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    install -d -m 0755 "$PREFIX"
    "$PYTHON" -m venv "$VENV"
fi

# Build from a copy, so root never leaves build/ or *.egg-info behind in the checkout.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C "$REPO" --exclude=.git --exclude=build --exclude='*.egg-info' --exclude=.venv \
    --exclude=__pycache__ --exclude=.pytest_cache -cf - . | tar -C "$src" -xf -
target="$src"
if [ "$with_evdev" -eq 1 ]; then target="${src}[evdev]"; fi
say "installing cp-agent into $VENV"
"$VENV/bin/python" -m pip install --quiet --no-cache-dir --upgrade "$target"
[ -x "$VENV/bin/cp-agent" ] || die "pip did not install the cp-agent command"
# pip compiled the bytecode; the dataclass methods are compiled from strings at run time, so
# they are cached here, while the venv is writable (the hardened service cannot write it).
"$VENV/bin/python" -c 'from agent import dataclass_cache as d; d.warm()' \
    || warn "dataclass method cache not written (each start compiles them)"
if [ "$with_lgpio" -eq 1 ] || is_raspberry_pi; then
    install_gpio_library
fi
link_command
if [ -f "$REPO/docs/deployment.md" ]; then
    install -D -m 0644 "$REPO/docs/deployment.md" "$PREFIX/docs/deployment.md"
fi

# ------------------------------------------------------------------ configuration
install -d -m 0755 "$CONF_DIR"
if [ -e "$CONFIG" ]; then
    say "keeping existing $CONFIG"
elif [ -f "$REPO/config.example.yaml" ]; then
    say "installing $CONFIG from config.example.yaml: edit it before starting"
    # Root-owned, readable by the service only: it may hold the CSMS password.
    install -m 0640 -o root -g "$SERVICE_USER" "$REPO/config.example.yaml" "$CONFIG"
else
    warn "no config.example.yaml in $REPO; write $CONFIG yourself"
fi
if [ -e "$CONFIG" ] && command -v runuser >/dev/null \
    && ! runuser -u "$SERVICE_USER" -- test -r "$CONFIG"; then
    warn "$SERVICE_USER cannot read $CONFIG (try: chgrp $SERVICE_USER $CONFIG; chmod 0640 $CONFIG)"
fi

# ------------------------------------------------------------------ service
say "installing $UNIT_DIR/cp-agent.service"
install -D -m 0644 "$REPO/systemd/cp-agent.service" "$UNIT_DIR/cp-agent.service"
booted=0
[ -d /run/systemd/system ] && booted=1
if [ "$booted" -eq 1 ]; then
    systemctl daemon-reload
fi
systemctl enable cp-agent.service

if [ "$start" -eq 1 ]; then
    if [ "$booted" -eq 1 ]; then
        say "starting cp-agent"
        systemctl restart cp-agent.service
        systemctl --no-pager status cp-agent.service || true
    else
        warn "systemd is not running here (chroot?): not starting the service"
    fi
elif [ "$booted" -eq 1 ] && systemctl is-active --quiet cp-agent.service; then
    say "cp-agent is running the previous version; 'systemctl restart cp-agent' switches over"
else
    say "done. Edit $CONFIG, check the devices with" \
        "'sudo -u $SERVICE_USER cp-agent doctor --config $CONFIG', then:" \
        "systemctl start cp-agent; journalctl -u cp-agent -f"
fi

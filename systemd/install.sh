#!/usr/bin/env bash
# Install or upgrade cp-agent as a systemd service on Raspberry Pi OS / Debian.
#
# Idempotent: running it again upgrades the code in the virtualenv and the unit file, and
# leaves an existing /etc/cp-agent/config.yaml alone. It enables the service but starts it
# only with --start, because restarting a charger in the middle of a session ends that
# session. Works in an image-build chroot too (no running systemd or udev needed).
#
#   sudo systemd/install.sh [--with-evdev] [--ctl-user NAME] [--start]

set -euo pipefail

PREFIX=/opt/cp-agent
VENV="$PREFIX/venv"
CONF_DIR=/etc/cp-agent
CONFIG="$CONF_DIR/config.yaml"
UNIT_DIR=/etc/systemd/system
SYSUSERS_DIR=/etc/sysusers.d
UDEV_RULE=/etc/udev/rules.d/60-cp-agent.rules
SERVICE_USER=cp-agent
DEVICE_GROUPS=(gpio dialout i2c input)
PYTHON=${PYTHON:-python3}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

with_evdev=0
ctl_user=
start=0

usage() {
    cat <<EOF
usage: $0 [--with-evdev] [--ctl-user NAME] [--start]

  --with-evdev     also install python-evdev (USB keyboard-wedge RFID readers)
  --ctl-user NAME  add NAME to the $SERVICE_USER group, so it may use 'cp-agent ctl'
  --start          (re)start the service once installed
EOF
}

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --with-evdev) with_evdev=1 ;;
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
    say "done. Edit $CONFIG, then: systemctl start cp-agent; journalctl -u cp-agent -f"
fi

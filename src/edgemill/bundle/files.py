"""The text files of an install bundle: config template, systemd unit, install script, README.

The config and the unit are the ones in deploy/systemd/ (a test keeps the copies equal): the bundle's
install.sh sets up exactly the layout those files document. install.sh is POSIX sh with the bundle's
facts in its first lines; everything it checks on the device it checks with the device's python3.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

# deploy/systemd/agent.toml
AGENT_TOML = r'''# edgemill agent configuration for the systemd layout (deploy/systemd/edgemill-agent.service):
#   /etc/edgemill/agent.toml     this file (root-owned, read-only to the agent)
#   /etc/edgemill/keys/*.pub     trusted public keys (edgemill keys generate DIR on the build machine;
#                                only the .pub file comes to the device)
#   /var/lib/edgemill/models     installed packages (*.emp), all loaded at start
#   /var/lib/edgemill/captures   the durable capture queue
#   /run/edgemill/agent.sock     the gRPC Unix socket (mode 0660, group edgemill)
# Every key and its default: edgemill agent --example-config

[device]
name = "edge-device"                # set per device: letters, digits, '.', '_', '-'
fleet = "default"

[listen]
address = "127.0.0.1:8601"          # gRPC over TCP, loopback only; "" to serve on the socket alone
unix_socket = "/run/edgemill/agent.sock"
metrics_address = "127.0.0.1:9601"  # Prometheus text at /metrics
max_workers = 16
# Listening beyond loopback? Use TLS (add client_ca_file for mutual TLS):
# [listen.tls]
# cert_file = "/etc/edgemill/tls/agent.crt"
# key_file = "/etc/edgemill/tls/agent.key"      # readable by the edgemill group, mode 0640
# client_ca_file = "/etc/edgemill/tls/clients-ca.crt"

[models]
directory = "/var/lib/edgemill/models"
standalone = true
trusted_keys = ["/etc/edgemill/keys/edgemill.pub"]  # packages must carry a signature by one of these
memory_budget_mb = 1024             # keep MemoryMax= in the unit at this + ~512 MiB
when_over_budget = "refuse"         # or "evict-lru"
max_concurrency = 4

[capture]
directory = "/var/lib/edgemill/captures"
max_queue_mb = 256
sample_rate = 0.0                   # share of Predict calls captured automatically
store = "file:///var/lib/edgemill/capture-store"
# Upload to S3 (pip install 'edgemill[s3]'; credentials in /etc/edgemill/agent.env or an instance role):
# store = "s3://my-bucket/captures"
# s3_region = "eu-west-1"
# s3_endpoint_url = "https://minio.example.internal:9000"   # any S3-compatible store
upload_batch_size = 32
upload_interval_s = 5.0

# Join a fleet run by `edgemill server`: deployments then come from the control plane. Uncomment the
# section (it is the last one, so nothing below it moves into it).
# [server]
# url = "https://fleet.example.com"                      # "" (the default): no control plane
# token_file = "/etc/edgemill/token"                     # one-time registration token (edgemill fleet token FLEET):
#                                                        #   root:edgemill, mode 0640; read only until registered
# credential_file = "/var/lib/edgemill/state/credential" # written at registration: must be writable by the agent
# state_file = "/var/lib/edgemill/state/sync.json"       # heartbeat sequence, applied packages
# ca_file = "/etc/edgemill/tls/server-ca.crt"            # https with a private CA
# tags = { site = "north" }                              # deployments can target devices by tag
# heartbeat_interval_s = 30
'''

# deploy/systemd/edgemill-agent.service
SERVICE_UNIT = r'''# edgemill device agent as a hardened systemd service.
#
# Install (as root):
#   useradd --system --home-dir /var/lib/edgemill --shell /usr/sbin/nologin edgemill
#   python3 -m venv /opt/edgemill/venv && /opt/edgemill/venv/bin/pip install edgemill   # 'edgemill[s3]' for S3 capture upload
#   install -d -m 0755 /etc/edgemill /etc/edgemill/keys
#   install -m 0644 deploy/systemd/agent.toml /etc/edgemill/agent.toml
#   install -m 0644 edgemill.pub /etc/edgemill/keys/          # public key(s) packages must be signed with
#   install -m 0644 deploy/systemd/edgemill-agent.service /etc/systemd/system/
#   systemctl daemon-reload && systemctl enable --now edgemill-agent
#   install -o edgemill -g edgemill -m 0640 model.emp /var/lib/edgemill/models/   # then restart, or LoadModel
# Offline devices: `edgemill agent bundle --platform linux-aarch64 -o bundle.tar` on a connected machine
# packs the wheels, this unit, agent.toml and an install.sh that does the steps above (docs/offline-install.md).
#
# Applications reach the agent on 127.0.0.1:8601 or the Unix socket /run/edgemill/agent.sock (mode
# 0660, group edgemill: add the application's user to that group). Check the sandbox with
#   systemd-analyze security edgemill-agent

[Unit]
Description=edgemill device agent (model serving over gRPC, metrics, data capture)
Documentation=https://github.com/edgemill/edgemill
# The network is needed only for capture upload (S3) and non-loopback listeners, but waiting for it
# avoids a burst of failed uploads at boot.
Wants=network-online.target
After=network-online.target
# A broken config exits non-zero at once; stop retrying after 5 failures in 5 minutes
# (journalctl -u edgemill-agent shows the key and line at fault).
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=exec
# A fixed system user rather than DynamicUser=: applications hand the agent POSIX shared memory, so
# they must be able to grant a stable uid/group access to their segments, and DynamicUser= implies
# RemoveIPC=yes.
User=edgemill
Group=edgemill
# Also read shared-memory segments created by applications of another group (e.g. a camera service).
#SupplementaryGroups=video

ExecStart=/opt/edgemill/venv/bin/edgemill agent --config /etc/edgemill/agent.toml
Environment=PYTHONUNBUFFERED=1
# S3 credentials for capture upload (AWS_ACCESS_KEY_ID=..., AWS_SECRET_ACCESS_KEY=..., AWS_DEFAULT_REGION=...),
# root-owned mode 0600; the leading '-' makes the file optional (instance roles need none).
EnvironmentFile=-/etc/edgemill/agent.env

Restart=on-failure
RestartSec=5
# SIGTERM is the graceful stop: in-flight requests get 10 s to finish (plus 1 s for the server to
# close), then the capture queue is flushed to disk for up to another 10 s. 30 s covers both with
# margin; only then does systemd send SIGKILL, to the main process and anything left.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=30

# Directories systemd creates and chowns to edgemill at every start:
#   /var/lib/edgemill        models/ (installed packages), captures/ (the on-disk upload queue)
#   /run/edgemill            the gRPC Unix socket; 0750 lets group edgemill (the clients) reach it
#   /etc/edgemill            config and trusted public keys; root-owned, read-only to the agent
StateDirectory=edgemill
StateDirectoryMode=0750
RuntimeDirectory=edgemill
RuntimeDirectoryMode=0750
ConfigurationDirectory=edgemill
WorkingDirectory=/var/lib/edgemill
# Files the agent creates (captures, the socket before its chmod) are not world-readable.
UMask=0027

# Resource limits. The models' memory is bounded by [models] memory_budget_mb in agent.toml; the
# process also holds Python, gRPC buffers (up to max_message_mb per request in flight) and the
# runtimes' arenas. A hard cap at budget + ~512 MiB makes the kernel kill only this service if a
# model misbehaves, instead of the device's other workloads. For memory_budget_mb = 1024:
#MemoryHigh=1280M
#MemoryMax=1536M
LimitNOFILE=16384

# --- Sandboxing ---------------------------------------------------------------------------------
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
# The whole file system read-only except the state directory (models, capture queue); the
# StateDirectory/RuntimeDirectory above are writable anyway, ReadWritePaths= makes it explicit.
# /dev stays writable under ProtectSystem=strict, which /dev/shm needs for shared-memory outputs.
ProtectSystem=strict
ReadWritePaths=/var/lib/edgemill
ProtectHome=yes
# Private /tmp and /var/tmp only; /dev/shm is NOT affected and stays the host's, because clients pass
# inputs and receive outputs in POSIX shared memory (Tensor.shared_memory). Never add
# InaccessiblePaths=/dev/shm, TemporaryFileSystem=/dev/shm or PrivateIPC= here.
PrivateTmp=yes
# A minimal /dev (null, zero, random, ...). systemd bind-mounts the host's /dev/shm into it, so shared
# memory keeps working. Accelerators are hidden, though: for an OpenVINO GPU/NPU or another device
# node set PrivateDevices=no and allow only what is needed, e.g.
#   DevicePolicy=closed
#   DeviceAllow=/dev/dri rw
#   DeviceAllow=/dev/accel rw
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# Other processes are hidden from /proc. Not ProcSubset=pid: the runtimes read /proc/cpuinfo and
# /proc/meminfo to size thread pools and memory.
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# Unix socket, TCP (IPv4/IPv6) and netlink (getifaddrs(), used by gRPC and the S3 client).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
# Not MemoryDenyWriteExecute=yes: OpenVINO's CPU plugin (and oneDNN) generate machine code at run
# time and would crash. On a device that only runs onnxruntime packages it can be enabled.
#MemoryDenyWriteExecute=yes

[Install]
WantedBy=multi-user.target
'''

_INSTALL_HEAD = r'''#!/bin/sh
# Install or upgrade the edgemill device agent from this offline bundle (made by `edgemill agent bundle`).
# Nothing is downloaded. Run it from the unpacked bundle, as root:
#   sudo sh install.sh
# Settings, from the environment (the defaults are the layout of the systemd unit):
#   EDGEMILL_PREFIX=/opt/edgemill           Python environments; $EDGEMILL_PREFIX/venv is the live one
#   EDGEMILL_CONFIG_DIR=/etc/edgemill       agent.toml and keys/; an existing agent.toml is never overwritten
#   EDGEMILL_UNIT_DIR=/etc/systemd/system   where edgemill-agent.service is written
#   EDGEMILL_PYTHON=python3                 the interpreter: it must be the bundle's Python version
#   EDGEMILL_SYSTEMD=auto                   auto: enable the unit when systemd runs; yes; no: only write it
#   EDGEMILL_TRIM=yes                       remove numpy's tests and onnxruntime's build-side tools (no: keep)
'''

INSTALL_SH_BODY = r'''set -eu
umask 022  # the agent runs as its own user and must read what root installs here

say() { printf 'edgemill install: %s\n' "$*"; }
die() { printf 'edgemill install: error: %s\n' "$*" >&2; exit 1; }

HERE=$(cd "$(dirname "$0")" && pwd -P)
PREFIX=${EDGEMILL_PREFIX:-/opt/edgemill}
CONFIG_DIR=${EDGEMILL_CONFIG_DIR:-/etc/edgemill}
UNIT_DIR=${EDGEMILL_UNIT_DIR:-/etc/systemd/system}
PYTHON=${EDGEMILL_PYTHON:-python3}
SYSTEMD=${EDGEMILL_SYSTEMD:-auto}
PREFIX=${PREFIX%/}
CONFIG_DIR=${CONFIG_DIR%/}
UNIT_DIR=${UNIT_DIR%/}

for dir in "$PREFIX" "$CONFIG_DIR" "$UNIT_DIR"; do
    case $dir in
        /?*) ;;
        *) die "'$dir' is not an absolute path: EDGEMILL_PREFIX, EDGEMILL_CONFIG_DIR and EDGEMILL_UNIT_DIR start with /" ;;
    esac
    case $dir in
        *[!A-Za-z0-9/._+-]*) die "'$dir' has characters this script does not handle: use letters, digits and / . _ + -" ;;
    esac
done
case $SYSTEMD in
    auto|yes|no) ;;
    *) die "EDGEMILL_SYSTEMD='$SYSTEMD': expected auto, yes or no" ;;
esac

# --- 1. this device against the bundle, before anything is changed ---------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found: this bundle needs Python $BUNDLE_PYTHON. \
Install it (Debian, Ubuntu, Raspberry Pi OS: apt install python3) or set EDGEMILL_PYTHON=/path/to/python$BUNDLE_PYTHON"
"$PYTHON" - "$HERE" "$BUNDLE_PYTHON" "$BUNDLE_ARCH" "$BUNDLE_LIBC" "$BUNDLE_LIBC_VERSION" <<'PY' || exit 1
import hashlib, json, os, platform, struct, sys

here, want_python, want_arch, want_libc, want_libc_version = sys.argv[1:6]
problems = []
have_python = "%d.%d" % sys.version_info[:2]
if have_python != want_python:
    problems.append("this bundle is for Python %s, but %s is Python %s. Fix: set EDGEMILL_PYTHON to a Python %s "
                    "on this device, or build a bundle for this one: edgemill agent bundle --python %s ..."
                    % (want_python, sys.executable, have_python, want_python, have_python))
bits = struct.calcsize("P") * 8
machine = platform.machine().lower()
arch = {"arm64": "aarch64", "amd64": "x86_64", "armv8l": "armv7l", "armv7": "armv7l"}.get(machine, machine)
if bits == 32 and arch == "aarch64":
    arch = "armv7l"  # a 32-bit userland on a 64-bit kernel runs 32-bit wheels
if arch != want_arch:
    fix = ("build a bundle with: edgemill agent bundle --platform linux-%s ..." % arch
           if arch in ("aarch64", "x86_64", "armv7l") else "bundles exist for aarch64, x86_64 and armv7l only")
    problems.append("this bundle is for linux-%s, but this device's Python runs on %s (%d-bit). Fix: %s"
                    % (want_arch, arch, bits, fix))
libc, libc_version = platform.libc_ver()


def version(text):
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


if want_libc == "glibc" and libc != "glibc":
    problems.append("this bundle needs glibc %s or newer, but this device's C library is not glibc (musl?). "
                    "Fix: build a bundle with --libc musl" % want_libc_version)
elif want_libc == "glibc" and version(libc_version) < version(want_libc_version):
    problems.append("this bundle needs glibc %s or newer; this device has glibc %s. Fix: build a bundle with "
                    "--libc-version %s" % (want_libc_version, libc_version, libc_version))
elif want_libc == "musl" and libc == "glibc":
    problems.append("this bundle is for musl, but this device uses glibc %s. Fix: build a bundle without --libc musl"
                    % libc_version)
try:
    with open(os.path.join(here, "bundle.json")) as f:
        wheels = json.load(f)["wheels"]
except (OSError, ValueError, KeyError) as exc:
    problems.append("cannot read bundle.json (%s): the bundle is incomplete. Fix: copy it again" % exc)
    wheels = []
for wheel in wheels:
    digest = hashlib.sha256()
    try:
        with open(os.path.join(here, "wheels", wheel["file"]), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        problems.append("wheels/%s cannot be read (%s): the bundle is incomplete. Fix: copy it again"
                        % (wheel["file"], exc.strerror))
        continue
    if digest.hexdigest() != wheel["sha256"]:
        problems.append("wheels/%s does not match its sha256 in bundle.json: the bundle was damaged in transfer. "
                        "Fix: copy it again" % wheel["file"])
for problem in problems:
    sys.stderr.write("edgemill install: error: %s\n" % problem)
sys.exit(1 if problems else 0)
PY

# --- 2. a Python environment of this bundle's own, beside the installed ones ------------------------
VENVS=$PREFIX/venvs
VENV=$VENVS/edgemill-$BUNDLE_VERSION-$BUNDLE_ID
LIVE=$PREFIX/venv
mkdir -p "$VENVS" 2>/dev/null || die "cannot create $VENVS: run as root (sudo sh $0) or set EDGEMILL_PREFIX to a folder you can write"
if [ -f "$VENV/.installed" ]; then
    say "edgemill $BUNDLE_VERSION from this bundle is already in $VENV"
else
    rm -rf "$VENV"  # what an interrupted run left
    say "creating $VENV with $PYTHON"
    # --without-pip: pip comes from the bundle, so Debian's missing ensurepip (python3-venv) does not matter.
    "$PYTHON" -m venv --without-pip "$VENV" \
        || die "$PYTHON -m venv failed (above). Fix: install Python's venv module (Debian: apt install python3-venv)"
    set -- "$HERE"/wheels/pip-*.whl
    [ -f "$1" ] || die "no pip wheel in $HERE/wheels: the bundle is incomplete. Fix: build it again"
    say "installing $BUNDLE_REQUIREMENT from $HERE/wheels (no network)"
    # The bundle alone: no index, and no pip settings of this device (config files, PIP_* variables).
    # pip runs from its wheel and is not installed: the agent never needs it, and the next bundle brings its own.
    PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" "$1/pip" install --isolated --no-index --find-links "$HERE/wheels" \
        --disable-pip-version-check --no-input "$BUNDLE_REQUIREMENT" \
        || die "pip could not install from the bundle (above); nothing was switched"
    "$VENV/bin/edgemill" --version >/dev/null || die "the new environment does not run edgemill (above); nothing was switched"
    if [ "${EDGEMILL_TRIM:-yes}" = yes ]; then
        # What the agent never imports: numpy's own test suite and onnxruntime's build-side tools
        # (quantization, transformer optimizer), ~26 MB. EDGEMILL_TRIM=no keeps them.
        for dir in "$VENV"/lib/python*/site-packages/numpy "$VENV"/lib/python*/site-packages/onnxruntime; do
            [ -d "$dir" ] || continue
            find "$dir" -depth -type d -name tests -exec rm -rf {} +
            rm -rf "$dir/transformers" "$dir/quantization" "$dir/tools"
            "$VENV/bin/python" -c "import $(basename "$dir")" \
                || die "$(basename "$dir") does not import once trimmed (above); nothing was switched. Fix: EDGEMILL_TRIM=no sh $0"
        done
    fi
    : > "$VENV/.installed"
fi

# --- 3. point $PREFIX/venv at it (one rename), keeping the previous one for a rollback ----------------
relink() {  # relink LINK TARGET: replace LINK by a symlink to TARGET atomically
    "$PYTHON" -c 'import os, sys
link, target = sys.argv[1:3]
if os.path.lexists(link + ".new"):
    os.unlink(link + ".new")
os.symlink(target, link + ".new")
os.replace(link + ".new", link)' "$1" "$2"
}
target_of() { "$PYTHON" -c 'import os, sys; print(os.readlink(sys.argv[1]) if os.path.islink(sys.argv[1]) else "")' "$1"; }
CURRENT=$(target_of "$LIVE")
if [ -z "$CURRENT" ] && [ -e "$LIVE" ]; then
    KEPT=$PREFIX/venv.before-bundle-$(date +%Y%m%d%H%M%S)
    mv "$LIVE" "$KEPT"
    say "moved the environment made by hand at $LIVE to $KEPT (remove it once this install works)"
fi
if [ "$CURRENT" != "$VENV" ]; then
    relink "$LIVE" "$VENV"
    [ -z "$CURRENT" ] || relink "$PREFIX/venv.previous" "$CURRENT"
    say "$LIVE -> $VENV"
fi
PREVIOUS=$(target_of "$PREFIX/venv.previous")
for dir in "$VENVS"/edgemill-*; do
    [ -d "$dir" ] && [ "$dir" != "$VENV" ] && [ "$dir" != "$PREVIOUS" ] || continue
    say "removing the older $dir"
    rm -rf "$dir"
done

# --- 4. configuration: written once, never overwritten ------------------------------------------------
mkdir -p "$CONFIG_DIR/keys" 2>/dev/null || die "cannot create $CONFIG_DIR: run as root (sudo sh $0) or set EDGEMILL_CONFIG_DIR"
if [ -e "$CONFIG_DIR/agent.toml" ]; then
    say "kept $CONFIG_DIR/agent.toml (this bundle's template: $HERE/agent.toml)"
else
    sed "s|/etc/edgemill/|$CONFIG_DIR/|g" "$HERE/agent.toml" > "$CONFIG_DIR/agent.toml.new"
    chmod 0644 "$CONFIG_DIR/agent.toml.new"
    mv "$CONFIG_DIR/agent.toml.new" "$CONFIG_DIR/agent.toml"
    say "wrote $CONFIG_DIR/agent.toml"
fi

# --- 5. the systemd unit ------------------------------------------------------------------------------
mkdir -p "$UNIT_DIR" 2>/dev/null || die "cannot create $UNIT_DIR: run as root (sudo sh $0) or set EDGEMILL_UNIT_DIR"
sed -e "s|/opt/edgemill/|$PREFIX/|g" -e "s|/etc/edgemill/|$CONFIG_DIR/|g" "$HERE/edgemill-agent.service" \
    > "$UNIT_DIR/edgemill-agent.service.new"
chmod 0644 "$UNIT_DIR/edgemill-agent.service.new"
mv "$UNIT_DIR/edgemill-agent.service.new" "$UNIT_DIR/edgemill-agent.service"
say "wrote $UNIT_DIR/edgemill-agent.service"
USE_SYSTEMD=no
case $SYSTEMD in
    yes) USE_SYSTEMD=yes ;;
    auto) if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then USE_SYSTEMD=yes; fi ;;
esac
if [ "$USE_SYSTEMD" = yes ]; then
    command -v systemctl >/dev/null 2>&1 || die "EDGEMILL_SYSTEMD=yes, but systemctl is not installed"
    if ! id edgemill >/dev/null 2>&1; then
        if command -v useradd >/dev/null 2>&1; then
            useradd --system --user-group --no-create-home --home-dir /var/lib/edgemill --shell /usr/sbin/nologin edgemill
        elif command -v adduser >/dev/null 2>&1; then  # BusyBox
            addgroup -S edgemill && adduser -S -D -H -h /var/lib/edgemill -s /sbin/nologin -G edgemill edgemill
        else
            die "cannot create the system user edgemill (no useradd or adduser here): create it, then run this again"
        fi
        say "created the system user edgemill"
    fi
    systemctl daemon-reload
    systemctl enable edgemill-agent.service
    if [ "$CURRENT" != "$VENV" ] && systemctl is-active --quiet edgemill-agent.service; then
        systemctl restart edgemill-agent.service
        say "restarted the running agent on edgemill $BUNDLE_VERSION"
    fi
else
    say "systemd is not running here: the unit is written but not enabled (EDGEMILL_SYSTEMD=yes forces it)"
fi

say "edgemill $BUNDLE_VERSION installed: $LIVE/bin/edgemill"
cat <<EOF

Next steps:
  1. Edit $CONFIG_DIR/agent.toml: [device] name; to join a fleet, [server] url and token_file.
  2. Copy the public key your packages are signed with to $CONFIG_DIR/keys/edgemill.pub
  3. Standalone: put signed packages (*.emp) in /var/lib/edgemill/models.
  4. Start: systemctl start edgemill-agent      (logs: journalctl -u edgemill-agent -f)
     Without systemd: $LIVE/bin/edgemill agent --config $CONFIG_DIR/agent.toml
Roll back to the previous version, if any: ln -sfn "\$(readlink $PREFIX/venv.previous)" $LIVE, then restart.
EOF
'''


def install_sh(facts: Mapping[str, str]) -> str:
    """install.sh with ``facts`` (BUNDLE_VERSION, BUNDLE_ID, BUNDLE_PYTHON, ...) as its first assignments."""
    assignments = "".join(f"{key}={shlex.quote(value)}\n" for key, value in facts.items())
    return _INSTALL_HEAD + "\n# This bundle (written by edgemill agent bundle):\n" + assignments + "\n" + INSTALL_SH_BODY


def readme(facts: Mapping[str, str], wheels: list[str]) -> str:
    """README.txt: what the bundle is for, what is in it, how to install it."""
    listing = "".join(f"    {name}\n" for name in wheels)
    return f"""edgemill device agent, offline install bundle
=============================================

edgemill {facts["BUNDLE_VERSION"]} ({facts["BUNDLE_REQUIREMENT"]}) for {facts["BUNDLE_PLATFORM"]}
({facts["BUNDLE_LIBC"]} >= {facts["BUNDLE_LIBC_VERSION"]}), CPython {facts["BUNDLE_PYTHON"]}. Bundle id {facts["BUNDLE_ID"]}.

Install (or upgrade) on the device, no network needed:

    tar -xf <this bundle>.tar
    cd {facts["BUNDLE_DIR"]}
    sudo sh install.sh

install.sh checks the device first (Python version, CPU, C library, every wheel's sha256 against
bundle.json) and changes nothing when a check fails. Then it creates a Python environment under
/opt/edgemill/venvs/ and points /opt/edgemill/venv at it (the previous one stays as
/opt/edgemill/venv.previous for a rollback), writes /etc/edgemill/agent.toml if there is none, writes
/etc/systemd/system/edgemill-agent.service and enables it (when systemd runs), creating the system
user edgemill. It does not start the agent: set the device name and install the trusted key first,
then `systemctl start edgemill-agent`. The header of install.sh lists the settings (EDGEMILL_PREFIX...).

Contents:
    install.sh                  the installer (POSIX sh)
    agent.toml                  the configuration template (commented)
    edgemill-agent.service      the systemd unit (hardened; see its comments)
    bundle.json                 platform, Python, edgemill version, every wheel with its sha256
    SHA256SUMS                  the same hashes, for `sha256sum -c SHA256SUMS`
    wheels/
{listing}
Uninstall:
    systemctl disable --now edgemill-agent
    rm /etc/systemd/system/edgemill-agent.service && systemctl daemon-reload
    rm -rf /opt/edgemill                       # the program
    rm -rf /etc/edgemill /var/lib/edgemill     # configuration, models, queued captures: only if unwanted
    userdel edgemill
"""

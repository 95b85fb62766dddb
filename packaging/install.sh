#!/bin/sh
# kakuremichi installer: downloads a release, checks it against the release's sha256sums, installs
# it, and with --agent configures and starts an Agent.
#
#   curl -fsSLO https://github.com/kakuremichi/kakuremichi/releases/latest/download/install.sh
#   sudo sh install.sh --agent https://control.example.com kma_...
#
# On Debian and its derivatives (dpkg) it installs the .deb; elsewhere the static binary as
# /usr/local/bin/kakuremichi with the systemd units in /etc/systemd/system. `sh install.sh --help`
# tells more. POSIX sh; needs curl or wget, and sha256sum (or shasum, or openssl).
set -eu

default_url=https://github.com/kakuremichi/kakuremichi/releases/latest/download
base_url=${KAKUREMICHI_DOWNLOAD_URL:-$default_url}
base_url=${base_url%/}
roles="control gateway agent"

usage() {
    cat <<EOF
Usage: sh install.sh [--deb | --binary] [--agent CONTROL_URL API_KEY]

Installs kakuremichi from a release: the .deb on Debian-like systems (dpkg), otherwise the static
binary as /usr/local/bin/kakuremichi plus the systemd units kakuremichi-control, -gateway and
-agent in /etc/systemd/system, each reading /etc/kakuremichi/ROLE.env. Every download is checked
against the release's sha256sums first; on a mismatch nothing is installed. No service is started
unless --agent is given. Run it as root.

Options:
  --agent CONTROL_URL API_KEY
              also configure the Agent (/etc/kakuremichi/agent.env, root-only) and start it
              (systemctl enable --now kakuremichi-agent). The key comes from Control's web UI
              (Agents -> Add) or POST /api/v1/agents. API_KEY "-" reads the key from standard
              input, which keeps it out of the process list.
  --deb       install the .deb (needs dpkg); the default where dpkg is present
  --binary    install the plain binary and the unit files, even where dpkg is present
  -h, --help  show this help

Environment:
  KAKUREMICHI_DOWNLOAD_URL  where the release files are (default: $default_url;
                            a fixed version: .../releases/download/vX.Y.Z)
EOF
}

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

mode=""
agent_url=""
agent_key=""
want_agent=no
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --deb) mode=deb ;;
        --binary) mode=binary ;;
        --agent)
            [ $# -ge 3 ] || die "--agent needs CONTROL_URL and API_KEY (see --help)"
            want_agent=yes
            agent_url=$2
            agent_key=$3
            shift 2
            ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

# --- the arguments of --agent, before anything is downloaded --------------------------------------
if [ "$want_agent" = yes ]; then
    if [ "$agent_key" = - ]; then
        IFS= read -r agent_key || [ -n "$agent_key" ] || die "no API key on standard input"
    fi
    # They are written unquoted into an environment file that systemd reads (and `sh` may source):
    # only characters that mean nothing to either are accepted.
    case $agent_url in
        http://?*|https://?*) ;;
        *) die "CONTROL_URL must start with http:// or https://" ;;
    esac
    case $agent_url in
        *[!]A-Za-z0-9.:/_,%~@[-]*) die "CONTROL_URL has a character that is not allowed in it" ;;
    esac
    case $agent_key in
        ""|*[!A-Za-z0-9._~+/=-]*) die "API_KEY is empty or has a character an API key does not have (it is not shown here)" ;;
    esac
fi

# --- where we are ------------------------------------------------------------------------------
os=$(uname -s)
case $os in
    Linux) ;;
    MINGW*|MSYS*|CYGWIN*|Windows_NT)
        die "on Windows, download kakuremichi-windows-amd64.exe from $base_url/ and run it: kakuremichi-windows-amd64.exe agent --control-url URL (API_KEY in the environment)" ;;
    Darwin)
        die "there is no macOS build in the release yet: build it with cargo install --git https://github.com/kakuremichi/kakuremichi kakuremichi" ;;
    *) die "no release build for $os" ;;
esac
machine=$(uname -m)
case $machine in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64|armv8*) arch=arm64 ;;
    *) die "no release build for the $machine architecture (there are amd64 and arm64)" ;;
esac

[ "$(id -u)" = 0 ] || die "run it as root (sudo sh install.sh ...)"

has_dpkg=no
if command -v dpkg >/dev/null 2>&1 && [ -f /etc/debian_version ]; then
    has_dpkg=yes
fi
if [ -z "$mode" ]; then
    if [ "$has_dpkg" = yes ]; then mode=deb; else mode=binary; fi
elif [ "$mode" = deb ] && ! command -v dpkg >/dev/null 2>&1; then
    die "--deb needs dpkg, which this system does not have; use --binary"
fi
has_systemd=no
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    has_systemd=yes
fi

# --- downloads ----------------------------------------------------------------------------------
if command -v curl >/dev/null 2>&1; then
    fetch() { curl -fsSL --retry 3 --connect-timeout 20 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
    fetch() { wget -q -O "$2" "$1"; }
else
    die "needs curl or wget to download"
fi
if command -v sha256sum >/dev/null 2>&1; then
    sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
    sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
elif command -v openssl >/dev/null 2>&1; then
    sha256() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }
else
    die "needs sha256sum, shasum or openssl to check the downloads"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kakuremichi-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM HUP

say "downloading from $base_url"
fetch "$base_url/sha256sums" "$tmp/sha256sums" || die "cannot download $base_url/sha256sums"

# get NAME: downloads NAME into $tmp and checks it against sha256sums; exits on any mismatch.
get() {
    fetch "$base_url/$1" "$tmp/$1" || die "cannot download $base_url/$1"
    # sha256sum's format: HASH, two spaces (or space and *), NAME.
    expected=$(awk -v name="$1" '($2 == name || $2 == "*" name) { print $1; exit }' "$tmp/sha256sums")
    [ -n "$expected" ] || die "$1 is not listed in sha256sums: not installing it"
    actual=$(sha256 "$tmp/$1")
    if [ "$actual" != "$expected" ]; then
        die "checksum mismatch for $1 (expected $expected, got $actual): not installing anything"
    fi
    say "$1: checksum OK"
}

# --- install ------------------------------------------------------------------------------------
if [ "$mode" = deb ]; then
    deb=kakuremichi-linux-$arch.deb
    get "$deb"
    say "installing $deb"
    dpkg -i "$tmp/$deb" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; die "dpkg -i $deb failed"; }
    bin=/usr/bin/kakuremichi
else
    binary=kakuremichi-linux-$arch
    get "$binary"
    if [ "$has_systemd" = yes ]; then
        for role in $roles; do get "kakuremichi-$role.service"; done
    fi
    bin=/usr/local/bin/kakuremichi
    mkdir -p /usr/local/bin
    # A rename, not a copy over the running file: services keep running the old one until restarted.
    cp "$tmp/$binary" "$bin.new"
    chmod 755 "$bin.new"
    mv -f "$bin.new" "$bin"
    say "installed $bin"
    mkdir -p /etc/kakuremichi
    chmod 755 /etc/kakuremichi
    for role in $roles; do
        if [ -e "/etc/kakuremichi/$role.env" ]; then continue; fi
        (
            umask 077
            cat >"/etc/kakuremichi/$role.env" <<EOF
# Settings of kakuremichi $role (root-only: it may hold a token or key). One VARIABLE=value a
# line; every variable: kakuremichi $role --help, or docs/configuration.md.
# Then: systemctl enable --now kakuremichi-$role
EOF
        )
    done
    if [ "$has_systemd" = yes ]; then
        for role in $roles; do
            # The units name /usr/bin/kakuremichi (the .deb's path); this install is in /usr/local/bin.
            sed "s#/usr/bin/kakuremichi#$bin#g" "$tmp/kakuremichi-$role.service" \
                >"/etc/systemd/system/kakuremichi-$role.service"
            chmod 644 "/etc/systemd/system/kakuremichi-$role.service"
        done
        systemctl daemon-reload
        # An upgrade: the services that run restart on the new binary.
        systemctl try-restart kakuremichi-control kakuremichi-gateway kakuremichi-agent || true
        say "installed the units kakuremichi-control, kakuremichi-gateway and kakuremichi-agent in /etc/systemd/system"
    fi
fi
say "$("$bin" --version 2>/dev/null | head -n 1)"

# --- the Agent ----------------------------------------------------------------------------------
if [ "$want_agent" = yes ]; then
    env_file=/etc/kakuremichi/agent.env
    mkdir -p /etc/kakuremichi
    # Keeps the file's other lines (comments, other settings), replaces CONTROL_URL and API_KEY.
    (
        umask 077
        if [ -f "$env_file" ]; then
            grep -v -E '^[[:space:]]*(export[[:space:]]+)?(CONTROL_URL|API_KEY)=' "$env_file" >"$env_file.new" || true
        else
            : >"$env_file.new"
        fi
        printf 'CONTROL_URL=%s\nAPI_KEY=%s\n' "$agent_url" "$agent_key" >>"$env_file.new"
        chmod 600 "$env_file.new"
        chown 0:0 "$env_file.new" 2>/dev/null || true
        mv -f "$env_file.new" "$env_file"
    )
    say "wrote CONTROL_URL ($agent_url) and API_KEY (not shown) to $env_file"
    if [ "$has_systemd" = yes ]; then
        systemctl enable kakuremichi-agent >/dev/null 2>&1 || die "systemctl enable kakuremichi-agent failed"
        # restart, not start: a running Agent picks up the new settings.
        systemctl restart kakuremichi-agent || die "the Agent did not start: journalctl -u kakuremichi-agent"
        sleep 2
        if systemctl is-active --quiet kakuremichi-agent; then
            say "the Agent runs (systemctl status kakuremichi-agent; logs: journalctl -u kakuremichi-agent)"
        else
            die "the Agent stopped; see journalctl -u kakuremichi-agent"
        fi
    fi
fi

if [ "$has_systemd" = no ]; then
    cat <<EOF

This system does not run systemd, so no service was set up. Run a role by hand, with its
settings from /etc/kakuremichi/ROLE.env (or your init system's equivalent), e.g. the Agent:

  mkdir -p /var/lib/kakuremichi-agent
  sh -c 'set -a; . /etc/kakuremichi/agent.env; exec $bin agent --data-dir /var/lib/kakuremichi-agent'

The Agent needs no root: run it as an unprivileged user who can read the file.
EOF
elif [ "$want_agent" = no ]; then
    cat <<EOF

No service was started. To run one, fill in /etc/kakuremichi/ROLE.env (ROLE: control, gateway
or agent), then: systemctl enable --now kakuremichi-ROLE
An Agent in one step: sh install.sh --agent CONTROL_URL API_KEY
EOF
fi

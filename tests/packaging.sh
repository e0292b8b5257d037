#!/usr/bin/env bash
# Postern's packages as an admin meets them. Builds them (scripts/package), queries the .rpm
# files with rpm, installs the .deb files with dpkg on this machine, and checks:
#   - binaries on the PATH answer --version; the shim is root-owned in /usr/libexec/postern;
#     users, directories, conffiles and unit hardening are as packaged; man pages show;
#   - the units pass `systemd-analyze verify`;
#   - posternd and postern-gate run, as their system users, the command of their unit with
#     the packaged configuration files and data directories;
#   - `postern-shim join` with the installed paths writes a drop-in that `sshd -t` accepts;
#   - `dpkg -r postern-shim` refuses while sshd's configuration needs the drop-in, and
#     otherwise removes the drop-in and the pam_exec lines, leaving `sshd -t` passing;
#   - reinstalling (and removing, then installing) keeps an edited conffile.
# Runs as root (scripts/test calls it). Puts the machine back as it found it, also when a
# check fails: packages purged, users and directories it created removed, /etc/ssh and
# /etc/pam.d/sshd as they were.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
pkgs=(postern postern-ca postern-gate postern-shim)
users=(postern postern-gate postern-shim)
dirs=(/etc/postern /var/lib/postern /var/lib/postern-gate /var/lib/postern-shim)
shim=/usr/libexec/postern/postern-shim
dropin=/etc/ssh/sshd_config.d/50-postern.conf
blocker=/etc/ssh/sshd_config.d/49-postern-pkgtest.conf
pam=/etc/pam.d/sshd
units=/usr/lib/systemd/system
out=target/packages
target_dir=${CARGO_TARGET_DIR:-target}

step() { echo "-- $*"; }
fail() { echo "tests/packaging.sh: FAIL: $*" >&2; exit 1; }
# Fails unless the file contains the fixed string.
has() { grep -qF -- "$2" "$1" || fail "$1 does not contain: $2"; }
# Runs a command with its output in a log that is shown only when it fails.
quiet() { "$@" >"$tmp/cmd.log" 2>&1 || { cat "$tmp/cmd.log" >&2; fail "$*"; }; }

[ "$(id -u)" -eq 0 ] || fail "run as root: the test installs packages with dpkg"
command -v dpkg >/dev/null || fail "dpkg is missing: the test installs the .deb packages"

# Tools: rpm for the queries, man-db for man, systemd for systemd-analyze, sshd for -t.
need=()
for pair in rpm:rpm man:man-db systemd-analyze:systemd sshd:openssh-server readelf:binutils \
            objdump:binutils setpriv:util-linux; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
    echo "tests/packaging.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Never clobber a real installation: refuse when any of it is already here.
for p in "${pkgs[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    case "$status" in "" | "un "*) ;; *) fail "package $p is on this machine ($status); the test would purge it" ;; esac
done
for d in "${dirs[@]}" "$dropin" "$blocker"; do
    [ ! -e "$d" ] || fail "$d exists; the test would remove it"
done

# State to put back.
tmp=$(mktemp -d /tmp/postern-pkgtest.XXXXXX)
chmod 755 "$tmp"
new_users=()
for u in "${users[@]}"; do getent passwd "$u" >/dev/null || new_users+=("$u"); done
cp -a "$pam" "$tmp/pam.sshd"
pam_backup_existed=0
[ ! -e "$pam.postern-backup" ] || pam_backup_existed=1
pids=()

cleanup() {
    local rc=$?
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    rm -f "$blocker" "$dropin"
    cmp -s "$tmp/pam.sshd" "$pam" || cp -a "$tmp/pam.sshd" "$pam"
    [ "$pam_backup_existed" = 1 ] || rm -f "$pam.postern-backup"
    for p in "${pkgs[@]}"; do
        if dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -qv '^un'; then
            dpkg --purge "$p" >/dev/null 2>&1 || echo "tests/packaging.sh: could not purge $p" >&2
        fi
    done
    rm -rf "${dirs[@]}"
    for u in "${new_users[@]}"; do
        if getent passwd "$u" >/dev/null; then userdel "$u"; fi
        if getent group "$u" >/dev/null; then groupdel "$u"; fi
    done
    rm -rf "$tmp"
    if [ $rc -eq 0 ]; then
        echo "tests/packaging.sh: ok ($((SECONDS - started))s)"
    else
        echo "tests/packaging.sh: FAILED (machine restored)" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

# A free TCP port on the loopback.
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 12000))   # below the ephemeral range: no outgoing source port
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    fail "no free port"
}
# Runs a command as a system user, from / (as systemd would: no supplementary root groups).
as_user() {
    local user=$1
    shift
    (cd / && exec setpriv --reuid="$user" --regid="$user" --init-groups -- "$@")
}
# The same in the background, logging to a file; the daemon's pid goes into pids.
spawn_as() {
    local user=$1 log=$2
    shift 2
    (cd / && exec setpriv --reuid="$user" --regid="$user" --init-groups -- "$@") >"$log" 2>&1 &
    pids+=($!)
}
# The ExecStart= command of an installed unit, as words.
exec_start() { sed -n 's/^ExecStart=//p' "$units/$1"; }
# Waits until a log file shows a line, while its process lives.
wait_for() {
    local log=$1 line=$2 pid=$3
    for _ in $(seq 300); do
        grep -qF -- "$line" "$log" && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; fail "process exited before: $line"; }
        sleep 0.1
    done
    cat "$log" >&2
    fail "timed out waiting for: $line"
}
# One string field of the JSON on stdin (compact or pretty-printed).
json_field() { sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p"; }
sshd_t() { mkdir -p /run/sshd && /usr/sbin/sshd -t; }

step "scripts/package"
scripts/package
version=$(dpkg-deb -f "$out"/postern_*.deb Version)
version=${version%-*}

step "GLIBC symbol versions the binaries need"
glibc=$(for b in posternd postern postern-gate postern-shim; do objdump -T "$target_dir/release/$b"; done \
    | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)
echo "   highest: $glibc (README.md: Packages)"

step "rpm -qpl, rpm -qp --requires"
declare -A rpm_files=(
    [postern]="/usr/bin/postern /usr/share/man/man1/postern.1.gz"
    [postern-ca]="/etc/postern/policy.toml /etc/postern/posternd.toml
        /usr/lib/systemd/system/posternd.service /usr/sbin/posternd
        /usr/share/man/man5/postern-policy.toml.5.gz /usr/share/man/man5/posternd.toml.5.gz
        /usr/share/man/man8/posternd.8.gz"
    [postern-gate]="/etc/postern/gate.toml /usr/lib/systemd/system/postern-gate.service
        /usr/sbin/postern-gate /usr/share/man/man5/postern-gate.toml.5.gz
        /usr/share/man/man8/postern-gate.8.gz"
    [postern-shim]="/usr/libexec/postern/postern-shim /usr/libexec/postern/unjoin
        /usr/lib/systemd/system/postern-shim-sync.service
        /usr/lib/systemd/system/postern-shim-sync.timer /usr/sbin/postern-shim
        /usr/share/man/man8/postern-shim.8.gz"
)
declare -A rpm_requires=(
    [postern]="" [postern-ca]="/usr/sbin/useradd" [postern-gate]="/usr/sbin/useradd"
    [postern-shim]="/usr/sbin/sshd"
)
for p in "${pkgs[@]}"; do
    rpm=$(ls "$out/$p-$version"-*.rpm)
    [ "$(rpm -qp --qf '%{NAME}' "$rpm")" = "$p" ] || fail "$rpm is not named $p"
    rpm -qpl "$rpm" | sort >"$tmp/got"
    tr -s '[:space:]' '\n' <<<"${rpm_files[$p]}" | sed '/^$/d' | sort >"$tmp/want"
    diff -u "$tmp/want" "$tmp/got" || fail "rpm -qpl $rpm: unexpected file list"
    rpm -qp --requires "$rpm" >"$tmp/requires"
    for r in "libc.so.6($glibc)(64bit)" ${rpm_requires[$p]}; do
        grep -qxF "$r" "$tmp/requires" || fail "rpm -qp --requires $rpm lacks $r"
    done
    # Every file in /etc is %config(noreplace): flags "cn".
    rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" | awk '$NF ~ /^\/etc\// && $1 != "cn" { exit 1 }' \
        || fail "$rpm: a file in /etc is not %config(noreplace)"
done
rpm -qp --scripts "$out"/postern-shim-"$version"-*.rpm >"$tmp/scripts"
has "$tmp/scripts" "then /usr/libexec/postern/unjoin || exit 1; fi"

step "dpkg -i ${pkgs[*]}"
# Minimal Debian images tell dpkg to skip /usr/share/man (path-exclude in /etc/dpkg/dpkg.cfg.d);
# this test needs the pages, so it includes them again (a later option wins).
if grep -qs 'path-exclude.*/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
    echo "   dpkg is configured to exclude /usr/share/man; including it for this test"
fi
dpkg_i=(dpkg -i --path-include='/usr/share/man/*')
quiet "${dpkg_i[@]}" "$out"/*.deb </dev/null

step "binaries on the PATH answer --version"
for pair in postern:/usr/bin posternd:/usr/sbin postern-gate:/usr/sbin postern-shim:/usr/sbin; do
    bin=${pair%%:*} dir=${pair#*:}
    [ "$(command -v "$bin")" = "$dir/$bin" ] || fail "$bin is not $dir/$bin on the PATH"
    v=$("$bin" --version)
    [[ "$v" == *" $version"* ]] || fail "$bin --version printed \"$v\", not $version"
done
for bin in /usr/bin/postern /usr/sbin/posternd /usr/sbin/postern-gate "$shim"; do
    if readelf -S --wide "$bin" | grep -qE '\.symtab|\.debug_'; then fail "$bin is not stripped"; fi
done

step "the shim is root-owned on a path sshd accepts; users, directories, conffiles"
path=$shim
while [ "$path" != / ]; do
    [ "$(stat -Lc '%U' "$path")" = root ] || fail "$path is not owned by root"
    [ $((0$(stat -Lc '%a' "$path") & 022)) -eq 0 ] || fail "$path is group- or world-writable"
    path=$(dirname "$path")
done
for spec in /var/lib/postern:postern:700 /var/lib/postern-gate:postern-gate:700 \
            /var/lib/postern-shim:root:755; do
    IFS=: read -r d owner mode <<<"$spec"
    [ "$(stat -c '%U:%a' "$d")" = "$owner:$mode" ] || fail "$d is $(stat -c '%U:%a' "$d"), not $owner:$mode"
done
for u in postern postern-gate; do
    IFS=: read -r _ _ uid _ _ home sh < <(getent passwd "$u")
    if [ "$uid" -ge 1000 ] || [ "$sh" != /usr/sbin/nologin ] || [ "$home" != "/var/lib/$u" ]; then
        fail "$u is not a system user with home /var/lib/$u and no shell"
    fi
done
dpkg-query -W -f='${Conffiles}\n' postern-ca postern-gate >"$tmp/conffiles"
for f in /etc/postern/posternd.toml /etc/postern/policy.toml /etc/postern/gate.toml; do
    has "$tmp/conffiles" "$f"
done
for spec in posternd.service:/var/lib/postern postern-gate.service:/var/lib/postern-gate \
            postern-shim-sync.service:/var/lib/postern-shim; do
    unit=$units/${spec%%:*}
    for line in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
                "ReadWritePaths=${spec#*:}"; do
        grep -qx -- "$line" "$unit" || fail "$unit lacks $line"
    done
    grep -qx 'CapabilityBoundingSet=' "$unit" || fail "$unit keeps capabilities"
done
[ -L /etc/systemd/system/timers.target.wants/postern-shim-sync.timer ] \
    || fail "the package did not enable postern-shim-sync.timer"
[ ! -e /etc/systemd/system/multi-user.target.wants/posternd.service ] \
    || fail "posternd.service was enabled before the CA exists"

step "man pages"
for page in postern:1 posternd:8 postern-gate:8 postern-shim:8 postern-policy.toml:5 \
            posternd.toml:5 postern-gate.toml:5; do
    name=${page%%:*} sec=${page#*:}
    LC_ALL=C MANWIDTH=80 man -P cat "$sec" "$name" >"$tmp/man" 2>"$tmp/man.err" \
        || { cat "$tmp/man.err" >&2; fail "man $sec $name shows nothing"; }
    has "$tmp/man" NAME
    has "$tmp/man" "$name"
done
LC_ALL=C MANWIDTH=80 man -P cat postern >"$tmp/man" 2>&1
has "$tmp/man" SYNOPSIS

step "systemd-analyze verify"
unit_files=("$units/posternd.service" "$units/postern-gate.service"
            "$units/postern-shim-sync.service" "$units/postern-shim-sync.timer")
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "${unit_files[@]}" 2>"$tmp/verify" || { cat "$tmp/verify" >&2; fail "systemd-analyze verify"; }
    if grep -E 'posternd|postern-gate|postern-shim' "$tmp/verify"; then fail "systemd-analyze verify warns about our units"; fi
    for u in posternd.service postern-gate.service postern-shim-sync.service; do
        systemd-analyze security --offline=true "$units/$u" 2>/dev/null | tail -1 | sed 's/^/   /' || true
    done
else
    echo "   SKIP: systemd-analyze is not available (the systemd package could not be installed)"
fi

step "posternd: init as user postern, then its unit's command with /etc/postern/posternd.toml"
port=$(free_port)
as_user postern posternd init --data-dir /var/lib/postern --cluster pkgtest.postern \
    --listen "127.0.0.1:$port" --json >"$tmp/init.json"
pin=$(json_field ca_pin <"$tmp/init.json")
[ -n "$pin" ] || fail "posternd init printed no ca_pin"
cmp -s /etc/postern/policy.toml /var/lib/postern/policy.toml \
    || fail "packaging/postern-ca/policy.toml is not the sample policy that posternd init writes"
# An admin's edit of the conffile (it must survive reinstalls below).
sed -i -e "s|^cluster = .*|cluster = \"pkgtest.postern\"|" \
       -e "s|^listen = .*|listen = \"127.0.0.1:$port\"|" \
       -e "s|^api_url = .*|api_url = \"https://127.0.0.1:$port\"|" /etc/postern/posternd.toml
cp /etc/postern/posternd.toml "$tmp/posternd.toml.edited"
as_user postern posternd check-config >/dev/null
read -ra cmd <<<"$(exec_start posternd.service)"
spawn_as postern "$tmp/ca.log" "${cmd[@]}"
wait_for "$tmp/ca.log" "posternd ready" "${pids[-1]}"
ca=https://127.0.0.1:$port
node_token=$(posternd tokens add --kind node --name pkgnode --json | json_field token)
gate_token=$(posternd tokens add --kind gateway --name pkggate --json | json_field token)
if [ -z "$node_token" ] || [ -z "$gate_token" ]; then fail "posternd tokens add printed no token"; fi

step "postern-gate: join as user postern-gate, then its unit's command with /etc/postern/gate.toml"
gport=$(free_port)
as_user postern-gate postern-gate join --state-dir /var/lib/postern-gate --ca "$ca" \
    --ca-pin "$pin" --token "$gate_token" --name pkggate --address "127.0.0.1:$gport" >/dev/null
read -ra cmd <<<"$(exec_start postern-gate.service)"
spawn_as postern-gate "$tmp/gate.log" "${cmd[@]}" --listen "127.0.0.1:$gport"
wait_for "$tmp/gate.log" "postern-gate ready" "${pids[-1]}"

step "postern-shim join --pam with the installed paths; sshd -t; the sync unit's command"
sshd_t || fail "sshd -t fails before the test changed anything"
postern-shim join --ca "$ca" --ca-pin "$pin" --token "$node_token" --name pkgnode --pam \
    --no-reload >/dev/null
has "$dropin" "AuthorizedPrincipalsCommand $shim principals %u %k %t %i %s"
sshd_t || fail "sshd -t rejects the drop-in that join wrote"
[ "$(grep -cF "pam_exec.so quiet $shim pam" "$pam")" -eq 2 ] || fail "join --pam did not add two pam_exec lines"
read -ra cmd <<<"$(exec_start postern-shim-sync.service)"
"${cmd[@]}" >"$tmp/sync.log" 2>&1 || { cat "$tmp/sync.log" >&2; fail "${cmd[*]}"; }
has "$tmp/sync.log" "bundle installed"

step "dpkg -r postern-shim refuses while sshd's configuration needs the drop-in"
# With this file, sshd -t passes only while 50-postern.conf supplies the command's user.
echo "AuthorizedPrincipalsCommand $shim principals %u %k %t %i %s" >"$blocker"
sshd_t || fail "sshd -t rejects $blocker together with the drop-in"
cp -a "$dropin" "$tmp/dropin"
cp -a "$pam" "$tmp/pam.joined"
if dpkg -r postern-shim >"$tmp/remove.log" 2>&1; then cat "$tmp/remove.log" >&2; fail "dpkg -r went ahead"; fi
has "$tmp/remove.log" "not removing $dropin"
# (dpkg keeps the package installed and configured; only the selection says "remove".)
status=$(dpkg-query -W -f='${db:Status-Status}' postern-shim)
[ "$status" = installed ] || { cat "$tmp/remove.log" >&2; fail "postern-shim is not installed any more ($status)"; }
cmp -s "$dropin" "$tmp/dropin" || fail "the refused removal changed the drop-in"
cmp -s "$pam" "$tmp/pam.joined" || fail "the refused removal changed $pam"
sshd_t || fail "sshd -t fails after the refused removal"
rm -f "$blocker"

step "dpkg -r postern-shim takes the drop-in and the pam_exec lines away; sshd -t passes"
quiet dpkg -r postern-shim
[ ! -e "$dropin" ] || fail "dpkg -r left $dropin"
[ ! -e "$shim" ] || fail "dpkg -r left $shim"
cmp -s "$pam" "$tmp/pam.sshd" || { diff -u "$tmp/pam.sshd" "$pam" >&2; fail "$pam differs from before the join"; }
sshd_t || fail "sshd -t fails after dpkg -r postern-shim"

step "conffiles: an edit survives reinstalling, and removing then installing"
sed -i 's/^max_connections = .*/max_connections = 100/' /etc/postern/gate.toml
cp /etc/postern/gate.toml "$tmp/gate.toml.edited"
quiet "${dpkg_i[@]}" "$out"/postern-ca_*.deb "$out"/postern-gate_*.deb </dev/null
cmp -s /etc/postern/posternd.toml "$tmp/posternd.toml.edited" || fail "reinstalling postern-ca replaced posternd.toml"
cmp -s /etc/postern/gate.toml "$tmp/gate.toml.edited" || fail "reinstalling postern-gate replaced gate.toml"
quiet dpkg -r postern-gate
cmp -s /etc/postern/gate.toml "$tmp/gate.toml.edited" || fail "dpkg -r postern-gate did not keep gate.toml"
quiet "${dpkg_i[@]}" "$out"/postern-gate_*.deb </dev/null
cmp -s /etc/postern/gate.toml "$tmp/gate.toml.edited" || fail "installing postern-gate again replaced gate.toml"

step "dpkg --purge: CA data kept, everything else gone"
for pid in "${pids[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
pids=()
dpkg --purge "${pkgs[@]}" >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log" >&2; fail "dpkg --purge"; }
has "$tmp/purge.log" "keeping /var/lib/postern (it holds a CA)"
[ -d /var/lib/postern/ca ] || fail "purging postern-ca deleted the CA"
for d in /etc/postern /var/lib/postern-gate /var/lib/postern-shim; do
    [ ! -e "$d" ] || fail "dpkg --purge left $d"
done
[ "$pam_backup_existed" = 1 ] || [ ! -e "$pam.postern-backup" ] || fail "purge left $pam.postern-backup"
sshd_t || fail "sshd -t fails after purging"

# postern-shim %post ($1: 1 on install, 2 on upgrade). Changes no sshd or PAM file:
# `postern-shim join` does that when the admin runs it. The sync timer is enabled (it idles
# until the join), as the deb does.
# The state directory (generate-rpm cannot package an empty directory, so it is made here).
if [ ! -d /var/lib/postern-shim ]; then install -d -m 0755 /var/lib/postern-shim; fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable postern-shim-sync.timer >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || :
        systemctl start postern-shim-sync.timer >/dev/null 2>&1 || :
    fi
    if [ ! -e /var/lib/postern-shim/joined.json ]; then
        echo "postern-shim: join this server with: POSTERN_JOIN_TOKEN=T postern-shim join --ca URL --ca-pin PIN --name NAME --pam (see postern-shim(8))"
    fi
elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0

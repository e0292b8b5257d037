# postern-gate %post ($1: 1 on install, 2 on upgrade). Like %systemd_post: the distribution's
# preset decides (postern-gate.service is not enabled unless a preset says so).
# The state directory (generate-rpm cannot package an empty directory, so it is made here).
if [ ! -d /var/lib/postern-gate ]; then
    install -d -m 0700 -o postern-gate -g postern-gate /var/lib/postern-gate
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset postern-gate.service >/dev/null 2>&1 || :
    if [ ! -e /var/lib/postern-gate/joined.json ]; then
        echo "postern-gate: next steps: runuser -u postern-gate -- postern-gate join --state-dir /var/lib/postern-gate ...;"
        echo "  systemctl enable --now postern-gate. See postern-gate(8)."
    fi
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi
exit 0

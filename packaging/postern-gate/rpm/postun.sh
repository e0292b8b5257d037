# postern-gate %postun ($1: 0 on erase, 1 on upgrade). Like %systemd_postun_with_restart.
# The state directory goes only when it is empty (host key, identity, recordings not uploaded).
if [ "$1" -eq 0 ]; then rmdir /var/lib/postern-gate 2>/dev/null || :; fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then systemctl try-restart postern-gate.service >/dev/null 2>&1 || :; fi
fi
exit 0

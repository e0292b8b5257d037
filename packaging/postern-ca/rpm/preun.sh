# postern-ca %preun ($1: 0 on erase, 1 on upgrade). Like %systemd_preun.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable posternd.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then systemctl stop posternd.service >/dev/null 2>&1 || :; fi
fi
exit 0

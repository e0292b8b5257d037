# postern-ca %post ($1: 1 on install, 2 on upgrade). Like %systemd_post: the distribution's
# preset decides (posternd.service is not enabled unless a preset says so).
# The data directory (generate-rpm cannot package an empty directory, so it is made here).
if [ ! -d /var/lib/postern ]; then install -d -m 0700 -o postern -g postern /var/lib/postern; fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset posternd.service >/dev/null 2>&1 || :
    if [ ! -d /var/lib/postern/ca ]; then
        echo "postern-ca: next steps: runuser -u postern -- posternd init --data-dir /var/lib/postern --cluster NAME --api-name HOST;"
        echo "  set cluster and api_url in /etc/postern/posternd.toml; systemctl enable --now posternd. See posternd(8)."
    fi
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi
exit 0

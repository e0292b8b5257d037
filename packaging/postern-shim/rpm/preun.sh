# postern-shim %preun ($1: 0 on erase, 1 on upgrade). Before the shim goes away, take sshd's
# drop-in and the pam_exec lines away, but only if sshd's configuration passes `sshd -t`
# without them; otherwise this fails, and rpm keeps the package (see /usr/libexec/postern/unjoin).
if [ "$1" -eq 0 ]; then
    if [ -x /usr/libexec/postern/unjoin ]; then /usr/libexec/postern/unjoin || exit 1; fi
    systemctl --no-reload disable postern-shim-sync.timer >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl stop postern-shim-sync.timer postern-shim-sync.service >/dev/null 2>&1 || :
    fi
fi
exit 0

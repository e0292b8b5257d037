# postern-shim %postun ($1: 0 on erase, 1 on upgrade). The state directory stays unless it is
# empty: sshd may still name files in it (a missing RevokedKeys file refuses every key).
if [ "$1" -eq 0 ]; then rmdir /var/lib/postern-shim 2>/dev/null || :; fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi
exit 0

# postern-gate %pre: the system user `postern-gate`, which owns /var/lib/postern-gate (made in %post).
getent group postern-gate >/dev/null || groupadd -r postern-gate
getent passwd postern-gate >/dev/null || \
    useradd -r -g postern-gate -d /var/lib/postern-gate -M -s /sbin/nologin -c "Postern gateway" postern-gate
exit 0

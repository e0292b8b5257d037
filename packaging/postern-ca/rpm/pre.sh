# postern-ca %pre: the system user `postern`, which owns /var/lib/postern (made in %post).
getent group postern >/dev/null || groupadd -r postern
getent passwd postern >/dev/null || \
    useradd -r -g postern -d /var/lib/postern -M -s /sbin/nologin -c "Postern CA daemon" postern
exit 0

#!/bin/sh
# Starts redis-server with the opsbus ACL user whose password is the docker secret redis_opsbus_password.
# Only the SHA-256 of the password is written to the ACL file (in the container's /tmp), never the password.
set -eu
secret=/run/secrets/redis_opsbus_password
[ -r "$secret" ] || { echo "redis: missing secret $secret" >&2; exit 1; }
# Trailing newlines are not part of the password ($(cat) drops them; opsbus's *_FILE variables drop one).
hash=$(printf '%s' "$(cat "$secret")" | sha256sum | cut -d' ' -f1)
# Redis ACL files allow no comments: the template's are dropped.
grep -v '^#' /usr/local/etc/redis/users.acl.template | sed "s|@OPSBUS_PASSWORD@|#$hash|" > /tmp/users.acl
exec redis-server --aclfile /tmp/users.acl "$@"

#!/bin/sh
# Builds mosquitto's password file from docker secrets, then runs the broker with deploy/mosquitto/mosquitto.conf.
# Every secret named mqtt_<user>_password becomes the account <user> (processor, bridge, publisher, operator, and one
# per worker: the worker id is the user name, see deploy/mosquitto/acl). Only salted hashes reach the file.
set -eu
passwd=/mosquitto/data/passwd
rm -f "$passwd"
touch "$passwd"
found=0
for secret in /run/secrets/mqtt_*_password; do
    [ -r "$secret" ] || continue
    user=$(basename "$secret")
    user=${user#mqtt_}
    user=${user%_password}
    mosquitto_passwd -b "$passwd" "$user" "$(cat "$secret")"
    found=1
done
[ "$found" = 1 ] || { echo "mosquitto: no /run/secrets/mqtt_<user>_password secrets; refusing to start without accounts" >&2; exit 1; }
chown mosquitto:mosquitto "$passwd"
chmod 0600 "$passwd"
# TLS files (deploy/secrets/tls, mounted read-only at /run/tls): mosquitto reads them after dropping to its own user,
# so they are copied where that user, and only it, can read the key.
certs=/mosquitto/certs
mkdir -p "$certs"
for file in ca.crt server.crt server.key; do
    [ -r "/run/tls/$file" ] || { echo "mosquitto: /run/tls/$file missing; run deploy/generate-secrets" >&2; exit 1; }
    cp "/run/tls/$file" "$certs/$file"
done
chown -R mosquitto:mosquitto "$certs"
chmod 0600 "$certs/server.key"
exec mosquitto -c /mosquitto/config/mosquitto.conf

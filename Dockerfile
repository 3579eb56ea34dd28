# Multi-stage build of the opsbus command-line tool and services.
# The toolchain the project is built and tested with (override: docker build --build-arg SWIFT_VERSION=…).
ARG SWIFT_VERSION=6.3
FROM swift:${SWIFT_VERSION}-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libmosquitto-dev libhiredis-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first (pinned by Package.resolved), so a source change does not refetch them.
COPY Package.swift Package.resolved ./
RUN swift package resolve
# Every module (OpsBusCore … OpsBusSpool, OpsBusCLI); Tests too, because SwiftPM checks that every target declared
# in Package.swift has its directory, even when building only the opsbus product.
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product opsbus && cp "$(swift build -c release --show-bin-path)/opsbus" /opsbus

FROM swift:${SWIFT_VERSION}-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libmosquitto1 libhiredis0.14 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opsbus /usr/local/bin/opsbus
# The bridge's journal and the demo worker's spool live here (volumes in docker-compose.yml).
RUN mkdir -p /var/lib/opsbus && chown nobody /var/lib/opsbus
USER nobody
# Secrets come from files (MQTT_PASSWORD_FILE, REDIS_PASSWORD_FILE, NOTIFICATION_SECRET_FILE: docker secrets).
ENTRYPOINT ["/usr/local/bin/opsbus"]

# Multi-stage build of the opsbus command-line tool and services.
FROM swift:6.0-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libmosquitto-dev libhiredis-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
RUN swift build -c release --product opsbus && cp "$(swift build -c release --show-bin-path)/opsbus" /opsbus

FROM swift:6.0-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libmosquitto1 libhiredis0.14 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opsbus /usr/local/bin/opsbus
# The bridge's journal lives here (a volume in docker-compose.yml).
RUN mkdir -p /var/lib/opsbus && chown nobody /var/lib/opsbus
USER nobody
ENTRYPOINT ["/usr/local/bin/opsbus"]

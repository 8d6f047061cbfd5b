# Spout in a container: built in the official Swift image for Debian 12, run in
# debian:bookworm-slim with only the C libraries it links (libpq, librdkafka, hiredis, libnats, librabbitmq, libcrypto).
#   docker build -t spout .
#   docker run --rm -e SPOUT_DATABASE_URL=postgresql://… -e SPOUT_SINK=kafka://broker:9092 spout run
# At least the swift-tools-version of Package.swift (6.2: swift-configuration and
# swift-service-lifecycle need it); ComposeTests checks the two agree.
ARG SWIFT_VERSION=6.2

FROM swift:${SWIFT_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev librdkafka-dev libhiredis-dev libnats-dev librabbitmq-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source change does not fetch them again.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product spout --static-swift-stdlib \
 && install -D "$(swift build -c release --show-bin-path)/spout" /out/spout

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 librdkafka1 libhiredis0.14 libnats3.4 librabbitmq4 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --shell /usr/sbin/nologin spout
COPY --from=build /out/spout /usr/local/bin/spout
USER spout
# Configured through SPOUT_* variables (see README, Configuration); `spout run --check-config`
# prints what it understood. /metrics, /healthz and /readyz on port 9187 (README, Observability);
# the health check asks /readyz on 127.0.0.1:9187 through `spout health` (no curl in the image).
ENV SPOUT_METRICS_ADDRESS=0.0.0.0:9187
EXPOSE 9187
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["spout", "health"]
ENTRYPOINT ["spout"]
CMD ["run"]

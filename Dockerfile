# One image with every feedline binary; docker-compose.yml picks the command per service.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace \
    && mkdir /out \
    && cp target/release/feedline target/release/feedline-registry target/release/feedline-gateway \
          target/release/feedline-orders target/release/feedline-customers \
          target/release/feedline-order-view target/release/feedline-bench /out/

FROM debian:bookworm-slim
# curl: compose and Kubernetes probe /health/live and /health/ready with it.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 --home /var/lib/feedline feedline \
    && mkdir -p /var/lib/feedline && chown feedline /var/lib/feedline
COPY --from=build /out/ /usr/local/bin/
USER feedline
WORKDIR /var/lib/feedline
ENV FEEDLINE_HTTP__HOST=0.0.0.0

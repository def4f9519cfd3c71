# The `orders` binary (worker and CLI) in a small runtime image.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# `orders dev` and its local services stay out of the production image.
RUN cargo build --release --locked --bin orders --no-default-features

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 orders
COPY --from=build /src/target/release/orders /usr/local/bin/orders
USER orders
ENTRYPOINT ["orders"]
CMD ["worker"]

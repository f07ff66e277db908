# syntax=docker/dockerfile:1.7
# One small image with the `phasegate` binary: the operator (`phasegate controller`) and the
# executor of inline-SQL Jobs (`phasegate apply`). Build:
#
#   docker build -t phasegate:0.1.0 .
#
# Runs as uid/gid 65532 (distroless "nonroot") with no shell and no package manager; works
# with readOnlyRootFilesystem and the `restricted` Pod Security Standard.

# ---- build -------------------------------------------------------------------------------
# The toolchain the repository is tested with (Cargo.toml's rust-version is the minimum).
FROM docker.io/library/rust:1.95-bookworm AS build
# pg_query (the PostgreSQL parser) compiles libpg_query with cc and generates bindings with
# bindgen, which needs libclang.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the tests/e2e and benches/cache_memory targets; their sources must exist
# for the manifest to load.
COPY tests ./tests
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin phasegate \
 && install -D -m 0755 target/release/phasegate /out/phasegate

# ---- runtime -----------------------------------------------------------------------------
# glibc, libgcc and CA certificates (the operator and executor use the system roots for TLS),
# nothing else. Same Debian release as the build stage, so the glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/phasegate /usr/local/bin/phasegate
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/phasegate"]
CMD ["controller"]

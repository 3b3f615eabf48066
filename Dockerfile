# syntax=docker/dockerfile:1
# Tollgate's container image: `cargo xtask image` builds it (docker or podman).
#
# Stage 1 builds the agent with its eBPF programs (clang-19 + libbpf headers); the build fails
# rather than ship an agent without them (TOLLGATE_REQUIRE_BPF=1). With PGO=1 (the default) it
# is the profile-guided build, `cargo xtask pgo` (trained against the simulator inside the
# build; llvm-19 merges the profiles, bolt-19 lays the result out): the profile ~17 % fewer
# instructions per request, BOLT's layout ~8 µs less CPU per request at one connection on top,
# twice the build time. `cargo xtask image --plain` (PGO=0) builds the plain release binary.
# Stage 2 is distroless: glibc, libgcc, CA certificates and the binary, nothing else (no shell,
# no package manager). It runs as uid 65532; the Helm chart runs it as uid 0 with only
# CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON when the kernel side is on (see deploy/helm/tollgate).

FROM rust:1-bookworm AS build
ARG PGO=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang-19 llvm-19 bolt-19 libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV TOLLGATE_CLANG=clang-19 TOLLGATE_REQUIRE_BPF=1
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=tollgate-target \
    if [ "$PGO" = 1 ]; then \
        cargo xtask pgo && install -D -m 0755 -s target/pgo/tollgate /out/tollgate; \
    else \
        cargo build --release --locked -p tollgate \
        && install -D -m 0755 -s target/release/tollgate /out/tollgate; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tollgate /usr/local/bin/tollgate
USER 65532:65532
EXPOSE 4000 4001
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve", "--config", "/etc/tollgate/tollgate.yaml"]

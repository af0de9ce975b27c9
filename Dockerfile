# The policy gateway as a container image: `mcp-policy gateway` as the entrypoint,
# running as an unprivileged user. Build and run (see the README, "In a container"):
#   docker build -t mcp-policy .
#   docker run --rm -p 8080:8080 -v "$PWD/policy.json:/etc/mcp-policy/policy.json:ro" \
#     -e MCP_POLICY_UPSTREAM=http://mcp-server:3001/mcp mcp-policy
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo install --locked --path mcp-policy --root /out

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home mcp-policy
COPY --from=build /out/bin/mcp-policy /usr/local/bin/mcp-policy
USER 10001
ENV MCP_POLICY_LISTEN=0.0.0.0:8080 \
    MCP_POLICY_POLICY=/etc/mcp-policy/policy.json \
    RUST_LOG=info
EXPOSE 8080
ENTRYPOINT ["mcp-policy", "gateway"]

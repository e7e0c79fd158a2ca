# sdns in a container: DNS on 53 (UDP and TCP), the HTTP API on 8053.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sdns
COPY pyproject.toml README.md ./
COPY sdns ./sdns
COPY backends ./backends
COPY conf ./conf
RUN pip install --no-cache-dir . \
    && setcap cap_net_bind_service=+ep "$(readlink -f "$(command -v python3)")" \
    && useradd --system --no-create-home --shell /usr/sbin/nologin sdns

USER sdns
EXPOSE 53/udp 53/tcp 8053
HEALTHCHECK --interval=10s --timeout=3s CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8053/healthz', timeout=2)"
# DNS and the API for the host's containers. No VIP balancer: inside its own network namespace a
# userspace proxy would serve this container only.
ENTRYPOINT ["sdns", "serve", "--config", "conf/sdns.toml", "--dns-addr", "0.0.0.0:53", "--api-addr", "0.0.0.0:8053", "--balancer", "off"]

# Stand-in for python:3.11-slim (test aid): Debian bookworm's python3 3.11 in a venv on PATH.
FROM local/debian:bookworm
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local/python
# Trust the host's CA bundle, so that pip works behind the CI machine's TLS-inspecting proxy.
COPY host-ca.crt /usr/local/share/ca-certificates/host-bundle.crt
RUN cp /usr/local/share/ca-certificates/host-bundle.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/usr/local/python/bin:$PATH \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    LANG=C.UTF-8
CMD ["python3"]

# A stand-in for python:3.11-slim made of Debian bookworm packages (its python3 is 3.11), for hosts
# that cannot pull from Docker Hub. docker/bases.py builds it on a debootstrap image.
ARG DEBIAN_IMAGE=bbcu-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
# python3-venv: the service images install into a virtual environment (Debian's system Python
# refuses pip installs, PEP 668); the `python` name is what the official image provides
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python
# the certificate authorities this host adds (bases.py copies /usr/local/share/ca-certificates here),
# e.g. a TLS-intercepting egress proxy's, so that pip reaches PyPI from the builds as it does here
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]

# A stand-in for redis:7-alpine made of Debian bookworm packages (redis 7.0), for hosts that cannot
# pull from Docker Hub. docker/build_bases.py builds it on a debootstrap image.
ARG DEBIAN_IMAGE=bbcu-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
# like the official image: the server runs as the unprivileged `redis` user from /data
WORKDIR /data
RUN chown redis:redis /data
USER redis
EXPOSE 6379
CMD ["redis-server"]

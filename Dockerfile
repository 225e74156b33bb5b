# One image for the etcdpy server (and its tools) and the etcdpy operator:
#   default command: etcdpy on etcd's defaults, data in /var/lib/etcd/default.etcd
#   operator:        command ["etcdpy-operator", ...]   (the Helm chart's Deployment)
#   member pods:     command ["etcdpy", ...]            (what the operator creates)
# Why one image: the operator creates member pods from <repository>:<its own version>, so the
# server and the operator that drives it always come from the same build.
#
# BASE_IMAGE must provide python3 >= 3.11 with the venv module and apt (Debian-based); CI builds
# from a locally made Debian bookworm base (scripts/image-build), users get python:3.11-slim.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
# Only the venv leaves this stage: pip, its cache, build tools and sources stay behind.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/etcdpy
# Dependencies first, from pyproject.toml alone: this layer is reused while only the code changes.
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
      >/tmp/requirements.txt \
 && /opt/etcdpy/bin/pip install --quiet -r /tmp/requirements.txt
COPY . /src
RUN /opt/etcdpy/bin/pip install --quiet --no-deps /src \
 && /opt/etcdpy/bin/pip check \
 && /opt/etcdpy/bin/pip uninstall --quiet --yes pip

FROM ${BASE_IMAGE}
# tini as PID 1 for `docker run`: it forwards SIGTERM and reaps zombies. (Kubernetes `command:`
# replaces the entrypoint; etcdpy handles SIGTERM itself as PID 1 too, and CI checks both.)
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tini >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && echo 'etcdpy:x:10001:10001:etcdpy:/var/lib/etcd:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'etcdpy:x:10001:' >>/etc/group \
 && mkdir -p /var/lib/etcd /var/lib/etcd-backups \
 && chown 10001:10001 /var/lib/etcd /var/lib/etcd-backups && chmod 0700 /var/lib/etcd /var/lib/etcd-backups
COPY --from=builder /opt/etcdpy /opt/etcdpy
ENV PATH=/opt/etcdpy/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/etcd
VOLUME ["/var/lib/etcd"]
# clients, peers, metrics/health (--listen-metrics-urls)
EXPOSE 2379 2380 2381
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="etcdpy" \
      org.opencontainers.image.description="etcd-compatible key-value server in Python, and its Kubernetes operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["etcdpy"]

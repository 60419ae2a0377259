# kserve/storage-initializer, built here for machines that reach no container registry (`make
# third-party-images-local`): the init container KServe puts before a predictor to download its storageUri.
# As upstream's python/storage-initializer.Dockerfile: KServe's storage package (PyPI kserve-storage, the chart's
# version) in a venv at /prod_venv, user kserve (uid 1000), WORKDIR /work, /mnt owned by that user, and the entrypoint
# /storage-initializer/scripts/initializer-entrypoint taking `SRC_URI DEST_DIR` pairs (the controller passes only
# args). Left out: the Kerberos/HDFS extras (a compiler and krb5 headers) and confidential-model decryption.
# Build context: images/third-party.
ARG PYTHON_BASE_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_BASE_IMAGE} AS builder
ARG KSERVE_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /prod_venv
COPY storage-initializer-constraints.txt /tmp/constraints.txt
# Wheels only (no compiler), at the dependency versions of the constraints file. The build's CA bundle is a BuildKit
# secret: pip sees it during this RUN only and no layer keeps it.
RUN --mount=type=secret,id=ca,mode=0444,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    /prod_venv/bin/pip install --only-binary=:all: -c /tmp/constraints.txt "kserve-storage==${KSERVE_VERSION#v}"

FROM ${PYTHON_BASE_IMAGE}
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/kserve --shell /usr/sbin/nologin kserve \
 && mkdir /work && chown -R kserve:kserve /mnt
COPY --from=builder /prod_venv /prod_venv
COPY initializer-entrypoint /storage-initializer/scripts/initializer-entrypoint
ENV VIRTUAL_ENV=/prod_venv \
    PATH=/prod_venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /work
USER 1000
ENTRYPOINT ["/storage-initializer/scripts/initializer-entrypoint"]

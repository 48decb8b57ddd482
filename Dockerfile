# lane-preflight: an init container that makes a model volume provably ready.
#
#   ops/build-image.sh                                    # no registry: debootstrapped base + wheelhouse
#   docker build -t lane-preflight .                      # from PyPI, on python:3.11-slim
#
# With a wheelhouse/ folder in the context every wheel comes from it (--no-index);
# without one, from the package index. Code changes rebuild only the last layers.
# Both stages carry the io.lane-preflight.stage label: the builder stage ends as an
# untagged image, and `docker image prune -f --filter label=io.lane-preflight.stage`
# removes it (ops/build-image.sh does so after each build).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
LABEL io.lane-preflight.stage=builder
# hf-xet (a 12 MB Rust client) is left out: preflight streams resolve URLs itself and only
# calls huggingface_hub's API, so the xet client would never run. HF_XET=1 keeps it.
ARG HF_XET=0
# Extras the image carries: s3 (botocore, imported only by s3:// lanes and push), gcs
# (google-auth and google-crc32c, imported only by gs:// lanes and push) and signing
# (model-signing, imported only when a lane with a signature policy is verified).
ARG EXTRAS="s3 gcs signing"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/preflight
COPY pyproject.toml wheelhouse* /wheels/
RUN set -eu; \
    index=""; if ls /wheels/*.whl >/dev/null 2>&1; then index="--no-index --find-links /wheels"; fi; \
    python3 -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; \
print("\n".join(p["dependencies"] + [d for e in sys.argv[2].split() for d in p["optional-dependencies"][e]]))' \
        /wheels/pyproject.toml "$EXTRAS" >/tmp/requirements.txt; \
    /opt/preflight/bin/pip install --quiet $index -r /tmp/requirements.txt; \
    if [ "$HF_XET" = 0 ]; then /opt/preflight/bin/pip uninstall --quiet -y hf-xet; fi
# What the dependencies bring but preflight never runs goes here, each removal with its
# reason in ops/slim-venv.py: botocore's data for services other than S3 and the credential
# chain's, packages no verification imports (rich, pygments, ...), test data, stubs, debug
# sections. It fails the build when a botocore or dependency upgrade moves what it keeps.
COPY ops/slim-venv.py /tmp/slim-venv.py
RUN /opt/preflight/bin/python /tmp/slim-venv.py /opt/preflight

COPY pyproject.toml README* /src/
COPY preflight /src/preflight
RUN set -eu; \
    index=""; if ls /wheels/*.whl >/dev/null 2>&1; then index="--no-index --find-links /wheels"; fi; \
    /opt/preflight/bin/pip install --quiet $index --no-deps /src; \
    /opt/preflight/bin/python -m pip uninstall --quiet -y pip setuptools; \
    find /opt/preflight -name __pycache__ -type d -prune -exec rm -rf {} +; \
    /opt/preflight/bin/python -X no_debug_ranges -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/preflight/lib; \
    /opt/preflight/bin/preflight --version

FROM ${BASE_IMAGE}
LABEL io.lane-preflight.stage=runtime
# /models is owned by the runtime user so a fresh named volume mounted there is writable.
RUN echo 'preflight:x:65532:65532::/tmp:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'preflight:x:65532:' >>/etc/group \
 && mkdir -p /models /etc/preflight \
 && chown 65532:65532 /models
COPY --from=builder /opt/preflight /opt/preflight
ENV PATH=/opt/preflight/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PREFLIGHT_MANIFEST=/etc/preflight/manifest.yaml \
    PREFLIGHT_MODELS_DIR=/models
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["preflight"]
CMD ["sync"]
# Last, so a new revision relabels the image without rebuilding a layer.
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="lane-preflight" \
      org.opencontainers.image.description="Init container that validates and fetches model files before inference starts" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

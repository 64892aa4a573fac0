# Karmchari on a slim Python, as an unprivileged user. The default command is
# the old service's command line; see compose.yaml for a Redis to go with it.
#
# Reproducible: the base image is an exact version (no Docker engine or registry
# access where this was written, so no digest; on a build host, pin it further
# with the digest `docker buildx imagetools inspect python:3.12.16-slim-trixie`
# prints: FROM python:3.12.16-slim-trixie@sha256:...). Every package comes from
# requirements.lock (runtime, with Granian) or requirements-build.lock
# (setuptools), with hashes; docs/operations.md says how to regenerate them.
FROM python:3.12.16-slim-trixie AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-build.lock
COPY . .
# client/ is the karmchari-client distribution the server depends on: built
# here from source, as the server is (it is on no index).
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels ./client .

FROM python:3.12.16-slim-trixie
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin karmchari
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps --no-index /wheels/*.whl && rm -rf /wheels
USER karmchari
EXPOSE 51463
# Liveness of the process; /readyz would also say whether Redis answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:51463/healthz', timeout=2)"]
ENTRYPOINT ["karmchari"]
# Listening beyond loopback, Karmchari refuses to start without tokens:
# set KARMCHARI_TOKENS (or mount a --tokens-file). Granian is installed:
# KARMCHARI_SERVER=granian (or --server granian) serves with it.
CMD ["serve", "-port", "51463", "-shost", "redis:6379", "--host", "0.0.0.0"]

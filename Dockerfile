# Karmchari on a slim Python, as an unprivileged user. The default command is
# the old service's command line; see compose.yaml for a Redis to go with it.
FROM python:3.12-slim AS build
WORKDIR /src
COPY . .
# client/ is the karmchari-client distribution the server depends on.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./client .

FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin karmchari
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels karmchari && rm -rf /wheels
USER karmchari
EXPOSE 51463
# Liveness of the process; /readyz would also say whether Redis answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:51463/healthz', timeout=2)"]
ENTRYPOINT ["karmchari"]
# Listening beyond loopback, Karmchari refuses to start without tokens:
# set KARMCHARI_TOKENS (or mount a --tokens-file).
CMD ["serve", "-port", "51463", "-shost", "redis:6379", "--host", "0.0.0.0"]

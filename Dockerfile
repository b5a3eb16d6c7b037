# The dbaccess broker (API, gateway and reaper in one process), as an image.
#
# Two stages: the first compiles the native DataRow masking core
# (server/gateway/_rowmask.c) into a wheel and installs it in a virtualenv;
# the second copies that virtualenv onto the same base without a compiler and
# runs as an unprivileged user.  Configuration comes from a mounted config
# file (docs/deploy.md), secrets from mounted files or the environment.
#
#   docker build -t dbaccess .
#   docker run -v ./server.yaml:/etc/dbaccess/server.yaml:ro dbaccess
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY common ./common
COPY brokercli ./brokercli
COPY server ./server
RUN python -m venv /opt/dbaccess \
    && /opt/dbaccess/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/dbaccess/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/dbaccess/bin/pip install --no-cache-dir /wheels/*.whl \
    && /opt/dbaccess/bin/python -c "import server.gateway._rowmask"

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/dbaccess --create-home \
        --shell /usr/sbin/nologin dbaccess \
    && mkdir -p /etc/dbaccess
COPY --from=build /opt/dbaccess /opt/dbaccess
ENV PATH=/opt/dbaccess/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/dbaccess
# The API (HTTPS) and the gateway (PostgreSQL protocol over TLS).
EXPOSE 8443 6432
STOPSIGNAL SIGTERM
ENTRYPOINT ["dbaccess-server"]
CMD ["run", "--config", "/etc/dbaccess/server.yaml"]

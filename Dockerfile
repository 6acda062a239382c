# The rampmon image: `rampmon` is the entrypoint, so the command is a subcommand
# (worker, ramp, simulate, replay, ...). docker-compose.yml and deploy/kubernetes use it.
FROM python:3.11.10-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# a venv copied whole into the runtime stage: no compilers or pip caches ship
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# metadata first: dependency layers are reused while only the sources change
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY streams ./streams
COPY alerts ./alerts
# pyproject installs bench too ([tool.setuptools] packages): without it `pip install .` fails
# ("package directory 'bench' does not exist"); its results stay out (.dockerignore)
COPY bench ./bench
RUN pip install .

FROM python:3.11.10-slim-bookworm

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAMPMON_DATA_DIR=/var/lib/rampmon
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/rampmon --create-home rampmon
COPY --from=build /opt/venv /opt/venv
# the installed package's default config path points into site-packages, where no config
# is installed: commands in the image pass `-c /etc/rampmon/experiments.yaml`, and a mount
# replaces this copy in real deployments
COPY deploy/experiments.yaml /etc/rampmon/experiments.yaml

USER 10001
WORKDIR /var/lib/rampmon
EXPOSE 6066
ENTRYPOINT ["rampmon"]
CMD ["worker", "-c", "/etc/rampmon/experiments.yaml"]

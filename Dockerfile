# The restoration service: one image for the API (`python -m app serve`), the Celery worker
# (`python -m app worker`) and migrations (`python -m app migrate`); the `standin` target adds
# the ComfyUI stand-in from fixtures/ for compose, and `e2e-worker` adds coverage for the e2e tier.
# Every target installs the versions uv.lock pins, as the nox sessions do.
#
#   docker build -t restoration .                       # from PyPI, on the official Python image
#   docker build --target standin -t restoration-standin .
#
# Air-gapped builds (ci/images/build.py) pass another PYTHON_IMAGE, put wheels downloaded on the
# host into ci/wheelhouse/ and set PIP_INSTALL_OPTIONS=--no-index.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# uv.lock as one requirements file per target (pip installs them; uv stays out of the images).
FROM ${PYTHON_IMAGE} AS requirements
ARG PIP_INSTALL_OPTIONS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY ci/wheelhouse/ /tmp/wheels/
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install ${PIP_INSTALL_OPTIONS} --find-links /tmp/wheels uv
WORKDIR /lock
COPY pyproject.toml uv.lock ./
RUN export="/opt/uv/bin/uv export --frozen --no-hashes --no-emit-project --no-default-groups" \
    && $export --output-file runtime.txt \
    && $export --only-group standin --output-file standin.txt \
    && $export --only-group coverage --output-file coverage.txt

FROM ${PYTHON_IMAGE} AS runtime
ARG PIP_INSTALL_OPTIONS=""
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && useradd --system --uid 10001 --home-dir /srv restoration
WORKDIR /srv
COPY ci/wheelhouse/ /tmp/wheels/
COPY --from=requirements /lock/runtime.txt /tmp/requirements.txt
RUN pip install ${PIP_INSTALL_OPTIONS} --find-links /tmp/wheels -r /tmp/requirements.txt
COPY pyproject.toml README.md alembic.ini ./
COPY backend/ backend/
# Editable, as in a checkout: `python -m app migrate` finds alembic.ini and the migrations beside
# the package, and coverage maps the code to backend/app like everywhere else. The dependencies
# are in already, at the locked versions.
RUN pip install ${PIP_INSTALL_OPTIONS} --find-links /tmp/wheels --no-deps -e . \
    && rm -rf /tmp/wheels /tmp/requirements.txt
USER restoration
EXPOSE 8000
CMD ["python", "-m", "app", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS standin
ARG PIP_INSTALL_OPTIONS=""
USER root
COPY ci/wheelhouse/ /tmp/wheels/
COPY --from=requirements /lock/standin.txt /tmp/requirements.txt
RUN pip install ${PIP_INSTALL_OPTIONS} --find-links /tmp/wheels -r /tmp/requirements.txt \
    && rm -rf /tmp/wheels /tmp/requirements.txt
COPY fixtures/__init__.py fixtures/__init__.py
COPY fixtures/comfyui/ fixtures/comfyui/
USER restoration
EXPOSE 8188
CMD ["python", "-m", "fixtures.comfyui", "--host", "0.0.0.0", "--port", "8188"]

# The worker as the e2e tier runs it on Docker (fixtures/worker_container.py): the runtime image
# plus coverage, so the tier measures the worker in its container too.
FROM runtime AS e2e-worker
ARG PIP_INSTALL_OPTIONS=""
USER root
COPY ci/wheelhouse/ /tmp/wheels/
COPY --from=requirements /lock/coverage.txt /tmp/requirements.txt
RUN pip install ${PIP_INSTALL_OPTIONS} --find-links /tmp/wheels -r /tmp/requirements.txt \
    && rm -rf /tmp/wheels /tmp/requirements.txt
USER restoration
CMD ["python", "-m", "app", "worker"]

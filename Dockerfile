# The real-time service (serve.py) for one training run, on the CPU.
#
#   docker build -t modelsphere-serve --build-arg RUN_DIR=outputs/train/<run> .
#   docker run --rm -p 8000:8000 -e MODELSPHERE_API_KEY modelsphere-serve
#
# Two stages: `build` installs the pinned core, serve and onnx dependencies
# into a venv and exports the run's ONNX graph; the final image holds only
# that venv, the run dir (read-only, the graph cached in it), conf/ and
# serve.py, and runs as an unprivileged user. GPU serving: build from a CUDA
# base image with torch's CUDA wheel and run with serve.engine=torch device=cuda.
# tests/tooling/test_dockerfile.py lints this file with hadolint and runs its
# install and export steps in a fresh venv where no container engine is found.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# torch's CPU build first: requirements.txt's torch==2.13.0 accepts 2.13.0+cpu.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY requirements.txt requirements-serve.txt requirements-onnx.txt ./
RUN pip install --no-cache-dir -r requirements-serve.txt -r requirements-onnx.txt
COPY pyproject.toml README.md LICENSE ./
COPY src/ src/
RUN pip install --no-cache-dir --no-deps .
ARG RUN_DIR
COPY ${RUN_DIR} /srv/run
RUN python -m modelsphere.inference.onnx_cache /srv/run

FROM ${PYTHON_IMAGE}
RUN useradd --no-log-init --create-home --uid 10001 modelsphere
COPY --from=build /opt/venv /opt/venv
COPY --from=build /srv/run /srv/run
COPY conf/ /srv/conf/
COPY serve.py /srv/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/modelsphere
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
CMD ["python", "/srv/serve.py", "run_dir=/srv/run", "serve.host=0.0.0.0", "serve.port=8000", "paths.outputs_dir=/home/modelsphere/outputs"]

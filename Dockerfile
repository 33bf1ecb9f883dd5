# syntax=docker/dockerfile:1
# One image for the Airflow components and Celery workers, the MLflow server, the API and the dashboard.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BOOKREC_ROOT=/opt/bookrec

# git: DVC versions the pipeline inside a git repository; curl: health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.* curl=7.88.* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin bookrec

WORKDIR /opt/bookrec
COPY requirements.lock ./
# The CPU build of torch (the lock pins torch==2.13.0+cpu); boto3 and dvc-s3 for MinIO/S3.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock \
 && pip install boto3==1.44.5 dvc-s3==3.3.0

COPY pyproject.toml README.md params.yaml dvc.yaml data.dvc .dvcignore ./
COPY .dvc/config .dvc/.gitignore .dvc/
COPY pipeline ./pipeline
COPY dags ./dags
COPY dashboard ./dashboard
COPY docker/entrypoint.sh /usr/local/bin/bookrec-entrypoint
RUN pip install --no-deps -e . \
 && mkdir -p data models reports mlruns logs \
 && chown -R bookrec:bookrec /opt/bookrec

USER 10001
ENTRYPOINT ["/usr/local/bin/bookrec-entrypoint"]
CMD ["bookrec", "--help"]

#!/bin/sh
# The project folder is a named volume shared by every service (Docker fills it from the image on first
# use). DVC needs a git repository: create one, once, with the code the image was built from.
set -eu
cd "${BOOKREC_ROOT:-/opt/bookrec}"
if [ ! -d .git ]; then
  git init -q
  git -c user.name=bookrec -c user.email=bookrec@localhost add -A >/dev/null 2>&1 || true
  git -c user.name=bookrec -c user.email=bookrec@localhost commit -qm "code of the image" >/dev/null 2>&1 || true
fi
# Inside the compose network MinIO is http://minio:9000, not the host's 127.0.0.1:9000.
if [ -n "${DVC_S3_ENDPOINT:-}" ]; then
  dvc remote modify --local minio endpointurl "$DVC_S3_ENDPOINT" >/dev/null 2>&1 || true
fi
exec "$@"

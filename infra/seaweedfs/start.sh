#!/bin/sh
# SeaweedFS as the S3 store: writes the one S3 identity from the environment, then starts
# master, volume server, filer and S3 gateway in one process. Run by the compose service and,
# with ports and a folder of their own appended, by the tests (tests/helpers/s3.py).
#   S3_ACCESS_KEY, S3_SECRET_KEY   the credentials every S3 client must sign with
#   S3_CONFIG_FILE                 where the identity file is written (default /tmp/s3-identities.json)
#   WEED                           the weed binary (default: weed on PATH)
set -eu
: "${S3_ACCESS_KEY:?set S3_ACCESS_KEY}"
: "${S3_SECRET_KEY:?set S3_SECRET_KEY}"
config="${S3_CONFIG_FILE:-/tmp/s3-identities.json}"
umask 077
cat >"$config" <<JSON
{"identities": [{"name": "wd-pipeline",
  "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
# A bucket is made on purpose, never by a first upload: a mistyped bucket name stays an error.
exec "${WEED:-weed}" server -filer -s3 -s3.config="$config" -s3.autoCreateBucket=false \
  -s3.port.iceberg=0 -s3.port.lance=0 "$@"

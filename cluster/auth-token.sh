#!/usr/bin/env bash
# Run once where you run `ray up` (and `ray job submit`), before `ray up cluster/aws.yaml` or gcp.yaml:
#   bash cluster/auth-token.sh
# Makes the cluster's Ray auth token with Ray's own `ray get-auth-token --generate` at Ray's default
# path, ~/.ray/auth_token, unless a token is already there (then it is kept), and makes it readable by
# you only. The launcher configs ship that file to ~/.ray/auth_token on every node (file_mounts); the
# job CLI reads it from the same path here once RAY_AUTH_MODE=token is set. The token is never printed.
set -euo pipefail
umask 077                                   # a new ~/.ray and auth_token are yours only
token="${HOME}/.ray/auth_token"
# RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH would make Ray read a token elsewhere instead of writing this file.
env -u RAY_AUTH_TOKEN -u RAY_AUTH_TOKEN_PATH ray get-auth-token --generate >/dev/null
chmod 600 "$token"                          # also an older token, e.g. one a local ray.init made
echo "Ray auth token: $token (mode 600; file_mounts copies it to every node)"

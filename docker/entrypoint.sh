#!/bin/sh
# The image's entrypoint: `entrypoint COMMAND [ARG...]` runs COMMAND as a non-root user.
#
# Started as root (the image's default user: SageMaker, its SDK's local mode and a plain
# `docker run` start it so), it does one thing as root: it prepares the folders the job writes,
# OPT_ML/model, OPT_ML/output, OPT_ML/output/data and OPT_ML/checkpoints (OPT_ML defaults to
# /opt/ml), creating any that is missing and handing them, with what is in them, to the user the
# job runs as. Platforms mount these root-owned: SageMaker in the cloud, and Docker creates missing
# bind-mount folders as root (the SDK's local mode). Then it drops root with setpriv (util-linux)
# and execs COMMAND; no Python runs before that.
#
# The user the job runs as: the owner of OPT_ML/output when that is not root (a folder mounted from
# your machine, e.g. the SDK's local mode run by you: the results stay yours), else uid 1000 (the
# image's `job` user). Started as any other user (`docker run --user UID:GID`), it prepares nothing
# and runs COMMAND as that user directly.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: entrypoint COMMAND [ARG...]" >&2
    exit 64
fi
if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

root="${OPT_ML:-/opt/ml}"
uid=1000
gid=1000
if [ -d "$root/output" ] && [ "$(stat -c %u "$root/output")" != 0 ]; then
    uid="$(stat -c %u "$root/output")"
    gid="$(stat -c %g "$root/output")"
    [ "$gid" != 0 ] || gid="$uid"
fi

for dir in "$root/model" "$root/output" "$root/output/data" "$root/checkpoints"; do
    # Only what is not the user's already changes hands (a restart finds most of it done).
    if ! { mkdir -p "$dir" && find "$dir" \( ! -user "$uid" -o ! -group "$gid" \) -exec chown -h "$uid:$gid" {} +; }; then
        echo "entrypoint: could not hand $dir to uid $uid; the job names it if it cannot write there" >&2
    fi
done

home=/home/job
[ "$uid" = 1000 ] || home=/tmp
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups env HOME="$home" "$@"

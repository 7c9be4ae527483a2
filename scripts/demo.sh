#!/usr/bin/env bash
# `make demo`: the whole local flow on CPU, each step printed with where its results are:
# sample subjects -> synthetic dataset -> a short tiny training run -> serving its final/ over HTTP
# (local Ray Serve) -> an HTTP request -> the video.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-out}
PORT=${PORT:-8000}
step() { printf '\n== %s\n' "$*"; }

step "1/5 subject images -> $OUT/subjects"
"$BIN/polyvivid" sample-subjects --out "$OUT/subjects"

step "2/5 synthetic multi-subject dataset -> $OUT/demo/data"
"$BIN/polyvivid" synth-data --out "$OUT/demo/data" --videos 8 --size 32 --frames 9

step "3/5 training (tiny preset, both stages) -> $OUT/demo/run (progress.json, checkpoints/, final/)"
rm -rf "$OUT/demo/run"
"$BIN/polyvivid" train manifests/examples/demo-training.yaml --output "$OUT/demo/run" --dataset "$OUT/demo/data"

# The API token the service requires (demo-service.yaml names a token Secret; locally it is this variable),
# and that `polyvivid request` sends.
POLYVIVID_API_TOKEN=${POLYVIVID_API_TOKEN:-$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))')}
export POLYVIVID_API_TOKEN

step "4/5 serving $OUT/demo/run/final at http://127.0.0.1:$PORT (jobs in $OUT/demo/jobs)"
"$BIN/polyvivid" serve manifests/examples/demo-service.yaml --local --port "$PORT" \
  --model "$OUT/demo/run/final" --output "$OUT/demo/jobs" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT

step "5/5 HTTP request: POST /v1/videos, poll, download"
"$BIN/polyvivid" request "http://127.0.0.1:$PORT" --wait-ready 300 \
  --prompt "A man plays the guitar in a park" \
  --subject "man=$OUT/subjects/man.png" --subject "guitar=$OUT/subjects/guitar.png" \
  --num-frames 9 --height 64 --width 64 --steps 8 --seed 0 --output "$OUT/demo.mp4"

printf '\ndone: video %s; training run %s/demo/run; job records %s/demo/jobs\n' "$OUT/demo.mp4" "$OUT" "$OUT"

#!/usr/bin/env bash
# What the gate keeper loads back after a Redis restart once the harness's
# closed campaigns are archived (POST /api/v1/campaigns/{id}/archive).
# Run from the repository root with the local stack up (scripts/stack up).
# The steps as they were run on 2026-12-07 (commit 959a7f5's binaries).
set -euo pipefail
source scripts/lib.sh && source target/stack/secrets.env
redis_held
# 1. Archive the closed `load …` campaigns not archived yet.
time (psql "$(pg_url coupons)" -Atc "SELECT id FROM campaigns WHERE state = 'closed' AND archived_at IS NULL AND name LIKE 'load %'" |
  while read -r id; do
    APP_AUTH__ADMIN_TOKEN="$LOCAL_ADMIN_TOKEN" target/release/issuer-worker campaigns archive "$id" >/dev/null
  done)
sleep 5
redis_held
# 2. Restart Redis (its AOF is reloaded; every campaign's meta is fenced),
#    and watch the keeper rebuild every kept campaign.
before=$(grep -c "gate state rebuilt" target/stack/logs/worker.log)
date -u +%T
redis-cli -p "$REDIS_PORT" shutdown || true
scripts/stack up > /dev/null
for _ in $(seq 1 20); do
  sleep 15
  echo "$(date -u +%T) rebuilt=$(( $(grep -c "gate state rebuilt" target/stack/logs/worker.log) - before )) $(redis-cli -p "$REDIS_PORT" info memory | grep used_memory_human | tr -d '\r')"
done
sed 's/\x1b\[[0-9;]*m//g' target/stack/logs/worker.log | grep "gate state rebuilt" | tail -n +"$((before + 1))" |
  awk '{print $NF}' | sort | uniq -c

#!/usr/bin/env bash
# Make the local PostgreSQL and Redis the tests need reachable: install the Debian packages when
# missing, start the servers when down; install Prometheus (promtool and the server the alert and
# scrape tests run), Chromium (the dashboard test) and wrk (the gateway benchmark) when missing.
# Idempotent; skips a service whose URL points elsewhere.
set -euo pipefail

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    echo "installing PostgreSQL"; apt_install postgresql
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  conf=/etc/postgresql/$ver/main
  if ! grep -q "tickflow trust" "$conf/pg_hba.conf" 2>/dev/null; then
    printf 'host all all 127.0.0.1/32 trust # tickflow trust\nhost all all ::1/128 trust # tickflow trust\nlocal all all trust # tickflow trust\n' | $SUDO tee "$conf/pg_hba.conf.new" >/dev/null
    cat "$conf/pg_hba.conf" | $SUDO tee -a "$conf/pg_hba.conf.new" >/dev/null
    $SUDO mv "$conf/pg_hba.conf.new" "$conf/pg_hba.conf"
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  pg_up || { echo "PostgreSQL did not start" >&2; exit 1; }
fi
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE test" 2>/dev/null || true
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='root'" 2>/dev/null | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE ROLE root SUPERUSER LOGIN" 2>/dev/null || true

if ! redis_up; then
  command -v redis-server >/dev/null 2>&1 || { echo "installing Redis"; apt_install redis-server; }
  mkdir -p /tmp/tickflow-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /tmp/tickflow-redis --logfile /tmp/tickflow-redis/redis.log
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "Redis did not start" >&2; exit 1; }
fi
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "installing Prometheus"; apt_install --no-install-recommends prometheus
  # The package starts a server on :9090 where systemd runs; the tests start their own on free ports.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
# Debian's Chromium for the dashboard's browser test (playwright drives it; its own browser download is not used)
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "installing Chromium (dashboard test)"; apt_install chromium || echo "Chromium not installed: the dashboard test will skip" >&2
fi
# wrk, the HTTP load generator of the gateway benchmark
command -v wrk >/dev/null 2>&1 || { echo "installing wrk (gateway benchmark)"; apt_install wrk || echo "wrk not installed: make bench skips the query-load rows" >&2; }
echo "services: PostgreSQL and Redis reachable on 127.0.0.1; promtool $(promtool --version 2>&1 | awk 'NR==1{print $3}')"

#!/usr/bin/env bash
# Prometheus, promtool, Alertmanager and amtool for the deploy/ checks and the end-to-end
# alerting test, from Debian's packages (prometheus 2.42, prometheus-alertmanager 0.25).
# Installs only what is missing; without root or apt-get it says what to install instead.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # the packages start their services where an init system runs; the tests start their own
    for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
        (command -v service >/dev/null 2>&1 && service "$svc" stop >/dev/null 2>&1) || true
    done
else
    echo "missing ${need[*]}: install them (e.g. sudo apt-get install ${need[*]})," \
         "or the Prometheus/Alertmanager tests are skipped (CI fails on them)" >&2
fi

#!/usr/bin/env bash
# The workshop proxy's certificate from an ACME CA (Let's Encrypt by default) through certbot, Debian's package:
# HTTP-01 through the proxy's own nginx (--webroot: certbot writes the token under $ROOT/acme/www, nginx serves it
# on the plain-HTTP port), the certificate copied beside nginx.conf and nginx reloaded by the deploy hook, which
# certbot records with the lineage so every renewal runs it too.
# https://eff-certbot.readthedocs.io/en/stable/using.html#webroot and #renewing-certificates (read 2026-12-07)
# Env: ACTION (install|issue|renew|renew-loop|deploy), ROOT (the proxy's folder), DOMAIN, SERVER (ACME directory),
#      EMAIL (optional), CA_BUNDLE (optional: a private CA that signs the ACME server's own HTTPS), EVERY (seconds
#      between renewal tries, renew-loop), FORCE (1: renew now, not only near the end; for a test of the hook).
set -euo pipefail
: "${ACTION:?}" "${ROOT:?}"
ACME="$ROOT/acme"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi

certbot_cmd() {
  # Our own folders, not /etc/letsencrypt: the workshop's account and certificate go with it at `down`, and a
  # non-root login user can run it.
  if [ -n "${CA_BUNDLE:-}" ]; then export REQUESTS_CA_BUNDLE="$CA_BUNDLE"; fi
  certbot --config-dir "$ACME/config" --work-dir "$ACME/work" --logs-dir "$ACME/logs" --non-interactive "$@"
}

renew_once() {
  local extra=()
  if [ "${FORCE:-0}" = 1 ]; then extra+=(--force-renewal); fi
  # certbot renews only a certificate within 30 days of its end, so trying twice a day costs nothing.
  certbot_cmd renew --no-random-sleep-on-renew "${extra[@]}"
}

case "$ACTION" in
  install)
    if ! command -v certbot >/dev/null; then
      if ! command -v apt-get >/dev/null; then
        echo "workshop-acme: certbot is not installed and there is no apt-get to install it" >&2
        exit 1
      fi
      echo "installing certbot from the distribution's packages"
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends certbot >/dev/null \
        || { $SUDO apt-get update -qq \
             && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends certbot \
                >/dev/null; }
    fi
    mkdir -p "$ACME/www" "$ACME/config" "$ACME/work" "$ACME/logs"
    certbot --version 2>&1
    ;;
  issue)
    : "${DOMAIN:?}" "${SERVER:?}"
    contact=(--register-unsafely-without-email)
    if [ -n "${EMAIL:-}" ]; then contact=(--email "$EMAIL"); fi
    certbot_cmd certonly --agree-tos "${contact[@]}" --server "$SERVER" --webroot -w "$ACME/www" -d "$DOMAIN" \
      --cert-name workshop --key-type ecdsa --deploy-hook "env ACTION=deploy ROOT=$ROOT bash $ROOT/acme.sh"
    ;;
  renew)
    renew_once
    ;;
  renew-loop)
    while true; do
      renew_once || echo "workshop-acme: renewal failed; trying again in ${EVERY:-43200}s" >&2
      sleep "${EVERY:-43200}"
    done
    ;;
  deploy)
    # certbot sets RENEWED_LINEAGE (the live folder) for deploy hooks.
    lineage="${RENEWED_LINEAGE:-$ACME/config/live/workshop}"
    install -m 644 "$lineage/fullchain.pem" "$ROOT/cert.pem.new"
    install -m 600 "$lineage/privkey.pem" "$ROOT/cert.key.new"
    if [ "$(id -u)" = 0 ]; then chown --reference="$ROOT" "$ROOT/cert.pem.new" "$ROOT/cert.key.new"; fi
    mv -f "$ROOT/cert.pem.new" "$ROOT/cert.pem"
    mv -f "$ROOT/cert.key.new" "$ROOT/cert.key"
    # A reload (HUP): new workers take the new certificate, replies in flight finish on the old ones.
    if [ -s "$ROOT/nginx.pid" ]; then kill -HUP "$(cat "$ROOT/nginx.pid")"; fi
    echo "installed the certificate for ${RENEWED_DOMAINS:-the workshop} and reloaded nginx"
    ;;
  *)
    echo "workshop-acme: unknown ACTION $ACTION" >&2
    exit 2
    ;;
esac

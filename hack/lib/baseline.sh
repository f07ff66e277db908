# Sourced by the benchmarks that compare this tree with a baseline commit (bench-scale.sh,
# bench-order.sh). Needs ROOT, WORK (a cache directory of the benchmark), BASELINE_REF, log
# and die.

# This tree's operator, a release build.
build_current() {
  local target="${CARGO_TARGET_DIR:-${ROOT}/target}"
  log "building the operator of this tree (release; CARGO_TARGET_DIR=${target})"
  (cd "${ROOT}" && cargo build -q --release --bin phasegate) >&2
  echo "${target}/release/phasegate"
}

# The baseline is built once per commit in a cached worktree with its own target directory.
build_baseline() {
  local sha bin src="${WORK}/baseline-src" target="${WORK}/baseline-target"
  sha="$(git -C "${ROOT}" rev-parse --verify "${BASELINE_REF}^{commit}")" || die "unknown BASELINE_REF ${BASELINE_REF}"
  bin="${WORK}/bin/phasegate-${sha:0:12}"
  if [[ -x "${bin}" ]]; then
    log "have the baseline operator ${BASELINE_REF} (${sha:0:12}): ${bin}"
    echo "${bin}"
    return
  fi
  if [[ ! -e "${src}/.git" ]]; then
    git -C "${ROOT}" worktree prune
    git -C "${ROOT}" worktree add --detach "${src}" "${sha}" >&2
  else
    git -C "${src}" checkout -q --detach "${sha}"
  fi
  # Seed a new baseline target directory from this tree's release build: the dependencies
  # are (mostly) the same, so only what changed is compiled again.
  local seed="${CARGO_TARGET_DIR:-${ROOT}/target}/release"
  if [[ ! -d "${target}/release" && -d "${seed}" ]]; then
    log "seeding ${target} from ${seed}"
    mkdir -p "${target}" && cp -a "${seed}" "${target}/release"
    # Cargo keys a workspace crate's fingerprint by its path inside the workspace, so the
    # seeded one looks like the baseline's own and only source mtimes newer than it force a
    # rebuild: make them all newer, or an untouched file would keep this tree's code.
    find "${src}" -path "${src}/target" -prune -o -name '*.rs' -exec touch {} +
  fi
  log "building the baseline operator ${BASELINE_REF} (${sha:0:12}, release, CARGO_TARGET_DIR=${target}) ..."
  (cd "${src}" && CARGO_TARGET_DIR="${target}" cargo build -q --release --bin phasegate) >&2
  mkdir -p "${WORK}/bin"
  cp -f "${target}/release/phasegate" "${bin}.tmp" && mv -f "${bin}.tmp" "${bin}"
  echo "${bin}"
}


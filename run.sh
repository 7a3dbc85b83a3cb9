#!/usr/bin/env bash
# diffaug-nb's two commands. Both create (or reuse) the local virtual environment .venv first.
#   bash run.sh main [diffaug-nb main options]   the main job on the embedded default
#   bash run.sh test                             everything CI runs (.ci/run calls exactly this)
# Other sub-commands: `bash run.sh setup` (just the venv), `bash run.sh cli ARGS` (any diffaug-nb command).
set -euo pipefail
cd "$(dirname "$0")"
# packages are installed without byte-compiling them all (most of torch is never imported): Python compiles what is
# imported, once, if it may write it
unset PYTHONDONTWRITEBYTECODE
VENV=${DIFFAUG_VENV:-.venv}
PY=${PYTHON:-python3}
start=$(date +%s)
# a stage's heading, with the seconds since this command started (where the time of a slow run went)
say() { echo "== [$(( $(date +%s) - start )) s] $*"; }

# pip's settings (its index, mirror folders and constraints: `pip config list`) as uv options, so that uv installs
# what pip would, from the same places. A local location that does not exist is left out (pip only warns about it).
uv_opts() {
  local cfg; cfg=$("$VENV/bin/python" -m pip config list 2>/dev/null || true)
  local key flag v
  for key in index-url extra-index-url find-links constraint; do
    case $key in constraint) flag=--constraint ;; *) flag=--$key ;; esac
    for v in $(printf '%s\n' "$cfg" | sed -n "s/^[^.]*\.$key='\(.*\)'$/\1/p" | head -1); do
      [[ ( $v == file://* || $v != *://* ) && ! -e ${v#file://} ]] && continue
      printf '%s\n%s\n' "$flag" "$v"
    done
  done
}

pip_q() {   # pip, without the warnings about the missing mirror folders this machine's pip.conf names
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v -e "^WARNING: Location 'file:" -e "is neither a file nor a directory" >&2)
}

install_deps() {
  # uv unpacks the wheels in parallel (torch with its CUDA libraries is 5.5 GB in the venv): in fresh-ci here the
  # install took 97 s with pip and 29 s with uv. Where uv cannot be installed or fails, pip does the same install.
  # torchattacks pins an old `requests` that clashes with jupyterlab's: its real needs are in pyproject.toml, so it
  # goes in without its own dependencies
  local opts=()
  if pip_q install -q uv && mapfile -t opts < <(uv_opts); then
    local uv=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --index-strategy unsafe-best-match --no-cache ${opts[@]+"${opts[@]}"})
    "${uv[@]}" -e ".[dev]" && "${uv[@]}" --no-deps "torchattacks>=3.5" && return 0
  fi
  echo "!! installing with uv failed: installing with pip"
  pip_q install -q --no-compile -e ".[dev]"
  pip_q install -q --no-compile --no-deps "torchattacks>=3.5"
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
  fi
  # reinstall only when the dependencies change (the stamp is keyed by pyproject.toml)
  local stamp="$VENV/.diffaug-installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    say "installing diffaug-nb and its dependencies into $VENV (torch==2.14.1 from this machine's disk)"
    install_deps
    rm -f "$VENV"/.diffaug-installed-*; touch "$stamp"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
  # papermill's kernel must be this venv's python
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
}

browser_deps() {
  # the browser tests drive Debian's chromium (no browser download). This is the one place that installs it:
  # as root directly, as a user through passwordless sudo; the tests skip (saying why) where neither works.
  [ -x "${DIFFAUG_CHROMIUM:-/usr/bin/chromium}" ] && return 0
  command -v apt-get >/dev/null 2>&1 || { echo "!! no apt-get: the browser tests will be skipped (they say why)"; return 0; }
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo -n); else
      echo "!! not root and no sudo: cannot install chromium; the browser tests will be skipped"; return 0; fi
  fi
  say "installing chromium for the browser tests (apt)"
  { ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "!! could not install chromium: the browser tests will be skipped (they say why)"
}

check_sync() {
  # notebooks are the source: exporting and cleaning must not change any tracked file
  say "nbdev-export / nbdev-clean must leave tracked files unchanged"
  nbdev-export && nbdev-clean
  local changed; changed=$(git status --porcelain -- nbs diffaug_nb)
  if [ -n "$changed" ]; then
    echo "!! nbdev-export/nbdev-clean changed these files: export and clean, then commit them:"; echo "$changed"
    git --no-pager diff --stat -- nbs diffaug_nb
    return 1
  fi
}

case "${1:-}" in
  setup) setup ;;
  main) shift; setup; exec diffaug-nb main "$@" ;;
  cli) shift; setup; exec diffaug-nb "$@" ;;
  test)
    # tests are many small tensor ops in parallel processes: one OpenMP thread each avoids oversubscription
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    setup; browser_deps
    check_sync
    say "ruff check (pyflakes rules; config in pyproject.toml)"
    ruff check .
    say "nbdev-test (notebooks in nbs/)"
    nbdev-test --n-workers 2 --timing
    say "pytest (tests/)"
    # two workers, each test file on one worker (module fixtures run once). The files that take longest (measured:
    # docs/browser, the papermill end-to-end runs, the process launchers) go first and in this order, so the last
    # files a worker takes are short ones (xdist would otherwise order files by test count: the long ones came last)
    # (the browser file comes after the report: its docs test then finds the docs site built by test_docs.py)
    slow="tests/test_docs.py tests/test_report.py tests/test_browser.py tests/test_sample_quality.py tests/test_robustness.py
          tests/test_cli.py tests/test_sweep_submitit.py tests/test_guidance_experiment.py tests/test_adversarial.py
          tests/test_distributed.py tests/test_adversarial_experiment.py tests/test_few_shot_experiment.py"
    rest=$(ls tests/test_*.py | grep -vxF -f <(printf '%s\n' $slow))
    python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 $slow $rest
    echo "== all tests passed in $(( $(date +%s) - start )) s"
    ;;
  *) sed -n 2,6p "$0"; exit 2 ;;
esac

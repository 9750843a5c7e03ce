#!/usr/bin/env bash
# A real `vercel build` of this app without a Vercel account (`make vercel-build` runs it; the
# pinned CLI and uv come from `make vercel-tools`). Only the package registries are reached: PyPI
# for the function's dependencies, npm when static/vendor is missing. (The CLI also asks Vercel's API
# who the user is, fails, and retries for some seconds: harmless.)
#
#   tests/vercel_build.sh OUT_DIR [vercel build flags]   Build Output API folder in OUT_DIR
#                                                          (config.json, functions/python.func/, ...)
#   tests/vercel_build.sh --check                        say what a build would lack; exit 1 if anything
#   tests/vercel_build.sh --python                       print the Python 3.12 the build uses
#
# How: the files of this checkout (git ls-files: tracked and untracked-but-not-ignored, plus the
# fetched static/vendor) minus .vercelignore are copied to a temporary staging folder next to
# OUT_DIR, because the local Python builder globs the whole project folder and does not read
# .vercelignore (a deployment upload does). The staging copy gets a placeholder
# .vercel/project.json (without one `vercel build --yes` asks for an account and builds nothing),
# its uv cache is linked to $TOOLS/cache/uv so later builds are warm, and it is built with
# `vercel build --yes --standalone` (plus the flags given; default --prod): --standalone copies
# every file into the function folder, so OUT_DIR stands alone after the staging copy is removed.
#
# Python: the builder needs a real `python3.12` on PATH (otherwise uv tries to download one from
# GitHub). Set PYTHON312=/path/to/python3.12, or one is looked for on PATH (a pyenv shim whose
# global version is not 3.12 does not count), in pyenv's versions folder, in /usr/local/bin,
# /usr/bin, and among uv's installed Pythons. Debian 12 has no python3.12 package.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=$(realpath -m "${TOOLS:-$ROOT/.tools}")
VERCEL_CLI_VERSION=${VERCEL_CLI_VERSION:-58.10.0}
UV_VERSION=${UV_VERSION:-0.10.11}
VERCEL=$TOOLS/node_modules/.bin/vercel
PROJECT_JSON='{"projectId":"prj_placeholder","orgId":"team_placeholder","settings":{"framework":"python","rootDirectory":null,"buildCommand":null,"installCommand":null,"outputDirectory":null,"devCommand":null,"nodeVersion":"20.x"}}'

is_python312() { [ -n "$1" ] && [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
# The interpreter itself, not a pyenv shim (which resolves per folder: not in the staging copy or as another user).
real_python() { "$1" -c 'import sys; print(sys.executable)'; }

find_uv() {
  if [ -x "$TOOLS/uv/bin/uv" ]; then echo "$TOOLS/uv/bin/uv"; else command -v uv || true; fi
}

find_python312() {
  local candidate
  for candidate in "${PYTHON312:-}" "$(command -v python3.12 || true)" \
      $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 \
             /usr/local/bin/python3.12 /usr/bin/python3.12 2>/dev/null | sort -rV); do
    if is_python312 "$candidate"; then real_python "$candidate"; return; fi
  done
  local uv; uv=$(find_uv)
  if [ -n "$uv" ]; then
    candidate=$(UV_PYTHON_DOWNLOADS=never "$uv" python find --no-project 3.12 2>/dev/null || true)
    if is_python312 "$candidate"; then real_python "$candidate"; return; fi
  fi
}

check() {
  local missing=() version uv
  version=$([ -f "$TOOLS/node_modules/vercel/package.json" ] && node -p "require('$TOOLS/node_modules/vercel/package.json').version" 2>/dev/null || true)
  [ "$version" = "$VERCEL_CLI_VERSION" ] || missing+=("the Vercel CLI $VERCEL_CLI_VERSION in $TOOLS (found: ${version:-none}): run \`make vercel-tools\` (needs node and npm)")
  uv=$(find_uv)
  version=$([ -n "$uv" ] && "$uv" --version 2>/dev/null | cut -d' ' -f2 || true)
  # Below 0.9.25 the builder would `pip install --user` a uv of its own.
  [ "$(printf '0.9.25\n%s\n' "$version" | sort -V | head -1)" = 0.9.25 ] && [ -n "$version" ] ||
    missing+=("uv >= 0.9.25 (found: ${version:-none}): run \`make vercel-tools\` (uv $UV_VERSION into $TOOLS/uv)")
  [ -n "$(find_python312)" ] || missing+=("Python 3.12 (the Vercel builder's runtime version; Debian 12 has no package): install one (pyenv install 3.12, or uv python install 3.12 where GitHub is reachable) and/or set PYTHON312=/path/to/python3.12")
  for tool in node make rsync; do command -v "$tool" >/dev/null || missing+=("$tool: apt-get install -y $tool"); done
  if [ ${#missing[@]} -gt 0 ]; then printf '%s\n' "${missing[@]}"; return 1; fi
}

case "${1:-}" in
  --check) check; exit ;;
  --python) python=$(find_python312); [ -n "$python" ] || exit 1; echo "$python"; exit ;;
  ""|-*) echo "usage: $0 OUT_DIR [vercel build flags] | --check | --python" >&2; exit 2 ;;
esac
if ! problems=$(check); then echo "vercel-build: missing:" >&2; echo "$problems" >&2; exit 1; fi

OUT=$(realpath -m "$1"); shift
FLAGS=("$@"); [ ${#FLAGS[@]} -gt 0 ] || FLAGS=(--prod)
PYTHON=$(find_python312)
UV=$(find_uv)
mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d "$(dirname "$OUT")/.vercel-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/project
mkdir -p "$STAGE"

cd "$ROOT"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # Tracked files not matched by .vercelignore, untracked files matched by neither ignore file, and
  # the fetched (git-ignored) front-end files; files deleted from the working tree are skipped.
  # (OUT_DIR and the staging folder are left out too, should they sit in an untracked folder of the checkout.)
  { git ls-files -z --cached | sort -z \
      | comm -z -23 - <(git ls-files -z --cached --ignored --exclude-from=.vercelignore | sort -z)
    git ls-files -z --others --exclude-standard --exclude-from=.vercelignore
    git ls-files -z --others --exclude-from=.vercelignore -- static/vendor
  } | while IFS= read -r -d '' file; do
        case "$ROOT/$file" in "$OUT"/*|"$WORK"/*) continue ;; esac
        [ -f "$file" ] && printf '%s\0' "$file"
      done \
    | rsync -a --from0 --files-from=- ./ "$STAGE/"
else
  # Not a git checkout: everything except .vercelignore's patterns (rsync reads the anchored ones alike).
  rsync -a --exclude-from=.vercelignore --exclude=/.vercel/ --exclude="/$(basename "$WORK")/" ./ "$STAGE/"
fi

mkdir -p "$STAGE/.vercel/python/cache" "$TOOLS/cache/uv" "$WORK/cli-config"
echo "$PROJECT_JSON" > "$STAGE/.vercel/project.json"
# The builder keeps its uv cache (and the last uv.lock) in .vercel/python/cache/uv: share the wheels
# between builds, but resolve requirements.txt afresh as a first deployment does.
ln -s "$TOOLS/cache/uv" "$STAGE/.vercel/python/cache/uv"
rm -f "$TOOLS/cache/uv/uv.lock"

# A short PATH: the pinned tools, the Python 3.12, node/npm and the system folders. pyenv's shims would
# make each `uv python list` of the builder run every shim (seconds), and could shadow the Python 3.12.
PATH="$TOOLS/node_modules/.bin:$(dirname "$UV"):$(dirname "$PYTHON"):$(dirname "$(command -v node)"):$(dirname "$(command -v npm || command -v node)"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export PATH VERCEL_TELEMETRY_DISABLED=1 NO_UPDATE_NOTIFIER=1
# A build on Vercel runs `make assets` at top level: do not hand this make's flags and variables down.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES
echo "vercel-build: $("$UV" --version), Python $("$PYTHON" -c 'import platform; print(platform.python_version())') at $PYTHON; staging copy $STAGE"
# --global-config: the CLI's own settings and auth file go to a throwaway folder, not ~/.local/share.
(cd "$STAGE" && "$VERCEL" build --yes --standalone --global-config "$WORK/cli-config" "${FLAGS[@]}" </dev/null)
# Without a project.json (or on some CLI errors) `vercel build` exits 0 having built nothing.
[ -f "$STAGE/.vercel/output/config.json" ] || { echo "vercel-build: no .vercel/output/config.json was produced" >&2; exit 1; }
rm -rf "$OUT"
mv "$STAGE/.vercel/output" "$OUT"
echo "vercel-build: Build Output in $OUT"

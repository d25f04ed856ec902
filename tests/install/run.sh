#!/usr/bin/env bash
# tests/install/run.sh BUILD_DIR THIS_DIR - the installed library, as a user gets it:
# `cmake --install` into a temp prefix, then consumer.c (outside the tree) built four
# ways against that copy: with pkg-config against the shared and the static library,
# and with find_package(cnerium CONFIG) against cnerium::cnerium and
# cnerium::cnerium_static. Each program runs; the shared ones load libcnerium.so.0 from
# the prefix, the static ones need no libcnerium at all; the static one then serves a
# durable POST and its replay on a free loopback port. Exit 0 when all of it holds.
set -euo pipefail
build=$1
here=$2
work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "install test: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$work/prefix" >/dev/null
pc=$(find "$work/prefix" -name cnerium.pc -print -quit)
[ -n "$pc" ] || fail "no cnerium.pc installed"
export PKG_CONFIG_PATH
PKG_CONFIG_PATH=$(dirname "$pc")
libdir=$(realpath "$(pkg-config --variable=libdir cnerium)")
[ -e "$libdir/libcnerium.so.0" ] || fail "no libcnerium.so.0 in $libdir"
[ -e "$libdir/libcnerium.a" ] || fail "no libcnerium.a in $libdir"
[ ! -e "$work/prefix/include/cnerium/outbox.h" ] || fail "outbox.h installed without its library"

# pkg-config, shared and static: libcnerium.a picked explicitly (both are there), its
# dependencies shared, as README "Using the library" says (`pkg-config --static` would
# also ask for the static archives of libpq's own dependencies, which Debian does not
# ship).
cc -std=c11 -Wall -Wextra -Werror -o "$work/pc_shared" "$here/consumer.c" \
    $(pkg-config --cflags --libs cnerium) -Wl,-rpath,"$libdir"
deps=$(pkg-config --variable=dependencies cnerium)
cc -std=c11 -Wall -Wextra -Werror -o "$work/pc_static" "$here/consumer.c" \
    $(pkg-config --cflags cnerium) -L"$libdir" -Wl,-Bstatic -lcnerium -Wl,-Bdynamic \
    $(pkg-config --libs $deps) -lpthread -lm

# find_package(cnerium CONFIG).
cmake -S "$here" -B "$work/cm" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_C_FLAGS="-Wall -Werror" \
    >"$work/cm.log" 2>&1 || { cat "$work/cm.log" >&2; fail "find_package(cnerium) failed"; }
cmake --build "$work/cm" >"$work/cmb.log" 2>&1 || { cat "$work/cmb.log" >&2; fail "build against the package failed"; }

for prog in "$work/pc_shared" "$work/pc_static" "$work/cm/consumer_shared" "$work/cm/consumer_static"; do
    out=$("$prog") || fail "$prog exited $?"
    [ "$out" = "consumer: ok" ] || fail "$prog said: $out"
    # ldd's whole output first: grep -q leaving a pipe early would fail it (pipefail).
    libs=$(ldd "$prog")
    case "$prog" in
    *shared) [[ "$libs" == *"libcnerium.so.0 => $libdir/libcnerium.so.0"* ]] ||
                 fail "$prog does not load libcnerium.so.0 from the prefix: $libs" ;;
    *static) [[ "$libs" != *libcnerium* ]] || fail "$prog needs a shared libcnerium: $libs" ;;
    esac
done

# The statically linked program serves: a durable POST runs, its retry replays.
mkfifo "$work/out"
"$work/pc_static" --serve --host 127.0.0.1 --port 0 --workers 1 --data-dir "$work/data" \
    >"$work/out" 2>"$work/err" &
pid=$!
port=
exec 3<"$work/out"
while IFS= read -r -t 30 line <&3; do
    case "$line" in
    "listening on http://127.0.0.1:"*) port=${line##*:}; break ;;
    esac
done
[ -n "$port" ] || { cat "$work/err" >&2; fail "the static program did not start"; }
post() {
    exec 4<>"/dev/tcp/127.0.0.1/$port"
    printf 'POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}' >&4
    timeout 10 cat <&4
    exec 4<&-
}
first=$(post)
again=$(post)
case "$first" in "HTTP/1.1 201"*) ;; *) fail "first POST: $first" ;; esac
case "$again" in *"Idempotent-Replayed: true"*) ;; *) fail "retry did not replay: $again" ;; esac
echo "install test: ok (libdir $libdir)"

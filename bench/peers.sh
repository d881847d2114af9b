#!/bin/sh
# The peers `make bench` compares against: wrk (the load generator), nginx
# (Debian's nginx-light) and Go (Debian's golang-go, whose net/http file server the
# bench builds from bench/go_peer/main.go). Installed here only when missing and
# running as root with apt-get; otherwise the bench says which rows or columns it
# cannot measure.
missing=""
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
command -v go >/dev/null 2>&1 || missing="$missing golang-go"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing$missing" >&2
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing \
        || echo "bench: could not install$missing; it will be reported missing" >&2
else
    echo "bench: not installed:$missing (as root: apt-get install$missing)" >&2
fi
exit 0

#!/bin/sh
# The peers `make bench` compares against: wrk (the load generator) and nginx
# (Debian's nginx-light). Installed here only when missing and running as root
# with apt-get; otherwise the bench says which rows or columns it cannot measure.
missing=""
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing$missing" >&2
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing \
        || echo "bench: could not install$missing; it will be reported missing" >&2
else
    echo "bench: not installed:$missing (as root: apt-get install$missing)" >&2
fi
exit 0

#!/bin/sh
# The official image compiles protected mode off; Debian's build has it on, which refuses clients
# arriving through docker-proxy. Turn it off unless the command already decides.
set -e

# Like the official entrypoint: `docker run IMAGE --flag` and `docker run IMAGE x.conf` mean redis-server.
case "$1" in
    -* | *.conf) set -- redis-server "$@" ;;
esac

if [ "$1" = 'redis-server' ]; then
    case " $* " in
        *' --protected-mode '*) ;;
        *) set -- "$@" --protected-mode no ;;
    esac
fi

exec "$@"

#!/bin/sh
# For every PRODSEARCH_<NAME>_FILE variable, read the file (a Docker secret) into
# PRODSEARCH_<NAME>, so that secrets live in files mounted at run time, never in the image
# or in `docker inspect` output. Then run `prodsearch <args>`.
set -eu
for var in $(env | sed -n 's/^\(PRODSEARCH_[A-Z0-9_]*\)_FILE=.*/\1/p'); do
    file=$(printenv "${var}_FILE")
    if [ ! -r "$file" ]; then
        echo "entrypoint: ${var}_FILE names $file, which cannot be read" >&2
        exit 2
    fi
    export "$var=$(cat "$file")"
    unset "${var}_FILE"
done
exec prodsearch "$@"

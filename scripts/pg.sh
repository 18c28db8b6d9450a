# Throwaway PostgreSQL server for tests (sourced by scripts/test.sh).
# pg_start exports FEATURELENS_TEST_DATABASE_URL; pg_stop removes everything.
pg_start() {
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    PGDATA=$(mktemp -d /tmp/featurelens-pg.XXXXXX)
    PGPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$PGDATA"
        _pg() { (cd / && su postgres -s /bin/sh -c "$1"); }
    else
        _pg() { sh -c "$1"; }
    fi
    _pg "$PGBIN/initdb -D $PGDATA -U postgres -A trust -E UTF8 --no-sync >$PGDATA.initdb.log 2>&1"
    _pg "$PGBIN/pg_ctl -D $PGDATA -o \"-p $PGPORT -k $PGDATA -c listen_addresses=127.0.0.1\" -l $PGDATA/server.log -w -t 30 start" >/dev/null
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres featurelens_test
    export FEATURELENS_TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/featurelens_test"
    export PGBIN PGDATA PGPORT
    echo "PostgreSQL test server on 127.0.0.1:$PGPORT" >&2
}
pg_stop() {
    [ -n "${PGDATA:-}" ] || return 0
    _pg "$PGBIN/pg_ctl -D $PGDATA -m fast -w stop" >/dev/null 2>&1 || true
    rm -rf "$PGDATA" "$PGDATA.initdb.log"
}

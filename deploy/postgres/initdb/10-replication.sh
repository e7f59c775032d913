#!/bin/sh
# Runs once, when the postgres image initialises an empty data volume
# (/docker-entrypoint-initdb.d): lets the pg-backup service open the replication connection
# pg_basebackup needs, with a password like any other connection. An existing volume needs this
# line added to its pg_hba.conf by hand (then `SELECT pg_reload_conf()`).
set -eu
echo "host replication all all scram-sha-256" >>"$PGDATA/pg_hba.conf"

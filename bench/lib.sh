# Shared by the bench scripts (source it after setting TMP): the pids a script starts,
# stopped with TMP removed on exit (kept when KEEP_TMP=1), free loopback ports, and a
# throwaway PostgreSQL and nginx.
PIDS=()
PG_DIR=""
cleanup() {
  local p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  if [[ -n "$PG_DIR" ]]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PG_DIR" -m immediate stop >/dev/null 2>&1 || true
  fi
  [[ "${KEEP_TMP:-0}" == 1 ]] || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# free_port tcp|both: a free 127.0.0.1 port; `both` = free for TCP and UDP (the gateway's
# TCP tunnel listener takes the UDP tunnel's port number by default)
free_port() {
  python3 - "$1" <<'EOF'
import socket, sys
for _ in range(200):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    if sys.argv[1] == "tcp":
        print(port); sys.exit(0)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port); sys.exit(0)
sys.exit("no free port")
EOF
}

# start_postgres [SERVER OPTIONS]: a throwaway PostgreSQL from $PGBIN in $TMP/pg, run as the
# postgres user (it refuses root) in dirs it owns, fsync off, on a free port; sets PGPORT
# and PG_URL. cleanup stops it.
start_postgres() {
  PGPORT=$(free_port tcp)
  mkdir -p "$TMP/pg" "$TMP/pgsock"
  chown postgres "$TMP/pg" "$TMP/pgsock"
  runuser -u postgres -- "$PGBIN/initdb" -D "$TMP/pg" -U postgres --auth=trust >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; exit 1; }
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pg" -l "$TMP/pg/server.log" -w \
    -o "-p $PGPORT -k $TMP/pgsock -c listen_addresses=127.0.0.1 -c fsync=off $*" start >/dev/null
  PG_DIR="$TMP/pg"
  PG_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
}

# start_nginx: one nginx worker serving $TMP/www (write it first) on a free loopback port,
# without an access log; sets NGINX_PORT. cleanup stops it.
start_nginx() {
  NGINX_PORT=$(free_port tcp)
  mkdir -p "$TMP/nginx"
  cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/client_body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$NGINX_PORT; root $TMP/www; }
}
EOF
  nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' &
  PIDS+=("$!")
}

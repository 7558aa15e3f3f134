# Shared by the bench scripts (source it after setting TMP): the pids a script starts,
# stopped with TMP removed on exit (kept when KEEP_TMP=1), and free loopback ports.
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
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

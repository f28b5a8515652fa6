#!/usr/bin/env bash
# Starts (once) a throwaway PostgreSQL server that stands in for Redshift in the integration tests, and prints the
# settings as shell `export` lines on stdout; everything else goes to stderr. Usage in CI:
#
#   eval "$(bash hack/postgres.sh)"
#
# The server listens on 127.0.0.1 only, keeps its files under $CDI_PG_DIR, runs as the `postgres` OS user when
# started by root (PostgreSQL refuses to run as root) and as the calling user otherwise, and has fsync off: its
# data is disposable. Re-running while it is up changes nothing and prints the same lines.
#
# Why a small proxy sits in front of it: redshift_connector always sends Redshift-only startup parameters
# (client_protocol_version, driver_version, os_version, driver_discovery_version) that PostgreSQL rejects with
# FATAL 42704 "unrecognized configuration parameter", and it fails to parse PostgreSQL's server_version
# ("15.18 (Debian …)"). The proxy on $CDI_PG_PORT drops exactly those parameters from the startup packet, trims
# server_version to "15.18", and then relays bytes untouched; PostgreSQL itself listens on $CDI_PG_SERVER_PORT. Without them
# the driver falls back to PostgreSQL's text protocol, as it does against any server that does not announce
# Redshift's binary one.
#
# Passwords are checked with md5: redshift_connector 2.2 fails PostgreSQL's SCRAM-SHA-256 handshake (it parses the
# SASL mechanism list with an empty trailing name that current scramp rejects).
#
# The login role `cdi` is a SUPERUSER, so that the test fixtures can create schemas, tables and the unprivileged
# roles the permission tests connect as. It owns the database `cdi`.
#
# Environment: CDI_PG_DIR (default /tmp/cdi-pg), CDI_PG_PORT (default 55432, what clients use), CDI_PG_SERVER_PORT
# (default CDI_PG_PORT + 1), CDI_PG_PASSWORD (default cdi-test-password), CDI_PG_PYTHON (default python3).
# Stop everything with: bash hack/postgres.sh stop
set -euo pipefail

dir=${CDI_PG_DIR:-/tmp/cdi-pg}
port=${CDI_PG_PORT:-55432}
server_port=${CDI_PG_SERVER_PORT:-$((port + 1))}
password=${CDI_PG_PASSWORD:-cdi-test-password}
python=${CDI_PG_PYTHON:-python3}
role=cdi
database=cdi
data="$dir/data"
log() { printf '[postgres] %s\n' "$*" >&2; }

pg_bindir() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$found" ] && command -v pg_config >/dev/null 2>&1; then
    found=$(pg_config --bindir)
  fi
  [ -n "$found" ] && [ -x "$found/initdb" ] && printf '%s\n' "$found"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

bindir=$(pg_bindir || true)
if [ -z "$bindir" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "PostgreSQL is not installed; run this as root, or: sudo apt-get install -y postgresql"
    exit 1
  fi
  log "installing PostgreSQL from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
  bindir=$(pg_bindir)
fi

# Run a command as the OS user that owns the server.
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  as_owner() { runuser -u postgres -- "$@"; }
  mkdir -p "$dir"
  chown postgres: "$dir"
else
  as_owner() { "$@"; }
  mkdir -p "$dir"
fi
chmod 0711 "$dir"

if [ "${1:-}" = stop ]; then
  [ -f "$dir/proxy.pid" ] && kill "$(cat "$dir/proxy.pid")" 2>/dev/null || true
  rm -f "$dir/proxy.pid"
  as_owner "$bindir/pg_ctl" -D "$data" -m fast stop >&2 || true
  exit 0
fi

if [ ! -f "$data/PG_VERSION" ]; then
  log "creating the cluster in $data"
  pwfile="$dir/.pw"
  (umask 077 && printf '%s\n' "$password" >"$pwfile")
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pwfile"; fi
  as_owner "$bindir/initdb" -D "$data" -U "$role" --pwfile="$pwfile" --auth-local=trust --auth-host=md5 \
    --no-sync --encoding=UTF8 --locale=C.UTF-8 >&2
  rm -f "$pwfile"
fi

if ! as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
  log "starting PostgreSQL on 127.0.0.1:$server_port"
  as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -c port=$server_port -c unix_socket_directories=$dir -c fsync=off \
     -c synchronous_commit=off -c full_page_writes=off -c max_connections=50 -c password_encryption=md5" \
    >&2 || {
    log "failed to start; the server log says:"
    tail -n 30 "$dir/server.log" >&2 || true
    exit 1
  }
fi

# Idempotent setup over the local socket (trusted): the role has the password given now, the database exists.
psql_owner() {
  as_owner "$bindir/psql" -h "$dir" -p "$server_port" -U "$role" -d postgres -v ON_ERROR_STOP=1 -qAt "$@"
}
escaped=${password//\'/\'\'}
psql_owner -c "ALTER ROLE $role WITH SUPERUSER LOGIN PASSWORD '$escaped'" >&2
if [ "$(psql_owner -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" != 1 ]; then
  psql_owner -c "CREATE DATABASE $database OWNER $role" >&2
fi

read -r -d '' proxy <<'PY' || true
import socket, struct, sys, threading

REDSHIFT_ONLY = {b"client_protocol_version", b"driver_version", b"os_version", b"driver_discovery_version"}
SSL_REQUEST, GSSENC_REQUEST, PROTOCOL_3 = 80877103, 80877104, 196608


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise EOFError
        data += part
    return data


def forward_startup(client, server):
    while True:
        (length,) = struct.unpack("!I", read_exact(client, 4))
        body = read_exact(client, length - 4)
        (code,) = struct.unpack("!I", body[:4])
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            server.sendall(struct.pack("!I", length) + body)
            answer = read_exact(server, 1)
            client.sendall(answer)
            if answer == b"N":
                continue
            return
        if code == PROTOCOL_3:
            parts = body[4:].split(b"\0")
            pairs = zip(parts[0::2], parts[1::2])
            kept = b"".join(k + b"\0" + v + b"\0" for k, v in pairs if k and k not in REDSHIFT_ONLY)
            body = body[:4] + kept + b"\0"
        server.sendall(struct.pack("!I", len(body) + 4) + body)
        return


def forward_greeting(server, client):
    """Relays the server's messages up to the first ReadyForQuery, trimming server_version to a plain version."""
    while True:
        head = read_exact(server, 5)
        body = read_exact(server, struct.unpack("!I", head[1:])[0] - 4)
        if head[:1] == b"S" and body.startswith(b"server_version\0"):
            value = body[len(b"server_version\0") : -1].split(b" ")[0]
            body = b"server_version\0" + value + b"\0"
            head = b"S" + struct.pack("!I", len(body) + 4)
        client.sendall(head + body)
        if head[:1] in (b"Z", b"E"):
            return


def pump(src, dst):
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve(client, server_port):
    try:
        server = socket.create_connection(("127.0.0.1", server_port))
    except OSError:
        client.close()
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        forward_startup(client, server)
    except (OSError, EOFError):
        client.close()
        server.close()
        return
    ahead = threading.Thread(target=pump, args=(client, server), daemon=True)
    ahead.start()
    try:
        forward_greeting(server, client)
    except (OSError, EOFError):
        pass
    else:
        pump(server, client)
    ahead.join()
    client.close()
    server.close()


def main():
    listen_port, server_port = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.create_server(("127.0.0.1", listen_port), backlog=64)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, server_port), daemon=True).start()


main()
PY

if ! listening "$port"; then
  log "starting the startup-parameter proxy on 127.0.0.1:$port"
  nohup setsid "$python" -c "$proxy" "$port" "$server_port" >>"$dir/proxy.log" 2>&1 </dev/null &
  echo $! >"$dir/proxy.pid"
  for _ in $(seq 100); do
    listening "$port" && break
    sleep 0.1
  done
  listening "$port" || {
    log "the proxy did not start; see $dir/proxy.log"
    exit 1
  }
fi

log "ready"
printf 'export CDI_PG_HOST=127.0.0.1 CDI_PG_PORT=%s CDI_PG_USER=%s CDI_PG_PASSWORD=%q CDI_PG_DATABASE=%s\n' \
  "$port" "$role" "$password" "$database"

#!/usr/bin/env bash
# scripts/windows-check, inside its network namespace (only loopback): Wine's prefix and server
# are made here (a wineserver from outside would put the agent's sockets in the other network),
# then the checks. Arguments: WORK (python/ and dist/ ready), the wheels folder, the version.
set -euo pipefail
WORK=$1 WHEELS=$2 VERSION=$3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WINE=/usr/lib/wine/wine64
export WINEPREFIX=$WORK/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
started=$(date +%s)
say() { echo "windows-check [inside ${VERSION}, $(( $(date +%s) - started ))s]: $*"; }
fail() { echo "windows-check: FAILED on CPython $VERSION: $*" >&2; exit 1; }
win() { local p=${1//\//\\}; printf 'Z:%s' "$p"; }  # a Linux path as Wine's Z: drive names it

BACKGROUND=()
cleanup() {
  for pid in "${BACKGROUND[@]}"; do kill "$pid" 2>/dev/null || true; done
  timeout 30 /usr/lib/wine/wineserver -k 2>/dev/null || true
  for pid in "${BACKGROUND[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# CPython under Wine dies at start when stdout or stderr is a regular file: always a pipe.
wrun() {  # wrun SECONDS PROGRAM ARGS...: a Windows program to its end, its output on ours
  local seconds=$1
  shift
  timeout "$seconds" "$WINE" "$@" 2>&1 < /dev/null | cat
  return "${PIPESTATUS[0]}"
}

ip link set lo up
PY=$WORK/python
SCRIPTS=$PY/Scripts
# The embeddable build runs site (for Lib\site-packages) only when its ._pth says so.
sed -i 's/^#import site/import site/' "$PY"/python3*._pth
# Wine 8.0: platform.system() aborts in propsys.VariantToString through CPython's _wmi (3.12+),
# and pip and keyring (jaraco.context) call it; without _wmi, platform asks `ver` instead.
rm -f "$PY/_wmi.pyd"

say "making the Wine prefix"
wrun 180 wineboot -i > "$WORK/wineboot.log" || fail "wineboot: $(tail -3 "$WORK/wineboot.log")"

say "pip (under Wine) installs the locked win_amd64 wheels, then the fluidity wheel, offline"
mkdir -p "$WORK/pip"
(cd "$WORK/pip" && python3 -m zipfile -e "$(ls "$WHEELS"/pip-*.whl)" .)
PIP=("$(win "$PY/python.exe")" "$(win "$WORK/pip/pip/__main__.py")" install -q --disable-pip-version-check
  --no-warn-script-location --no-index)
wrun 600 "${PIP[@]}" --find-links "$(win "$WHEELS")" --require-hashes \
  -r "$(win "$ROOT/requirements.lock")" -r "$(win "$ROOT/requirements-windows.lock")" || fail "pip install of the lock"
wrun 300 "${PIP[@]}" --no-deps "$(win "$(ls "$WORK"/dist/fluidity-*.whl)")" || fail "pip install of the wheel"
FLUIDITY=$(win "$SCRIPTS/fluidity.exe")
[ -f "$SCRIPTS/fluidity.exe" ] || fail "pip wrote no Scripts\\fluidity.exe"

say "fluidity --version"
version=$(wrun 120 "$FLUIDITY" --version) || fail "fluidity --version: $version"
wheel_version=$(basename "$WORK"/dist/fluidity-*.whl | cut -d- -f2)
[ "$(echo "$version" | tr -d '\r')" = "fluidity $wheel_version" ] || fail "fluidity --version said: $version"

say "fluidity certs init"
cd "$WORK"
out=$(wrun 120 "$FLUIDITY" certs init --dir certs) || fail "certs init: $out"
for f in ca.pem server.pem server.key client.pem client.key; do [ -s "certs/$f" ] || fail "certs init wrote no $f"; done
chmod 600 certs/*.key  # Wine writes files 0644, which the Linux server refuses for its key

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SERVER_PORT=$(free_port) PROXY_PORT=$(free_port) ORIGIN_PORT=$(free_port)
cat > server.yaml <<EOF
host: 127.0.0.1
port: $SERVER_PORT
cert_file: certs/server.pem
key_file: certs/server.key
ca_file: certs/ca.pem
egress_allow: ["127.0.0.0/8"]
EOF
cat > agent.yaml <<EOF
proxy_port: $PROXY_PORT
server_ip: 127.0.0.1
server_port: $SERVER_PORT
cert_file: certs/client.pem
key_file: certs/client.key
ca_file: certs/ca.pem
EOF
"$ROOT/.venv/bin/twistd" -n --pidfile= fluidity-server --config server.yaml > server.log 2>&1 &
BACKGROUND+=($!)
mkdir -p origin && head -c 8000000 /dev/urandom > origin/blob
want=$(sha256sum origin/blob | cut -d' ' -f1)
(cd origin && exec python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1) > origin.log 2>&1 &
BACKGROUND+=($!)

wait_health() {  # wait_health PID LOG: the agent's /health answers and its tunnel is up, within 120 s
  for _ in $(seq 1 240); do
    kill -0 "$1" 2>/dev/null || fail "the agent exited: $(tail -20 "$2")"
    curl -s --max-time 2 "http://127.0.0.1:$PROXY_PORT/health" -o /dev/null && grep -q "is up" "$2" && return 0
    sleep 0.5
  done
  fail "the agent was not up within 120 s: $(tail -20 "$2")"
}
transfer() {  # transfer LABEL CURL-PROXY-ARGS...: the blob through the agent, whole
  rm -f got
  curl -s --max-time 120 "${@:2}" "http://127.0.0.1:$ORIGIN_PORT/blob" -o got || fail "$1 transfer: curl $?"
  [ "$(sha256sum got | cut -d' ' -f1)" = "$want" ] || fail "$1 transfer: the bytes differ (sha256)"
  say "$1 transfer through the Windows agent: 8 MB, sha256 equal"
}
stop_by_ctrl_c() {  # stop_by_ctrl_c WAIT-PID PATTERN LOG: Ctrl-C to our python.exe whose command line has PATTERN
  local pids ours
  ours="$(win "$PY")\\python.exe"
  pids=$(ps -eo pid=,args= | OURS=$ours P=$2 awk '$2 == ENVIRON["OURS"] && index($0, ENVIRON["P"]) {print $1}')
  [ -n "$pids" ] || fail "no python.exe running $2"
  ps -o pid=,args= -p "${pids//$'\n'/,}" | sed 's/^/  Ctrl-C to: /'
  # Wine turns SIGINT into CTRL_C_EVENT, as a console's Ctrl-C reaches every process on it (the
  # console-script launcher fluidity.exe ignores it and waits for python.exe, as on Windows).
  kill -INT $pids
  for _ in $(seq 1 60); do kill -0 "$1" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$1" 2>/dev/null && fail "still running 30 s after Ctrl-C: $(tail -20 "$3")"
  local code=0
  wait "$1" || code=$?
  [ "$code" = 0 ] || fail "exit code $code after Ctrl-C (wanted 0): $(tail -20 "$3")"
  grep -q "Received SIGINT, shutting down." "$3" || fail "the agent did not say it stopped on SIGINT: $(tail -20 "$3")"
}

# What the mend in tunnel/ops/twistd_windows.py is for: said, not required (a fixed Twisted needs none).
bare=$(wrun 120 "$(win "$SCRIPTS/twistd.exe")" fluidity-agent --help 2>&1 || true)
case "$bare" in
  *"name 'PureWindowsPath' is not defined"*) say "a bare twistd.exe dies scanning plugins (NameError: PureWindowsPath): mended" ;;
  *--proxy-port*) say "a bare twistd.exe runs here (no Twisted path bug on this CPython)" ;;
  *) say "a bare twistd.exe said: $(echo "$bare" | tail -3)" ;;
esac

say "fluidity agent, in the foreground"
"$WINE" "$FLUIDITY" agent --config "$(win "$WORK/agent.yaml")" < /dev/null > >(cat > agent.log) 2>&1 &
AGENT=$!
BACKGROUND+=($AGENT)
wait_health "$AGENT" agent.log
transfer "HTTP CONNECT" -p -x "http://127.0.0.1:$PROXY_PORT"
transfer "SOCKS5" --socks5-hostname "127.0.0.1:$PROXY_PORT"
status=$(wrun 120 "$FLUIDITY" agent status --config "$(win "$WORK/agent.yaml")") || fail "agent status: $status"
echo "$status" | grep -q "^tunnel:  up" || fail "agent status said: $status"
say "fluidity agent status: tunnel up"
stop_by_ctrl_c "$AGENT" "fluidity.exe agent" agent.log
say "fluidity agent: Ctrl-C, exit code 0"

say "fluidity agent install-service --no-start, then the logon task's command line"
out=$(wrun 120 "$FLUIDITY" agent install-service --no-start --config "$(win "$WORK/agent.yaml")") ||
  fail "install-service: $out"
xml=$(find "$WINEPREFIX/drive_c/users" -name fluidity-agent-task.xml | head -1)
[ -n "$xml" ] || fail "install-service wrote no task definition: $out"
mapfile -t task < <(python3 - "$xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
task = ET.fromstring(open(sys.argv[1], "rb").read().decode("utf-16").split("?>", 1)[1])
print(task.find("t:Actions/t:Exec/t:Command", ns).text)
print("\n".join(task.find("t:Actions/t:Exec/t:Arguments", ns).text.split()))  # no spaces in these paths
EOF
)
"$WINE" "${task[@]}" < /dev/null > >(cat > task.log) 2>&1 &
TASK=$!
BACKGROUND+=($TASK)
wait_health "$TASK" task.log
transfer "HTTP CONNECT (logon task)" -p -x "http://127.0.0.1:$PROXY_PORT"
stop_by_ctrl_c "$TASK" "tunnel.ops.twistd_windows" task.log
say "the logon task's command runs the agent; Ctrl-C, exit code 0"

say "fluidity local (server and agent under Wine, built-in settings)"
DEMO_SERVER=$(free_port) DEMO_PROXY=$(free_port)
mkdir -p "$WORK/demo"
(cd "$WORK/demo" && exec "$WINE" "$FLUIDITY" local --server-port "$DEMO_SERVER" --proxy-port "$DEMO_PROXY") \
  < /dev/null > >(cat > local.log) 2>&1 &
LOCAL=$!
BACKGROUND+=($LOCAL)
for _ in $(seq 1 240); do
  grep -q "Fluidity is running" local.log && break
  kill -0 "$LOCAL" 2>/dev/null || fail "fluidity local exited: $(tail -20 local.log)"
  sleep 0.5
done
grep -q "Fluidity is running" local.log || fail "fluidity local did not start within 120 s: $(tail -20 local.log)"
PROXY_PORT=$DEMO_PROXY wait_health "$LOCAL" local.log
PROXY_PORT=$DEMO_PROXY transfer "HTTP CONNECT (fluidity local)" -p -x "http://127.0.0.1:$DEMO_PROXY"
pids=$(ps -eo pid=,args= | OURS="$(win "$PY")\\python.exe" awk '$2 == ENVIRON["OURS"] && /fluidity.exe local/ {print $1}')
[ -n "$pids" ] || fail "no python.exe running fluidity local"
kill -INT $pids
for _ in $(seq 1 90); do kill -0 "$LOCAL" 2>/dev/null || break; sleep 0.5; done
kill -0 "$LOCAL" 2>/dev/null && fail "fluidity local still running 45 s after Ctrl-C: $(tail -20 local.log)"
code=0
wait "$LOCAL" || code=$?
[ "$code" = 0 ] || fail "fluidity local: exit code $code after Ctrl-C: $(tail -20 local.log)"
left=$(ps -eo args= | OURS="$(win "$PY")\\python.exe" awk '$1 == ENVIRON["OURS"] && /twistd_windows/' | head -3)
[ -z "$left" ] || fail "fluidity local left running: $left"
say "fluidity local: a transfer, then Ctrl-C stops both (exit code 0)"

say "fluidity proxy-password: the Windows Credential Manager through keyring"
out=$(printf 'pa55 word\n' | timeout 120 "$WINE" "$FLUIDITY" proxy-password --user 'CORP\alice' --stdin 2>&1 | cat)
case "$out" in *"stored the proxy password of CORP\alice (WinVaultKeyring)"*) ;; *) fail "proxy-password: $out" ;; esac
read_back=$(wrun 120 "$(win "$PY/python.exe")" -c "from tunnel.agent.proxy_credentials import credentials_from
print(repr(credentials_from('CORP\\\\alice', 'keyring').password))") || fail "reading the password back: $read_back"
[ "$(echo "$read_back" | tr -d '\r')" = "'pa55 word'" ] || fail "the agent read the password back as: $read_back"
out=$(wrun 120 "$FLUIDITY" proxy-password --user 'CORP\alice' --delete) || fail "proxy-password --delete: $out"
case "$out" in *"removed the proxy password"*) ;; *) fail "proxy-password --delete: $out" ;; esac
say "the proxy password stored (WinVaultKeyring), read back as the agent reads it, removed"

say "upstream_proxy: auto: a proxy set by hand in Internet Settings (wine reg add), read through winreg"
settings='HKCU\Software\Microsoft\Windows\CurrentVersion\Internet Settings'
wrun 60 reg add "$settings" /v ProxyEnable /t REG_DWORD /d 1 /f > /dev/null || fail "reg add ProxyEnable"
wrun 60 reg add "$settings" /v ProxyServer /t REG_SZ /d "http=127.0.0.1:1;https=127.0.0.1:3128" /f > /dev/null ||
  fail "reg add ProxyServer"
wrun 60 reg add "$settings" /v ProxyOverride /t REG_SZ /d "*.intranet.test;<local>" /f > /dev/null ||
  fail "reg add ProxyOverride"
read_back=$(wrun 120 "$(win "$PY/python.exe")" -c "from tunnel.agent.windows_proxy_settings import read
m = read()
print(m.url, m.bypassed('wiki.intranet.test'), m.bypassed('fileserver'), m.bypassed('example.com'))") ||
  fail "reading the settings: $read_back"
[ "$(echo "$read_back" | tr -d '\r')" = "http://127.0.0.1:3128 True True False" ] ||
  fail "the settings read back as: $read_back"
say "the hand-set proxy read back: https= entry taken, exceptions honoured"

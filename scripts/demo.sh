#!/usr/bin/env bash
# The ten-minute tour of dbaccess, in one command. Sets up what is missing
# (setup.sh), starts the dev broker (a SQLite store and a throwaway PostgreSQL
# cluster with demo data, two CLI identities: dev and reviewer), then walks
# through what the product does, one caption per step:
#
#   a session's own database role, VALID UNTIL its deadline, gone afterwards;
#   masked columns, and a computation on one refused; a destructive statement
#   refused with its rule; a statement review asked by dev, refused for
#   self-approval, approved by reviewer, run once and not twice; the replay of
#   that session; the verified audit chain.
#
# Every step checks its exit status and the line it must show; the first step
# that does not stops the demo with "demo: step N failed". The broker and its
# cluster are stopped at the end, whatever happened.
#
#   DBACCESS_DEMO_DIR   data directory (default .dbaccess-demo; scripts/test.sh
#                       gives a fresh one). A second demo on the same directory
#                       is refused; a dev broker elsewhere does not collide
#                       (every port is a free one).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
bash scripts/setup.sh

data_dir="${DBACCESS_DEMO_DIR:-.dbaccess-demo}"
mkdir -p "$data_dir"
data_dir="$(cd "$data_dir" && pwd)"
exec 9>"$data_dir/demo.lock"
flock -n 9 || { echo "demo: another demo is running with $data_dir" >&2; exit 1; }

export DBACCESS_CONFIG_DIR="$data_dir/cli"
export PYTHON_KEYRING_BACKEND="${PYTHON_KEYRING_BACKEND:-keyring.backends.fail.Keyring}"
export PYTHONUNBUFFERED=1 # results and session lines in the order they happen
# Tables as wide as the terminal; captured (as by scripts/test.sh), wide enough not to fold ids.
if [ -t 1 ]; then COLUMNS="$(tput cols 2>/dev/null || echo 160)"; else COLUMNS=160; fi
export COLUMNS
unset DBACCESS_PROFILE DBACCESS_SERVER DBACCESS_TOKEN
PATH="$PWD/.venv/bin:$PATH"

log="$data_dir/server.log"
: >"$log"
dbaccess-server dev --data-dir "$data_dir" >"$log" 2>&1 &
server_pid=$!
stop() {
  kill -INT "$server_pid" 2>/dev/null || return 0
  for _ in $(seq 1 60); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$server_pid" 2>/dev/null; then
    echo "demo: the broker did not stop in 30 s; killing it" >&2
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" 2>/dev/null || true
  # The throwaway cluster stops with the broker; if the broker was killed, stop it here.
  local pidfile="$data_dir/pg/pgdata/postmaster.pid"
  if [ -f "$pidfile" ]; then
    kill -INT "$(head -n 1 "$pidfile")" 2>/dev/null || true
  fi
}
trap stop EXIT
interrupted() {
  echo "demo: interrupted" >&2
  exit 130
}
trap interrupted INT TERM

for _ in $(seq 1 240); do
  grep -q "dev broker is running" "$log" && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.25
done
if ! grep -q "dev broker is running" "$log"; then
  echo "demo: the dev broker did not start:" >&2
  cat "$log" >&2
  exit 1
fi
ready=$SECONDS
sed -n '/dev broker is running/,$p' "$log"

ADMIN_DSN="$(cat "$data_dir/admin.dsn")"
export ADMIN_DSN
# A table an earlier run of the demo created (kept by the admin role when its
# session ended): the review below creates it again.
psql "$ADMIN_DSN" -XqAt -c "set client_min_messages = warning" \
  -c "drop table if exists public.customer_followups" >/dev/null

# The session roles that exist right now, as the database's admin sees them.
session_roles() {
  psql "$ADMIN_DSN" -XAt -c "
    select coalesce(string_agg(r.rolname || '  VALID UNTIL ' || r.rolvaliduntil, E'\n'), '(none)')
    from pg_roles r join pg_auth_members m on m.member = r.oid
    where m.roleid = 'dbaccess_managed'::regrole and r.rolname <> current_user"
}
export -f session_roles

dbaccess() { command dbaccess "$@"; }
step_no=0
step_started=$SECONDS
timings=""
step() {
  [ "$step_no" = 0 ] || timings+=" $step_no:$((SECONDS - step_started))s"
  step_no=$((step_no + 1))
  step_started=$SECONDS
  printf '\n== %d. %s\n' "$step_no" "$*"
}
fail() {
  # Ctrl-C reaches the broker too; a step that fails because of that was interrupted.
  kill -0 "$server_pid" 2>/dev/null || interrupted
  echo "demo: step $step_no failed: $*" >&2
  exit 1
}
quoted() {
  local out="" word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=" $word"
    else
      out+=" '${word//\'/\'\\\'\'}'"
    fi
  done
  printf '%s' "${out# }"
}
# expect STATUS PATTERN CMD...: show the command and its output; the command
# must exit with STATUS and print a line matching PATTERN (grep -E).
expect() {
  local want=$1 pattern=$2
  shift 2
  printf '$ %s\n' "$(quoted "$@")"
  local rc=0
  out="$("$@" 2>&1)" || rc=$?
  printf '%s\n' "$out"
  [ "$rc" != 130 ] || interrupted
  [ "$rc" = "$want" ] || fail "exit status $rc, expected $want"
  grep -qE -- "$pattern" <<<"$out" || fail "no line matches /$pattern/"
}

step "Two people: the dev broker logged the CLI in as 'dev' and, with --profile reviewer, as 'reviewer'"
expect 0 "dev" dbaccess whoami
expect 0 "reviewer" dbaccess --profile reviewer whoami

# shows PATTERN: the output of the last command also has a line matching PATTERN.
shows() { grep -qE -- "$1" <<<"$out" || fail "no line matches /$1/"; }

step "A session gets a database role of its own, VALID UNTIL the session's deadline"
expect 0 "^dba_dev_[a-z0-9]+  VALID UNTIL 20[0-9]{2}-" \
  dbaccess run demo --reason "ten-minute tour" -- bash -c 'psql -XAtc "select current_user"; session_roles'

step "... and the role is gone once the session ends (revoked and dropped)"
expect 0 "^\(none\)$" session_roles

step "Masked columns come back masked in psql: names, e-mails, phones and card numbers"
expect 0 '\*\*\*@example\.com' \
  dbaccess run demo -- psql -X -c "select id, full_name, email, phone, card_number, city from customers order by id limit 3"
shows "NOTICE: +dbaccess: masked in this session: .*public\.customers\.email"

step "Computing with a masked column (here: filtering on it) is refused before it runs"
expect 3 "masking\.inference" \
  dbaccess exec demo -c "select count(*) from customers where email like '%@example.com'"

step "A destructive statement is refused, with the rule that refused it"
expect 3 "guardrails\.no_drop" \
  dbaccess exec demo --scope write --reason "tidy up" -c "drop table orders"

sql_file="$data_dir/followups.sql"
echo "create table customer_followups (id int generated always as identity primary key, customer_id int not null, note text not null);" >"$sql_file"
review=(dbaccess exec demo --scope write --reason "INC-42: track follow-ups" -f "$sql_file")

step "dev asks for a review of a CREATE TABLE (DDL in the write scope is reviewed first)"
expect 0 "^create table" cat "$sql_file"
expect 9 "^r-[0-9a-f]+$" "${review[@]}" --request-review --no-wait
request_id="$(grep -oE '^r-[0-9a-f]+$' <<<"$out" | head -n 1)"

step "dev cannot approve its own request"
expect 5 "cannot approve your own request" dbaccess approve "$request_id" --yes

step "reviewer, a second identity, sees the statement and approves it"
expect 0 "$request_id" dbaccess --profile reviewer requests --to-review
expect 0 "^approved $request_id" \
  dbaccess --profile reviewer approve "$request_id" --yes --comment "one new table, no data touched"

step "dev runs exactly the approved statement: it runs"
expect 0 "^CREATE TABLE" "${review[@]}"
session_id="$(grep -oE 'session s-[0-9a-f]+' <<<"$out" | head -n 1 | cut -d' ' -f2)"

step "... once: the same statement again needs a new review (approvals are single use)"
expect 3 "held for review" "${review[@]}"

step "dbaccess replay: what that session did, from its recording"
expect 0 "matches the audit log" dbaccess replay "$session_id"

step "dbaccess audit verify: the hash-chained audit log is intact"
expect 0 "hash chain verified" dbaccess audit verify

timings+=" $step_no:$((SECONDS - step_started))s"
steps_done=$SECONDS
stop
trap - EXIT
[ ! -f "$data_dir/pg/pgdata/postmaster.pid" ] || fail "the demo cluster is still running"
printf '\ndemo: all %d steps showed what they should; everything stopped\n' "$step_no"
printf 'demo: %d s in all: setup and broker start %d s, steps %d s (%s), stop %d s\n' \
  "$((SECONDS - started))" "$((ready - started))" "$((steps_done - ready))" "${timings# }" \
  "$((SECONDS - steps_done))"

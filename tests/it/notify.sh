#!/usr/bin/env bash
#
# tests/it/notify.sh: messages to occupants leave through HTTP gateways as
# the occupant and the gateway expect. Against a real PostgreSQL, mosquitto,
# prepaidd and tests/fakegw (a fake SMS gateway on loopback that logs every
# request it receives), it proves that a reminder arrives with the text its
# template renders to, intact through JSON and form escaping even for a name
# with quotes, '&', a backslash, a newline and Chinese; that retries follow
# the classes (429 honouring Retry-After, 5xx with backoff, 400 and a
# refused answer code final, a hanging gateway timed out and given up) and
# every attempt is recorded; that quiet hours hold a message back until
# they end and a cancelled message never leaves; that neither the
# occupant's number nor the gateway's secret reaches the daemon's log while
# the secret does reach the gateway; that two daemons on one database send
# each of 50 messages exactly once, never more at once than a gateway's
# concurrency; and that the shipped templates hold real line breaks.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

FAKEGW=$top_builddir/tests/fakegw
FAKEGW_LOG=$LIB_TMP/fakegw.log
FAKEGW_OUT=$LIB_TMP/fakegw.out
GW_PORT=
GATEWAYS=$LIB_TMP/gateways.conf
SECRET='tok-9f3Kq-s3cr3t-7781'
PHONE='+8613912345678'

# On failure show the gateway's log too (lib.sh shows the daemons' logs),
# then let lib.sh stop everything (fakegw is in LIB_PIDS).
notify_exit()
{
	local rc=$?

	set +e
	if [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
		if [ -s "$FAKEGW_LOG" ]; then
			echo "--- last 10 requests the fake gateway received:" >&2
			tail -n 10 "$FAKEGW_LOG" | cut -c 1-400 >&2
		fi
	fi
	(exit "$rc")
	lib_cleanup
}
trap notify_exit EXIT

skip_unless_tools
[ -x "$FAKEGW" ] || fail "$FAKEGW is not built (make tests/fakegw)"

fakegw_start()
{
	local deadline

	GW_PORT=$(free_port)
	$LIB_SETSID "$FAKEGW" "$GW_PORT" "$FAKEGW_LOG" >"$FAKEGW_OUT" 2>&1 &
	LIB_PIDS+=("$!")
	deadline=$(($(lib_now_ms) + 10000))
	until grep -q "listening on $GW_PORT" "$FAKEGW_OUT"; do
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "fakegw did not start: $(cat "$FAKEGW_OUT")"
		sleep 0.1
	done
}

# Copy what the fake gateway logged into public.gwlog, one JSON line a row.
# Only complete lines: a request may be being written (read drops a last
# line without its newline).
gw_load()
{
	local line

	while IFS= read -r line; do
		printf '%s\n' "$line"
	done <"$FAKEGW_LOG" | "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 \
	    -p "$PG_PORT" -U postgres -d prepaid -c "TRUNCATE public.gwlog" \
	    -c "COPY public.gwlog (line) FROM STDIN WITH (FORMAT csv,
	        QUOTE E'\\x01', DELIMITER E'\\x02')" || fail "cannot load the fakegw log"
}

# Decode an application/x-www-form-urlencoded value to lowercase hex, so
# that it can be compared byte for byte with what SQL expects.
form_hex()
{
	local s=$1 out="" c i

	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case $c in
		%) out+=${s:i+1:2}; i=$((i + 2)) ;;
		+) out+=20 ;;
		*) out+=$(LC_ALL=C printf '%02x' "'$c") ;;
		esac
	done
	echo "${out,,}"
}

# The attempts of a message as "attempt:outcome:http_status,...".
attempts_of()
{
	psql_q "SELECT string_agg(attempt || ':' || outcome || ':' || coalesce(http_status::text, ''),
	    ',' ORDER BY attempt) FROM prepaid.message_attempts WHERE message_id = $1"
}

# Requests the fake gateway received for a message (X-Ref header).
requests_for()
{
	psql_q "SELECT count(*) FROM public.gw WHERE ref = '$1'"
}

fakegw_start
pg_start
broker_start
daemon_config
# Every gateway names the message in a header, so that the gateway's log
# tells which request carried which message.
cat >"$GATEWAYS" <<EOF

# The first sms gateway: messages that name none go here.
[gateway json]
channel = sms
url = http://127.0.0.1:$GW_PORT/ok
header = "X-Ref: {{message_id}}"
body = {"to":"{{to}}","text":"{{text}}","p":{{params_json}}}
auth = bearer
secret_file = $LIB_TMP/gw.secret
success_field = Code
success_value = OK
message_id_field = BizId

[gateway form]
channel = sms
url = http://127.0.0.1:$GW_PORT/ok
header = "X-Ref: {{message_id}}"
escape = form
body = To={{to}}&Body={{text}}
message_id_field = header:X-Message-Id

[gateway g429]
channel = sms
url = http://127.0.0.1:$GW_PORT/429
header = "X-Ref: {{message_id}}"
body = {"to":"{{to}}","text":"{{text}}"}
retry_initial_ms = 100

[gateway g500]
channel = sms
url = http://127.0.0.1:$GW_PORT/500
header = "X-Ref: {{message_id}}"
body = {"to":"{{to}}","text":"{{text}}"}
retry_initial_ms = 100
retry_max_ms = 200

[gateway g400]
channel = sms
url = http://127.0.0.1:$GW_PORT/400
header = "X-Ref: {{message_id}}"
body = {"to":"{{to}}","text":"{{text}}"}
retry_initial_ms = 100

[gateway gfail]
channel = sms
url = http://127.0.0.1:$GW_PORT/fail
header = "X-Ref: {{message_id}}"
body = {"to":"{{to}}","text":"{{text}}"}
success_field = Code
success_value = OK
retry_initial_ms = 100

[gateway ghang]
channel = sms
url = http://127.0.0.1:$GW_PORT/hang
header = "X-Ref: {{message_id}}"
body = {"to":"{{to}}","text":"{{text}}"}
timeout_ms = 500
max_attempts = 2
retry_initial_ms = 100

[gateway bulk]
channel = sms
url = http://127.0.0.1:$GW_PORT/slow?ms=100
header = "X-Ref: {{message_id}}"
body = {"id":"{{message_id}}","to":"{{to}}","text":"{{text}}"}
concurrency = 2
EOF
printf '%s\n' "$SECRET" >"$LIB_TMP/gw.secret"
chmod 600 "$LIB_TMP/gw.secret"
cat "$GATEWAYS" >>"$CONF"
"$top_builddir/prepaidd" -n -c "$CONF" >"$LIB_TMP/check.out" 2>&1 ||
    fail "prepaidd -n refused the gateways: $(cat "$LIB_TMP/check.out")"
daemon_migrate

# Test helpers in the public schema. t_send queues a message like
# prepaid.send_message and routes it to a gateway, in one transaction so the
# daemon never sees it without its gateway. t_render renders a message
# template as the occupant should read it, independently of the daemon.
psql_q "
CREATE TABLE public.gwlog (line jsonb NOT NULL);
CREATE VIEW public.gw AS
SELECT (line->>'n')::int AS n, line->>'method' AS method, line->>'path' AS path,
       line->'headers' AS headers, line->'headers'->>'X-Ref' AS ref, line->>'body' AS body
FROM public.gwlog;
CREATE FUNCTION public.t_send(p_meter text, p_template text, p_gateway text,
    p_extra jsonb DEFAULT '{}') RETURNS bigint LANGUAGE plpgsql AS \$\$
DECLARE v bigint;
BEGIN
	v := prepaid.send_message(p_meter, p_template, 'sms', p_extra);
	UPDATE prepaid.messages SET gateway = p_gateway WHERE message_id = v;
	RETURN v;
END \$\$;
CREATE FUNCTION public.t_render(t text, p jsonb) RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE r text := ''; i int; j int; k text;
BEGIN
	LOOP
		i := strpos(t, '{{');
		IF i = 0 THEN RETURN r || t; END IF;
		j := strpos(substr(t, i + 2), '}}');
		IF j = 0 THEN RETURN r || t; END IF;
		k := btrim(substr(t, i + 2, j - 1), E' \t');
		r := r || substr(t, 1, i - 1);
		t := substr(t, i + j + 3);
		IF left(k, 1) = '#' THEN
			-- a section: left out, up to its close, when its value is empty
			IF coalesce(p->>substr(k, 2), '') = '' THEN
				t := substr(t, strpos(t, '{{/' || substr(k, 2) || '}}') + length(k) + 4);
			END IF;
		ELSIF left(k, 1) <> '/' THEN
			IF NOT p ? k THEN RAISE EXCEPTION 'no value for {{%}}', k; END IF;
			r := r || (p->>k);
		END IF;
	END LOOP;
END \$\$;
CREATE FUNCTION public.t_expected(p_id bigint) RETURNS text LANGUAGE sql AS \$\$
	SELECT public.t_render(t.body, m.params) FROM prepaid.messages m
	JOIN prepaid.message_templates t USING (template_key, channel, language)
	WHERE m.message_id = p_id
\$\$;
UPDATE prepaid.sites SET quiet_from = '00:00', quiet_until = '00:00',
    payment_link = 'https://pay.example.org/p?site=default&m=1';
SELECT prepaid.register_meter('NT1');
-- Above every policy's first threshold: the ladder queues no reminder of its own.
SELECT prepaid.credit('NT1', 123.45, 'nt-1');
-- A template of our own, with an extra parameter and a spaced placeholder.
INSERT INTO prepaid.message_templates (template_key, channel, language, body)
VALUES ('nt_custom', 'sms', 'zh', '{{ name }}：电表{{meter}}余额{{balance}}元，单号{{ref}}。');
" >/dev/null
# The name: quotes, '&', a backslash, a tab, a newline, Chinese, and a
# placeholder that must stay text.
psql_q "SELECT prepaid.move_in('NT1', 'Zoë O''Brien \"Bob\" & Co \\ ' || chr(9) || 'x'
    || chr(10) || '李明 {{link}}', '$PHONE', 'zoe@example.org', 'zh')" >/dev/null

daemon_start

##########################################################################
note "1. a reminder arrives with the right text, escaped for JSON and for a form"

id1=$(psql_q "SELECT prepaid.send_message('NT1', 'low_balance', 'sms', '{\"ref\": \"R-1\"}')")
id2=$(psql_q "SELECT public.t_send('NT1', 'nt_custom', 'form', '{\"ref\": \"A&B=100% +1\"}')")
wait_until "SELECT count(*) = 2 FROM prepaid.messages WHERE message_id IN ($id1, $id2)
    AND state IN ('sent', 'failed')" 15 "messages $id1 and $id2 finished"
gw_load

assert_eq "sent|1|json|200|OK|**********5678" "$(psql_q "SELECT state || '|' || attempts || '|'
    || gateway || '|' || last_http_status || '|' || last_answer || '|' || to_masked
    FROM prepaid.message_status WHERE message_id = $id1")" \
    "JSON message: state, attempts, default gateway, status, answer, masked recipient"
assert_eq 1 "$(requests_for "$id1")" "requests the gateway received for the JSON message"
assert_eq "POST /ok application/json" "$(psql_q "SELECT method || ' ' || path || ' '
    || split_part(headers->>'Content-Type', ';', 1) FROM public.gw WHERE ref = '$id1'")" \
    "JSON request: method, path, content type"
# The body must be JSON (the cast fails otherwise) whose text is the template
# rendered with the message's params, character for character.
json_ok=$(psql_q "SELECT body::jsonb IS NOT NULL FROM public.gw WHERE ref = '$id1'" 2>&1) ||
    fail "the JSON gateway's body is not JSON: $json_ok"
assert_eq t "$json_ok" "the JSON body parses"
if [ "$(psql_q "SELECT body::jsonb->>'text' = public.t_expected($id1)
    FROM public.gw WHERE ref = '$id1'")" != t ]; then
	fail "text differs: expected [$(psql_q "SELECT public.t_expected($id1)")], got \
[$(psql_q "SELECT body::jsonb->>'text' FROM public.gw WHERE ref = '$id1'")]"
fi
echo "ok - the JSON text is the rendered template, byte for byte"
assert_eq t "$(psql_q "SELECT strpos(t, 'O''Brien \"Bob\" & Co \\ ' || chr(9) || 'x' || chr(10)
    || '李明 {{link}}') > 0 FROM public.t_expected($id1) t")" \
    "the expected text carries the name with its quotes, newline and literal braces"
assert_eq t "$(psql_q "SELECT strpos(public.t_expected($id1), '余额123.45元') > 0
    AND strpos(public.t_expected($id1), 'https://pay.example.org/p?site=default&m=1') > 0")" \
    "the expected text carries the balance and the site's payment link"
assert_eq t "$(psql_q "SELECT body::jsonb->>'to' = '$PHONE'
    AND body::jsonb->'p' = (SELECT params FROM prepaid.messages WHERE message_id = $id1)
    AND body::jsonb->'p'->>'ref' = 'R-1'
    FROM public.gw WHERE ref = '$id1'")" "JSON to and params_json (extra param included)"
assert_eq t "$(psql_q "SELECT m.provider_id = 'fake-' || g.n FROM prepaid.messages m, public.gw g
    WHERE m.message_id = $id1 AND g.ref = '$id1'")" "provider_id is the gateway's BizId"
assert_eq "1:sent:200" "$(attempts_of "$id1")" "JSON message attempts"

assert_eq "sent|1|form|200" "$(psql_q "SELECT state || '|' || attempts || '|' || gateway || '|'
    || last_http_status FROM prepaid.message_status WHERE message_id = $id2")" \
    "form message: state, attempts, gateway, status"
assert_eq 1 "$(requests_for "$id2")" "requests the gateway received for the form message"
assert_eq application/x-www-form-urlencoded "$(psql_q "SELECT split_part(headers->>'Content-Type',
    ';', 1) FROM public.gw WHERE ref = '$id2'")" "form request content type"
body=$(psql_q "SELECT body FROM public.gw WHERE ref = '$id2'")
[[ "$body" =~ ^To=[A-Za-z0-9._~%+-]*\&Body=[A-Za-z0-9._~%+-]*$ ]] ||
    fail "the form body is not two encoded fields: $body"
echo "ok - the form body is two encoded fields"
to=${body#To=}
to=${to%%&*}
assert_eq "$(psql_q "SELECT encode(convert_to('$PHONE', 'UTF8'), 'hex')")" "$(form_hex "$to")" \
    "form To decodes to the phone number"
assert_eq "$(psql_q "SELECT encode(convert_to(public.t_expected($id2), 'UTF8'), 'hex')")" \
    "$(form_hex "${body#*&Body=}")" "form Body decodes to the rendered template, byte for byte"
assert_eq t "$(psql_q "SELECT strpos(public.t_expected($id2), '单号A&B=100% +1。') > 0")" \
    "the custom template carries the extra parameter"
assert_eq t "$(psql_q "SELECT m.provider_id = 'fake-' || g.n FROM prepaid.messages m, public.gw g
    WHERE m.message_id = $id2 AND g.ref = '$id2'")" "provider_id from the X-Message-Id header"

##########################################################################
note "2. retries follow the classes, and every attempt is recorded"

declare -A mid
for g in g429 g500 g400 gfail ghang; do
	mid[$g]=$(psql_q "SELECT public.t_send('NT1', 'low_balance', '$g', '{\"case\": \"$g\"}')")
done
ids="${mid[g429]}, ${mid[g500]}, ${mid[g400]}, ${mid[gfail]}, ${mid[ghang]}"
wait_until "SELECT count(*) = 5 FROM prepaid.messages WHERE message_id IN ($ids)
    AND state IN ('sent', 'failed')" 20 "the five retry-class messages finished"
gw_load

assert_eq "sent|2" "$(psql_q "SELECT state || '|' || attempts FROM prepaid.messages
    WHERE message_id = ${mid[g429]}")" "429: sent on attempt 2"
assert_eq "1:retry:429,2:sent:200" "$(attempts_of "${mid[g429]}")" "429: attempts"
assert_eq t "$(psql_q "SELECT b.at - a.at >= interval '950 milliseconds'
    FROM prepaid.message_attempts a JOIN prepaid.message_attempts b USING (message_id)
    WHERE message_id = ${mid[g429]} AND a.attempt = 1 AND b.attempt = 2")" \
    "429: attempt 2 not before Retry-After (1 s)"
assert_eq 2 "$(requests_for "${mid[g429]}")" "429: requests received"

assert_eq "sent|3" "$(psql_q "SELECT state || '|' || attempts FROM prepaid.messages
    WHERE message_id = ${mid[g500]}")" "500: sent on attempt 3"
assert_eq "1:retry:500,2:retry:500,3:sent:200" "$(attempts_of "${mid[g500]}")" "500: attempts"
assert_eq 3 "$(requests_for "${mid[g500]}")" "500: requests received"

assert_eq "failed|1|400" "$(psql_q "SELECT state || '|' || attempts || '|' || last_http_status
    FROM prepaid.message_status WHERE message_id = ${mid[g400]}")" "400: failed after 1 attempt"
assert_eq "1:failed:400" "$(attempts_of "${mid[g400]}")" "400: attempts"
assert_eq 1 "$(requests_for "${mid[g400]}")" "400: requests received"

assert_eq "failed|1|200|isv.MOBILE_NUMBER_ILLEGAL" "$(psql_q "SELECT state || '|' || attempts
    || '|' || last_http_status || '|' || last_answer FROM prepaid.message_status
    WHERE message_id = ${mid[gfail]}")" "refused answer code: failed, code recorded"
assert_eq "1:failed:200" "$(attempts_of "${mid[gfail]}")" "refused answer code: attempts"
assert_eq t "$(psql_q "SELECT answer_code = 'isv.MOBILE_NUMBER_ILLEGAL' AND error LIKE '%Code%'
    FROM prepaid.message_attempts WHERE message_id = ${mid[gfail]}")" \
    "refused answer code: attempt row has the code and the reason"

assert_eq "failed|2" "$(psql_q "SELECT state || '|' || attempts FROM prepaid.messages
    WHERE message_id = ${mid[ghang]}")" "hanging gateway: failed after 2 attempts"
assert_eq "1:retry:,2:failed:" "$(attempts_of "${mid[ghang]}")" "hanging gateway: attempts"
assert_eq 2 "$(psql_q "SELECT count(*) FROM prepaid.message_attempts
    WHERE message_id = ${mid[ghang]} AND error ~* 'time[ds]? ?out'
    AND duration_ms BETWEEN 400 AND 3000")" "hanging gateway: both attempts timed out at ~500 ms"
assert_eq 2 "$(requests_for "${mid[ghang]}")" "hanging gateway: requests received"
assert_eq t "$(psql_q "SELECT last_error ~* 'time[ds]? ?out' FROM prepaid.messages
    WHERE message_id = ${mid[ghang]}")" "hanging gateway: last_error says timeout"

##########################################################################
note "3. quiet hours hold a message back until they end"

# A site far from UTC, with quiet hours from an hour ago to an hour from now,
# in its own time zone.
psql_q "SELECT prepaid.create_site('quiet', 'Quiet site', 'Asia/Kolkata');
    SELECT prepaid.register_meter('NTQ');
    SELECT prepaid.set_meter_site('NTQ', 'quiet');
    SELECT prepaid.credit('NTQ', 100, 'ntq-1');
    SELECT prepaid.move_in('NTQ', 'Quiet Occupant', '+8613700001111', NULL, 'en');
    UPDATE prepaid.sites
    SET quiet_from = date_trunc('minute', (now() AT TIME ZONE time_zone) - interval '1 hour')::time,
        quiet_until = date_trunc('minute', (now() AT TIME ZONE time_zone) + interval '1 hour')::time
    WHERE site_id = 'quiet'" >/dev/null
qid=$(psql_q "SELECT prepaid.send_message('NTQ', 'low_balance')")
qid2=$(psql_q "SELECT prepaid.send_message('NTQ', 'low_balance')")
wait_until "SELECT next_attempt_at > now() FROM prepaid.messages WHERE message_id = $qid" 10 \
    "the quiet message was deferred"
# The end of the quiet hours: the next local quiet_until after now.
assert_eq t "$(psql_q "SELECT m.next_attempt_at = (SELECT CASE WHEN e > now() THEN e
        ELSE e + interval '1 day' END
        FROM (SELECT ((now() AT TIME ZONE s.time_zone)::date + s.quiet_until)
              AT TIME ZONE s.time_zone AS e FROM prepaid.sites s WHERE s.site_id = 'quiet') x)
    FROM prepaid.messages m WHERE m.message_id = $qid")" \
    "next_attempt_at is the end of the quiet hours"
sleep 2.5 # two polls of the dispatcher
gw_load
assert_eq "queued|0|0" "$(psql_q "SELECT m.state || '|' || m.attempts || '|' || (SELECT count(*)
    FROM prepaid.message_attempts a WHERE a.message_id = m.message_id)
    FROM prepaid.messages m WHERE m.message_id = $qid")" "quiet message still queued, no attempt"
assert_eq 0 "$(requests_for "$qid")" "the gateway received nothing during quiet hours"
assert_eq t "$(psql_q "SELECT prepaid.cancel_message($qid2, 'test: not needed')")" \
    "prepaid.cancel_message stops a queued message"
# When the quiet hours are over (as if the clock had moved on), it is sent.
psql_q "UPDATE prepaid.sites SET quiet_from = '00:00', quiet_until = '00:00'
    WHERE site_id = 'quiet';
    UPDATE prepaid.messages SET next_attempt_at = now() WHERE message_id = $qid" >/dev/null
wait_until "SELECT state = 'sent' FROM prepaid.messages WHERE message_id = $qid" 10 \
    "the quiet message is sent once the quiet hours are over"
psql_q "UPDATE prepaid.messages SET next_attempt_at = now() WHERE message_id = $qid2" >/dev/null
sleep 1.2 # a poll
gw_load
assert_eq "cancelled|0|test: not needed" "$(psql_q "SELECT state || '|' || attempts || '|' || last_error
    FROM prepaid.message_status WHERE message_id = $qid2")" "the cancelled message stays cancelled"
assert_eq 0 "$(requests_for "$qid2")" "the gateway never received the cancelled message"
assert_eq t "$(psql_q "SELECT prepaid.cancel_message($qid, 'too late') IS NOT TRUE
    AND (SELECT state = 'sent' FROM prepaid.messages WHERE message_id = $qid)")" \
    "a sent message cannot be cancelled"

##########################################################################
note "4. two daemons on one database send each of 50 messages exactly once"

daemon2_config mqtt.client_id=prepaidd-test-2
cat "$GATEWAYS" >>"$CONF2"
daemon2_start
first=$(psql_q "SELECT min(x) FROM (SELECT public.t_send('NT1', 'low_balance', 'bulk',
    jsonb_build_object('i', g::text)) AS x FROM generate_series(1, 50) g) s")
ids="message_id BETWEEN $first AND $first + 49"
assert_eq 50 "$(psql_q "SELECT count(*) FROM prepaid.messages WHERE $ids AND gateway = 'bulk'")" \
    "50 messages queued in one transaction"
wait_until "SELECT count(*) = 50 FROM prepaid.messages WHERE $ids AND state = 'sent'" 30 \
    "all 50 sent"
sleep 1.2 # a poll of both daemons: a double send would show now
gw_load
assert_eq 50 "$(psql_q "SELECT count(*) FROM public.gw WHERE path = '/slow'")" \
    "requests the gateway received"
assert_eq 50 "$(psql_q "SELECT count(DISTINCT body::jsonb->>'id') FROM public.gw
    WHERE path = '/slow' AND body::jsonb->>'id' = ref")" "distinct message ids in the bodies"
assert_eq 50 "$(psql_q "SELECT count(*) FROM prepaid.messages m WHERE $ids AND (SELECT count(*)
    FROM public.gw g WHERE g.path = '/slow' AND g.body::jsonb->>'id' = m.message_id::text) = 1")" \
    "messages the gateway received exactly once"
assert_eq "50|50" "$(psql_q "SELECT count(*) || '|' || count(*) FILTER (WHERE attempt = 1
    AND outcome = 'sent') FROM prepaid.message_attempts WHERE $ids")" \
    "one attempt per message, all sent"
n1=$(grep -cE "message [0-9]+: sent to .* through bulk" "$DAEMON_LOG" || true)
n2=$(grep -cE "message [0-9]+: sent to .* through bulk" "$DAEMON2_LOG" || true)
echo "    daemon 1 sent $n1, daemon 2 sent $n2"
assert_eq 50 "$((n1 + n2))" "sent lines in the two daemons' logs"
if [ "$n1" = 0 ] || [ "$n2" = 0 ]; then
	fail "one daemon sent everything ($n1 / $n2): not a test of sharing"
fi
echo "ok - both daemons sent some"
# The connections the gateway saw from the second daemon, which talked to
# no other gateway: curl opens one only when those it has are all busy, so
# this is how many requests it had in flight at once (checked in 6).
ids2=$(grep -oE "message [0-9]+: sent to .* through bulk" "$DAEMON2_LOG" |
    sed -E "s/^message ([0-9]+):.*/'\1'/" | paste -sd , -)
bulk_conns=$(psql_q "SELECT count(DISTINCT line->>'peer') FROM public.gwlog
    WHERE line->>'path' = '/slow' AND line->'headers'->>'X-Ref' IN ($ids2)")
assert_eq "bulk|50|0|0" "$(psql_q "SELECT gateway || '|' || sent || '|' || failed || '|' || retried
    FROM prepaid.gateway_stats WHERE gateway = 'bulk'")" "gateway_stats for bulk"

##########################################################################
note "5. recipients masked and the secret kept out of the daemons' logs"

for f in "$DAEMON_LOG" "$DAEMON2_LOG"; do
	if grep -nF -e "${PHONE#+86}" -e 13700001111 "$f"; then
		fail "a full phone number is in $(basename "$f")"
	fi
	if grep -nF -e "$SECRET" "$f"; then
		fail "the gateway secret is in $(basename "$f")"
	fi
	if grep -nF -e "O'Brien" -e "李明" "$f"; then
		fail "the occupant's name (a message body) is in $(basename "$f")"
	fi
done
echo "ok - no full number, secret or name in either log"
grep -qE "\*{10}5678" "$DAEMON_LOG" || fail "the masked number (last 4 digits) is not in the log"
echo "ok - the log names the recipient as **********5678"
assert_eq 1 "$(grep -cE "message $id1: sent to \*+5678 through json" "$DAEMON_LOG")" \
    "log line for the JSON message names the masked recipient"
assert_eq "Bearer $SECRET" "$(psql_q "SELECT DISTINCT headers->>'Authorization' FROM public.gw
    WHERE path = '/ok' AND ref IN ('$id1', '$qid')")" "the secret reached the gateway as a bearer token"
assert_eq 0 "$(psql_q "SELECT count(*) FROM public.gw WHERE ref = '$id2'
    AND headers ? 'Authorization'")" "no Authorization on the gateway without auth"

##########################################################################
note "6. gateway concurrency and shipped templates"

# concurrency = 2 for bulk: at most 2 requests at once from one daemon.
[ "$bulk_conns" -le 2 ] ||
    fail "the bulk gateway (concurrency 2) saw $bulk_conns connections from the second daemon"
echo "ok - the bulk gateway saw $bulk_conns connections from the second daemon (concurrency 2)"

# E-mail texts reach occupants as they are: a template must hold line
# breaks, not the two characters backslash and n.
assert_eq "" "$(psql_q "SELECT string_agg(template_key || '/' || channel || '/' || language, ' '
    ORDER BY 1) FROM prepaid.message_templates WHERE strpos(body, E'\\\\n') > 0")" \
    "shipped templates with a literal backslash-n instead of a line break"

# A site without a payment link: the link's section is left out, and the
# reminder still reads as a sentence.
psql_q "UPDATE prepaid.sites SET payment_link = NULL WHERE site_id = 'default'" >/dev/null
idl=$(psql_q "SELECT prepaid.send_message('NT1', 'low_balance', 'sms', '{\"ref\": \"R-nolink\"}')")
wait_until "SELECT state IN ('sent', 'failed') FROM prepaid.messages WHERE message_id = $idl" 15 \
    "message $idl (no payment link) finished"
gw_load
assert_eq "true|true" "$(psql_q "SELECT (body::jsonb->>'text' = public.t_expected($idl))::text || '|' ||
    (right(body::jsonb->>'text', 6) = '请及时充值。')::text FROM public.gw WHERE ref = '$idl'")" \
    "low_balance without a payment link ends '请及时充值。', not '请及时充值：'"
assert_eq "Dear Li, the balance of meter M1 is 5.00 yuan. Please top up." "$(psql_q "SELECT
    public.t_render(body, '{\"name\": \"Li\", \"meter\": \"M1\", \"balance\": \"5.00\",
    \"link\": \"\"}') FROM prepaid.message_templates WHERE template_key = 'low_balance'
    AND channel = 'sms' AND language = 'en'")" "the English text without a link"
psql_q "UPDATE prepaid.sites SET payment_link = 'https://pay.example.org/p?site=default&m=1'
    WHERE site_id = 'default'" >/dev/null

##########################################################################
note "7. e-mail over SMTP: headers written by the daemon, text intact"

SMTP_LOG=$LIB_TMP/smtp.log
SMTP_PORT=$(free_port)
$LIB_SETSID "$FAKEGW" -s "$SMTP_PORT" "$SMTP_LOG" >"$LIB_TMP/smtp.out" 2>&1 &
LIB_PIDS+=("$!")
deadline=$(($(lib_now_ms) + 10000))
until grep -q "listening on $SMTP_PORT" "$LIB_TMP/smtp.out"; do
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "the fake SMTP server did not start"
	sleep 0.1
done
cat >>"$CONF" <<EOF

[gateway mail]
channel = email
type = smtp
url = smtp://127.0.0.1:$SMTP_PORT
mail_from = billing@example.com
max_attempts = 3
retry_initial_ms = 200
EOF
from=$(daemon_log_lines)
daemon_reload
wait_log 'reload: configuration .* applied' "$from" 10
psql_q "SELECT prepaid.register_meter('NTM');
    SELECT prepaid.move_in('NTM', '王小明 \"Ming\" <x>', NULL, 'ming@example.com', 'zh')" >/dev/null
m1=$(psql_q "SELECT prepaid.send_message('NTM', 'low_balance', 'email')")
psql_q "SELECT prepaid.move_in('NTM', 'Later', NULL, 'later@example.com', 'en')" >/dev/null
m2=$(psql_q "SELECT prepaid.send_message('NTM', 'arrears', 'email')")
psql_q "SELECT prepaid.move_in('NTM', 'Refused', NULL, 'refuse@example.com', 'en')" >/dev/null
m3=$(psql_q "SELECT prepaid.send_message('NTM', 'arrears', 'email')")
psql_q "UPDATE prepaid.messages SET gateway = 'mail' WHERE message_id IN ($m1, $m2, $m3)" >/dev/null
wait_until "SELECT count(*) = 3 FROM prepaid.messages WHERE message_id IN ($m1, $m2, $m3)
    AND state IN ('sent', 'failed')" 20 "the three e-mails finished"
assert_eq "sent|1|250" "$(psql_q "SELECT state || '|' || attempts || '|' || last_http_status
    FROM prepaid.message_status WHERE message_id = $m1")" "e-mail accepted (250) at once"
assert_eq "sent|2" "$(psql_q "SELECT state || '|' || attempts FROM prepaid.messages
    WHERE message_id = $m2")" "451 (try again) retried, then accepted"
assert_eq "failed|1|550" "$(psql_q "SELECT state || '|' || attempts || '|' || last_http_status
    FROM prepaid.message_status WHERE message_id = $m3")" "550 (no such user) final"
# What the server received, checked in SQL: the envelope, the headers, and
# the subject and text decoded back to the template's, byte for byte.
psql_q "CREATE TABLE public.smtplog (line text)" >/dev/null
"$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d prepaid \
    -c "COPY public.smtplog (line) FROM STDIN WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')" \
    <"$SMTP_LOG" || fail "cannot load the SMTP log"
assert_eq "<billing@example.com>|[\"<ming@example.com>\"]|true|true|true" "$(psql_q "
    WITH m AS (SELECT line::jsonb AS j FROM public.smtplog
               WHERE line::jsonb->'rcpt' ? '<ming@example.com>'),
    parts AS (SELECT j, split_part(j->>'data', E'\\r\\n\\r\\n', 1) AS head,
                     split_part(j->>'data', E'\\r\\n\\r\\n', 2) AS body FROM m),
    p AS (SELECT params FROM prepaid.messages WHERE message_id = $m1),
    t AS (SELECT subject, public.t_render(body, p.params) AS text
          FROM prepaid.message_templates, p
          WHERE template_key = 'low_balance' AND channel = 'email' AND language = 'zh')
    SELECT j->>'from' || '|' || (j->'rcpt')::text || '|' ||
           (head LIKE '%Subject: =?UTF-8?B?' || encode(convert_to(t.subject, 'UTF8'), 'base64') || '?=%')::text
           || '|' || (head LIKE '%Content-Type: text/plain; charset=UTF-8%')::text || '|' ||
           (convert_from(decode(replace(body, E'\\r\\n', ''), 'base64'), 'UTF8') = t.text)::text
    FROM parts, t")" "envelope, subject, content type and text as sent"

daemon2_stop
daemon_stop
echo "PASS: notify"

#!/usr/bin/env python3
"""tests/model/moneydiff.py: the differential test of prepaidd's money.

  moneydiff.py gen --seed S [--meters N] [--days D] >scenario.json
  moneydiff.py run scenario.json      publish it to the daemon (MQTT) and
                                      make its psql calls, in order
  moneydiff.py check scenario.json    compare the daemon's ledger with the
                                      reference model (tests/model/money.py)

`run` and `check` reach the servers through the environment tests/lib.sh
sets: BROKER_PORT, PG_BINDIR, PG_PORT. The model never calls the SQL: it is
given the same scenario the daemon was given and computes, from the rules of
prepaidd-sql(7) alone, the ledger the daemon must hold. `check` compares, to
the unit, every interval's entries per part (day, tariff version, band,
tier), every standing day, the stored readings, the anomalies and every
balance, checks the carry rule entry by entry and that every statement adds
up, prints what differs and exits 1 if anything does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import money  # noqa: E402

SH = dt.timezone(dt.timedelta(hours=8))
OFFSETS = [("Z", 0), ("+08:00", 480), ("+05:30", 330), ("-03:00", -180), ("+14:00", 840), ("+08:00", 480)]

# ------------------------------------------------------------------ scenario

TARIFFS = {
    # monthly tiers, a standing charge with sub-fen digits
    "tier": {"tiers": [{"from_kwh": 0, "price": 0.5}, {"from_kwh": 10, "price": 1.0}],
             "standing_per_day": 0.1234},
    # peak and valley with rest days, tier increments, a service fee, tiers
    # starting on the 2nd of the month
    "tou": {"bands": {"work": [{"start": "00:00", "band": "valley", "price": 0.3},
                               {"start": "08:00", "band": "peak", "price": 0.6},
                               {"start": "22:00", "band": "valley", "price": 0.3}],
                      "rest": [{"start": "00:00", "band": "valley", "price": 0.25},
                               {"start": "10:00", "band": "flat", "price": 0.45}]},
            "tiers": [{"from_kwh": 0, "price": 0}, {"from_kwh": 20, "price": 0.05}],
            "period_start_day": 2, "service_per_kwh": 0.0123, "standing_per_day": 0.05},
    # yearly tiers with a free quota
    "year": {"tiers": [{"from_kwh": 0, "price": 0.4883}, {"from_kwh": 30, "price": 0.5383},
                       {"from_kwh": 60, "price": 0.7883}],
             "period": "year", "free_kwh": 2.5, "standing_per_day": 0.3333},
}
# New versions created while readings stream in (effective after every
# reading published so far).
NEW_VERSIONS = {
    "tier": ("2027-01-02T12:00:00+08:00",
             {"tiers": [{"from_kwh": 0, "price": 0.52}, {"from_kwh": 10, "price": 1.05}],
              "standing_per_day": 0.2}),
    "tou": ("2027-01-01T09:30:00+08:00",
            {"bands": {"work": [{"start": "00:00", "band": "valley", "price": 0.31},
                                {"start": "07:30", "band": "peak", "price": 0.62}]},
             "service_per_kwh": 0.0077, "period_start_day": 2}),
}
START = dt.datetime(2026, 12, 28, 0, 0, tzinfo=SH)


def fmt_ts(us: int, off) -> str:
    name, minutes = off
    t = money.dt_of(us).astimezone(dt.timezone(dt.timedelta(minutes=minutes)))
    s = t.strftime("%Y-%m-%dT%H:%M:%S")
    return s + ("Z" if name == "Z" else name)


def gen(seed: int, n_meters: int, days: int, clean: bool = False) -> dict:
    """A scenario; clean: in order, without the odd data (to check the model
    against the daemon where both agree)."""
    rnd = random.Random(seed)
    sc = {"seed": seed, "sites": [
        {"site_id": "default", "time_zone": "Asia/Shanghai", "default_tariff": "tier"},
        {"site_id": "west", "time_zone": "Asia/Kolkata", "default_tariff": "tou"},
    ], "holidays": [["CN", "2027-01-01", "holiday"], ["CN", "2027-01-02", "holiday"],
                    ["CN", "2027-01-03", "workday"]],
        "tariffs": [{"tariff_id": k, "effective_from": "2026-11-01T00:00:00+08:00", "definition": v}
                    for k, v in TARIFFS.items()],
        "meters": [], "assignments": [], "steps": []}
    end_us = money.us_of(START + dt.timedelta(days=days))
    events = []  # (sort_time, order, step)
    order = 0
    late = []  # steps to publish later (gap fills, first readings, duplicates)
    decisions = []
    for i in range(n_meters):
        mid = "MD%04d%04d" % (seed % 10000, i)
        site = "west" if i % 5 == 4 else "default"
        sc["meters"].append({"meter_id": mid, "site_id": site})
        tz = money.ZoneInfo("Asia/Kolkata" if site == "west" else "Asia/Shanghai")
        # tariff: the site's default, or an assignment (some commissioned at 00:10 local)
        first_day = (START + dt.timedelta(days=rnd.randrange(0, 2))).astimezone(tz).date()
        t_local = dt.datetime(first_day.year, first_day.month, first_day.day, tzinfo=tz)
        kind = rnd.choice(["default", "default", "tier", "tou", "year", "commission"])
        t = money.us_of(t_local) + rnd.randrange(0, 6 * 3600) * 1_000_000
        if kind == "commission":
            tariff = rnd.choice(["tier", "year"])
            sc["assignments"].append([mid, tariff, money.us_of(t_local + dt.timedelta(minutes=10))])
            t = money.us_of(t_local + dt.timedelta(minutes=30))
        elif kind != "default":
            sc["assignments"].append([mid, kind, money.us_of(START - dt.timedelta(days=30))])
        seq = rnd.randrange(1, 5000)
        wh = rnd.randrange(0, 2_000_000)
        power = rnd.choice([300, 800, 1500, 2500, 4000])
        off = rnd.choice(OFFSETS)
        feats = set(f for f in ["gap", "late_first", "dup", "reorder", "reset", "jump", "edge",
                                "far", "offline", "stall", "midnight"] if rnd.random() < 0.35)
        if clean:
            feats &= {"offline", "midnight"}
        readings = []
        n = 0
        special_near = set()
        while t < end_us:
            readings.append([seq, t, wh])
            n += 1
            seq += 1
            r = rnd.random()
            if "edge" in feats and n == 5:
                # 61 s: 1017 Wh is above 60,000 W exactly, 1016 is not
                t += 61_000_000
                wh += 1017
                special_near |= {seq - 1, seq}
                continue
            if "edge" in feats and n == 9:
                t += 61_000_000
                wh += 1016
                special_near |= {seq - 1, seq}
                continue
            if "jump" in feats and n == 12:
                t += 300_000_000
                wh += 40_000
                special_near |= {seq - 1, seq}
                decisions.append((mid, seq - 1, seq, rnd.choice(["accept", "accept", "reject", "leave"])))
                continue
            if "reset" in feats and n == 20:
                t += 1800_000_000
                wh = rnd.randrange(0, 50)
                special_near |= {seq - 1, seq}
                continue
            if "stall" in feats and n == 15:
                wh += 5  # same time as the reading before
                special_near |= {seq - 1, seq}
                continue
            if "offline" in feats and n == 25:
                step = rnd.randrange(40, 80) * 3600
            elif "midnight" in feats and r < 0.15:
                lt = money.dt_of(t).astimezone(tz)
                nxt = dt.datetime(lt.year, lt.month, lt.day, tzinfo=tz) + dt.timedelta(days=1)
                cand = [nxt] + [dt.datetime(lt.year, lt.month, lt.day, h, m, tzinfo=tz)
                                for h, m in ((8, 0), (22, 0), (10, 0), (7, 30))]
                cand = [c for c in cand if money.us_of(c) > t]
                step = (money.us_of(min(cand)) - t) // 1_000_000
            else:
                step = rnd.randrange(15, 150) * 60 + rnd.randrange(0, 60)
            t += step * 1_000_000
            wh += power * step // 3600 + rnd.randrange(0, 30)
        # the meter's stream, in seq order, then perturbed
        stream = []
        for k, (s, ts, e) in enumerate(readings):
            o = off if rnd.random() < 0.7 else rnd.choice(OFFSETS)
            stream.append({"op": "publish", "meter": mid, "seq": s, "ts": fmt_ts(ts, o),
                           "energy_wh": e, "t": ts})
        if "far" in feats and len(stream) > 10:
            k = rnd.randrange(6, len(stream) - 2)
            # (well beyond the bound, whatever arrives with it)
            far = rnd.choice([stream[k]["seq"] + 1_000_000_000, 2**63 - 1, stream[k]["seq"] + 1_005_000])
            special_near.add(far)
            stream.insert(k, {"op": "publish", "meter": mid, "seq": far, "ts": stream[k]["ts"],
                              "energy_wh": stream[k]["energy_wh"], "t": stream[k]["t"]})
        for k, st in enumerate(stream):
            special = st["seq"] in special_near or st["seq"] + 1 in special_near or st["seq"] - 1 in special_near
            if "late_first" in feats and k < 2:
                late.append((st, rnd.randrange(200, 800)))
                continue
            if "gap" in feats and 3 < k < len(stream) - 1 and not special and rnd.random() < 0.08:
                late.append((st, rnd.randrange(150, 900)))
                continue
            if "dup" in feats and rnd.random() < 0.1:
                late.append((dict(st), rnd.randrange(0, 400)))
            events.append([st["t"], order, st])
            order += 1
        if "reorder" in feats:
            mine = [e for e in events if e[2]["meter"] == mid]
            for a, b in zip(mine[::2], mine[1::2]):
                if rnd.random() < 0.3:
                    a[0], b[0] = b[0], a[0] + 1

    events.sort(key=lambda e: (e[0], e[1]))
    steps = [e[2] for e in events]
    # late publishes: at their position in the stream plus a delay in steps
    late.sort(key=lambda x: x[1])
    for st, delay in late:
        pos = next((k for k, x in enumerate(steps) if x.get("t", 0) > st["t"]), len(steps))
        steps.insert(min(pos + delay, len(steps)), dict(st))
    # syncs: every ~120 publishes
    out = []
    for k, st in enumerate(steps):
        out.append(st)
        if k % 120 == 119:
            out.append({"op": "sync"})
    steps = out
    # decisions on jumps: after the sync that follows both readings, later on
    for mid, a, b, verdict in decisions:
        if verdict == "leave":
            continue
        pos = max(k for k, x in enumerate(steps) if x.get("meter") == mid and x.get("seq") in (a, b))
        syncs = [k for k, x in enumerate(steps) if x["op"] == "sync" and k > pos]
        at = syncs[min(len(syncs) - 1, rnd.randrange(0, 4))] + 1 if syncs else len(steps)
        steps.insert(at, {"op": verdict, "meter": mid, "from_seq": a, "to_seq": b})
        if not syncs:
            steps.insert(at, {"op": "sync"})
    # tariff versions and assignments created mid-stream, after every
    # reading published so far
    def insert_before_time(step, eff_us):
        pos = 0
        for k, x in enumerate(steps):
            if x["op"] == "publish" and x["t"] >= eff_us:
                break
            pos = k + 1
        steps.insert(pos, step)

    for tid, (eff, d) in NEW_VERSIONS.items():
        e = money.parse_ts(eff)
        insert_before_time({"op": "tariff_version", "tariff": tid, "effective_from": eff, "definition": d}, e)
    movers = [m["meter_id"] for m in sc["meters"][1::7]]
    eff = "2027-01-01T15:00:00+08:00"
    for mid in movers:
        insert_before_time({"op": "assign", "meter": mid, "tariff": "year", "effective_from": eff},
                           money.parse_ts(eff))
    # credits
    for m in sc["meters"]:
        for j in range(rnd.randrange(0, 3)):
            k = rnd.randrange(0, len(steps))
            amt = "%d.%02d" % (rnd.randrange(0, 200), rnd.randrange(0, 100))
            if amt == "0.00":
                amt = "0.01"
            steps.insert(k, {"op": "credit", "meter": m["meter_id"], "amount": amt,
                             "reference": "ref-%s-%d" % (m["meter_id"], j)})
            if j == 1:  # a repeat of the first: idempotent, credits nothing
                steps.append({"op": "credit_repeat", "meter": m["meter_id"],
                              "reference": "ref-%s-0" % m["meter_id"]})
    steps.append({"op": "sync"})
    sc["steps"] = steps
    return sc


def model_of(sc: dict) -> money.World:
    w = money.World()
    for s in sc["sites"]:
        w.site(s["site_id"], s["time_zone"], default_tariff=s["default_tariff"])
    for cal, day, kind in sc["holidays"]:
        w.holiday(cal, dt.date.fromisoformat(day), kind)
    for t in sc["tariffs"]:
        w.tariff_version(t["tariff_id"], money.parse_ts(t["effective_from"]), t["definition"])
    for m in sc["meters"]:
        w.meter(m["meter_id"], m["site_id"])
    for mid, tid, eff in sc["assignments"]:
        w.assign(mid, tid, eff)
    credits = {}
    for st in sc["steps"]:
        op = st["op"]
        if op == "publish":
            w.reading(st["meter"], st["seq"], money.parse_ts(st["ts"]), st["energy_wh"])
        elif op == "tariff_version":
            w.tariff_version(st["tariff"], money.parse_ts(st["effective_from"]), st["definition"])
        elif op == "assign":
            w.assign(st["meter"], st["tariff"], money.parse_ts(st["effective_from"]))
        elif op in ("accept", "reject"):
            w.decide(st["meter"], st["from_seq"], st["to_seq"], op + "ed")
        elif op == "credit":
            w.credit(st["meter"], st["amount"], st["reference"])
            credits[st["reference"]] = st["amount"]
        elif op == "credit_repeat":
            assert w.credit(st["meter"], credits[st["reference"]], st["reference"]) == "repeat"
    return w


# ------------------------------------------------------------------ servers


def psql(sql: str) -> str:
    cmd = [os.path.join(os.environ.get("PG_BINDIR", ""), "psql") if os.environ.get("PG_BINDIR") else "psql",
           "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", os.environ["PG_PORT"],
           "-U", "postgres", "-d", "prepaid", "-c", sql]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("psql: %s\n%s" % (sql[:200], r.stderr))
    return r.stdout.strip()


def q(v) -> str:
    return "'" + str(v).replace("'", "''") + "'"


class Mqtt:
    """Just enough MQTT 3.1.1 to publish at QoS 1 and wait for each PUBACK."""

    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port))
        cid = b"moneydiff-%d" % os.getpid()
        body = struct.pack("!H", 4) + b"MQTT" + bytes([4, 2]) + struct.pack("!H", 30) + struct.pack("!H", len(cid)) + cid
        self.s.sendall(bytes([0x10]) + self.rlen(len(body)) + body)
        assert self.read_packet()[0] == 0x20
        self.pid = 0

    @staticmethod
    def rlen(n: int) -> bytes:
        out = b""
        while True:
            b, n = n % 128, n // 128
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise RuntimeError("broker closed the connection")
            b += c
        return b

    def read_packet(self):
        h = self.recv(1)[0]
        n, mul = 0, 1
        while True:
            c = self.recv(1)[0]
            n += (c & 127) * mul
            mul *= 128
            if not c & 128:
                break
        return h & 0xF0, self.recv(n)

    def publish(self, topic: str, payload: bytes):
        self.pid = self.pid % 65535 + 1
        t = topic.encode()
        body = struct.pack("!H", len(t)) + t + struct.pack("!H", self.pid) + payload
        self.s.sendall(bytes([0x32]) + self.rlen(len(body)) + body)
        while True:
            typ, b = self.read_packet()
            if typ == 0x40 and struct.unpack("!H", b[:2])[0] == self.pid:
                return


def run(sc: dict):
    sql = ["SELECT prepaid.create_site('west', 'West', 'Asia/Kolkata')",
           "SELECT prepaid.create_site('marks', 'Markers (no tariff)')"]
    for cal, day, kind in sc["holidays"]:
        sql.append("INSERT INTO prepaid.holidays (calendar, day, kind) VALUES (%s, %s, %s)" % (q(cal), q(day), q(kind)))
    for t in sc["tariffs"]:
        sql.append("SELECT prepaid.create_tariff(%s, %s)" % (q(t["tariff_id"]), q(t["tariff_id"])))
        sql.append("SELECT prepaid.create_tariff_version(%s, %s, %s)" % (
            q(t["tariff_id"]), q(t["effective_from"]), q(json.dumps(t["definition"]))))
    for s in sc["sites"]:
        sql.append("UPDATE prepaid.sites SET default_tariff_id = %s WHERE site_id = %s" % (q(s["default_tariff"]), q(s["site_id"])))
    sql.append("SELECT prepaid.register_meter('MARK')")
    sql.append("SELECT prepaid.set_meter_site('MARK', 'marks')")
    for m in sc["meters"]:
        sql.append("SELECT prepaid.register_meter(%s)" % q(m["meter_id"]))
        if m["site_id"] != "default":
            sql.append("SELECT prepaid.set_meter_site(%s, %s)" % (q(m["meter_id"]), q(m["site_id"])))
    for mid, tid, eff in sc["assignments"]:
        sql.append("SELECT prepaid.assign_tariff(%s, %s, %s)" % (q(mid), q(tid), q(money.dt_of(eff).isoformat())))
    psql(";\n".join(sql))

    mq = Mqtt(int(os.environ["BROKER_PORT"]))
    marker = 0
    credits = {}

    def sync():
        nonlocal marker
        marker += 1
        mq.publish("meters/MARK/reading", json.dumps(
            {"seq": marker, "ts": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "energy_wh": 1}).encode())
        deadline = time.time() + 60
        while psql("SELECT count(*) FROM prepaid.readings WHERE meter_id = 'MARK' AND seq = %d" % marker) != "1":
            if time.time() > deadline:
                raise RuntimeError("marker %d not stored within 60 s" % marker)
            time.sleep(0.05)

    n = 0
    for st in sc["steps"]:
        op = st["op"]
        if op == "publish":
            mq.publish("meters/%s/reading" % st["meter"], json.dumps(
                {"seq": st["seq"], "ts": st["ts"], "energy_wh": st["energy_wh"], "relay": "closed"}).encode())
            n += 1
            continue
        sync()
        if op == "tariff_version":
            psql("SELECT prepaid.create_tariff_version(%s, %s, %s)" % (
                q(st["tariff"]), q(st["effective_from"]), q(json.dumps(st["definition"]))))
        elif op == "assign":
            psql("SELECT prepaid.assign_tariff(%s, %s, %s)" % (q(st["meter"]), q(st["tariff"]), q(st["effective_from"])))
        elif op in ("accept", "reject"):
            aid = psql("SELECT id FROM prepaid.anomalies WHERE meter_id = %s AND kind = 'implausible_jump' "
                       "AND from_seq = %d AND to_seq = %d AND state = 'open'" % (q(st["meter"]), st["from_seq"], st["to_seq"]))
            if aid:
                psql("SELECT prepaid.%s_anomaly(%s, 'moneydiff')" % (op, aid))
            else:
                print("run: no open anomaly %s %d-%d to %s" % (st["meter"], st["from_seq"], st["to_seq"], op))
        elif op == "credit":
            psql("SELECT prepaid.credit(%s, %s, %s)" % (q(st["meter"]), st["amount"], q(st["reference"])))
            credits[st["reference"]] = st["amount"]
        elif op == "credit_repeat":
            psql("SELECT prepaid.credit(%s, %s, %s)" % (q(st["meter"]), credits[st["reference"]], q(st["reference"])))
    print("run: %d readings published, %d markers" % (n, marker))


# ------------------------------------------------------------------ compare


def jq(sql: str):
    out = psql("SELECT coalesce(json_agg(t), '[]') FROM (%s) t" % sql)
    return json.loads(out, parse_float=Decimal)


def d4(v) -> str:
    return "%.4f" % Decimal(str(v))


def check(sc: dict, verbose: int) -> int:
    w = model_of(sc)
    cols = {r["column_name"] for r in jq("SELECT column_name FROM information_schema.columns "
                                         "WHERE table_schema = 'prepaid' AND table_name = 'ledger'")}
    fen = "amount_fen" in cols
    mcols = {r["column_name"] for r in jq("SELECT column_name FROM information_schema.columns "
                                          "WHERE table_schema = 'prepaid' AND table_name = 'meters'")}
    amount = "l.amount_fen" if fen else "l.amount * 100"
    exact = "l.exact_fen" if "exact_fen" in cols else "l.amount * 100"
    balance = "m.balance_fen" if "balance_fen" in mcols else "m.balance * 100"
    ids = [m["meter_id"] for m in sc["meters"]]
    idlist = ",".join(q(i) for i in ids)
    rows = jq("SELECT l.entry_id, l.meter_id, l.kind, l.from_seq, l.to_seq, l.day, v.tariff_id, "
              "(extract(epoch FROM v.effective_from) * 1000000)::bigint AS eff, l.band, l.tier, l.price, "
              "l.service_fee, l.energy_wh, %s AS amount, %s AS exact FROM prepaid.ledger l "
              "LEFT JOIN prepaid.tariff_versions v ON v.version_id = l.tariff_version_id "
              "WHERE l.meter_id IN (%s) ORDER BY l.entry_id" % (amount, exact, idlist))
    bal = {r["meter_id"]: Decimal(str(r["b"])) for r in jq(
        "SELECT m.meter_id, %s AS b FROM prepaid.meters m WHERE m.meter_id IN (%s)" % (balance, idlist))}
    stored = {r["meter_id"]: r["s"] for r in jq(
        "SELECT meter_id, array_agg(seq ORDER BY seq) AS s FROM prepaid.readings "
        "WHERE meter_id IN (%s) GROUP BY meter_id" % idlist)}
    # superseded: the interval of an anomaly a late reading split (history)
    anoms = jq("SELECT meter_id, kind, from_seq, to_seq, state FROM prepaid.anomalies "
               "WHERE meter_id IN (%s) AND state <> 'superseded'" % idlist)

    def ckey(e):
        return (e["kind"], e.get("from_seq"), e.get("to_seq"), str(e["day"]), e.get("tariff"), e.get("eff"),
                e.get("band"), e.get("tier"), d4(e["price"]) if e.get("price") is not None else None,
                d4(e["service"]) if e.get("service") is not None else None)

    fails = {"readings": 0, "intervals": 0, "parts": 0, "standing": 0, "balances": 0, "anomalies": 0,
             "carry": 0, "statements": 0, "fen": 0}
    by_part = {"tier": 0, "band": 0, "day": 0, "energy": 0, "amount": 0}
    n_iv = n_iv_ok = n_days = n_msgs = 0
    n_msgs = sum(1 for s in sc["steps"] if s["op"] == "publish")
    shown = 0
    day_lo, day_hi = None, None
    for mid in ids:
        mm = w.meters[mid]
        want = w.ledger(mm)
        if stored.get(mid, []) != want["stored"]:
            fails["readings"] += 1
            if verbose or shown < 20:
                shown += 1
                a, b = set(stored.get(mid, [])), set(want["stored"])
                print("READINGS %s: stored by the daemon, not by the model: %s; missing: %s" % (
                    mid, sorted(a - b)[:5], sorted(b - a)[:5]))
        wsum = {}
        for e in want["entries"]:
            k = ckey(e)
            a = wsum.setdefault(k, [0, Decimal(0)])
            a[0] += e.get("energy", 0)
            a[1] += e["exact"]
        gsum = {}
        mine = [r for r in rows if r["meter_id"] == mid]
        for r in mine:
            if r["kind"] not in ("charge", "standing"):
                continue
            e = {"kind": r["kind"], "from_seq": r["from_seq"], "to_seq": r["to_seq"], "day": r["day"],
                 "tariff": r["tariff_id"], "eff": r["eff"], "band": r["band"], "tier": r["tier"],
                 "price": r["price"], "service": r["service_fee"]}
            if r["kind"] == "standing":
                e = {"kind": "standing", "day": r["day"], "tariff": r["tariff_id"], "eff": r["eff"]}
            a = gsum.setdefault(ckey(e), [0, Decimal(0)])
            a[0] += r["energy_wh"] or 0
            a[1] += -Decimal(str(r["exact"]))
            if Decimal(str(r["amount"])) != Decimal(str(r["amount"])).to_integral_value():
                fails["fen"] += 1
        gsum = {k: v for k, v in gsum.items() if v != [0, Decimal(0)]}
        # per interval
        ivs = {}
        for k in set(wsum) | set(gsum):
            ivs.setdefault((k[0], k[1], k[2]) if k[0] == "charge" else ("standing", k[3]), []).append(k)
        for ik, keys in sorted(ivs.items(), key=lambda x: str(x[0])):
            bad = [k for k in keys if wsum.get(k) != gsum.get(k)]
            if ik[0] == "charge":
                n_iv += 1
            else:
                n_days += 1
            if not bad:
                if ik[0] == "charge":
                    n_iv_ok += 1
                continue
            fails["intervals" if ik[0] == "charge" else "standing"] += 1
            fails["parts"] += len(bad)
            for k in bad:
                wv, gv = wsum.get(k), gsum.get(k)
                if wv is None or gv is None:
                    other = [x for x in keys if x != k]
                    if any(x[3] != k[3] for x in other):
                        by_part["day"] += 1
                    elif any(x[6] != k[6] for x in other):
                        by_part["band"] += 1
                    else:
                        by_part["tier"] += 1
                elif wv[0] != gv[0]:
                    by_part["energy"] += 1
                else:
                    by_part["amount"] += 1
            if verbose or shown < 40:
                shown += 1
                print("%s %s %s:" % ("INTERVAL" if ik[0] == "charge" else "STANDING", mid, ik[1:]))
                for k in sorted(bad, key=str):
                    print("   %s  model %s  daemon %s" % (k[3:], wsum.get(k), gsum.get(k)))
        # balance
        if bal.get(mid) != Decimal(want["balance_fen"]):
            fails["balances"] += 1
            if verbose or shown < 60:
                shown += 1
                print("BALANCE %s: model %s fen (exact charges %s), daemon %s" % (
                    mid, want["balance_fen"], want["exact_fen"], bal.get(mid)))
        # anomalies
        wa = sorted(tuple(map(str, a)) for a in want["anomalies"])
        ga = sorted((str(a["from_seq"]), str(a["to_seq"]), a["kind"], a["state"]) for a in anoms if a["meter_id"] == mid)
        if wa != ga:
            fails["anomalies"] += 1
            if verbose or shown < 60:
                shown += 1
                print("ANOMALIES %s: model %s daemon %s" % (mid, sorted(set(wa) - set(ga)), sorted(set(ga) - set(wa))))
        # the carry, entry by entry
        if fen:
            chg = [(r["amount"], r["exact"]) for r in mine if r["kind"] in ("charge", "standing")]
            i = money.carry_check(chg)
            if i is not None:
                fails["carry"] += 1
                print("CARRY %s: entry %s breaks the carry rule" % (mid, [r for r in mine if r["kind"] in ("charge", "standing")][i]["entry_id"]))
        # statements add up: the whole range and a few slices
        days = sorted({str(r["day"]) for r in mine})
        if days:
            cuts = [days[0], days[len(days) // 3], days[2 * len(days) // 3], days[-1]]
            for a, b in [(cuts[0], cuts[-1]), (cuts[1], cuts[2]), (cuts[0], cuts[1])]:
                st = jq("SELECT line_no, kind, amount, balance FROM prepaid.statement(%s, %s, %s) ORDER BY line_no" % (q(mid), q(a), q(b)))
                opening = Decimal(str(st[0]["balance"]))
                closing = Decimal(str(st[-1]["balance"]))
                lines = sum((Decimal(str(x["amount"])) for x in st[1:-1] if x["amount"] is not None), Decimal(0))
                if lines != closing - opening:
                    fails["statements"] += 1
                    if verbose or shown < 80:
                        shown += 1
                        print("STATEMENT %s %s..%s: %d lines sum to %s, closing - opening is %s" % (
                            mid, a, b, len(st) - 2, lines, closing - opening))
    print("moneydiff: seed %s: %d meters, %d messages, %d charged intervals (%d matched to the unit), "
          "%d standing days" % (sc["seed"], len(ids), n_msgs, n_iv, n_iv_ok, n_days))
    bad = {k: v for k, v in fails.items() if v}
    if bad:
        print("moneydiff: FAIL: " + ", ".join("%s %d" % kv for kv in bad.items())
              + "; wrong parts by kind: " + ", ".join("%s %d" % kv for kv in by_part.items() if kv[1]))
        return 1
    print("moneydiff: every interval, part, standing day, anomaly and balance matches; statements add up")
    return 0


def main():
    import argparse
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--meters", type=int, default=24)
    g.add_argument("--days", type=int, default=7)
    g.add_argument("--clean", action="store_true")
    for c in ("run", "check", "model"):
        p = sub.add_parser(c)
        p.add_argument("scenario")
        p.add_argument("-v", "--verbose", action="count", default=0)
    a = ap.parse_args()
    if a.cmd == "gen":
        json.dump(gen(a.seed, a.meters, a.days, a.clean), sys.stdout, indent=0)
        return 0
    with open(a.scenario) as f:
        sc = json.load(f)
    if a.cmd == "run":
        run(sc)
        return 0
    if a.cmd == "model":
        # what the model gives, meter by meter (-v: every entry)
        w = model_of(sc)
        for mid, m in w.meters.items():
            led = w.ledger(m)
            print(mid, "balance_fen", led["balance_fen"], "exact", led["exact_fen"], "entries", len(led["entries"]))
            for e in led["entries"] if a.verbose else []:
                print("   ", {k: str(v) for k, v in e.items()})
        return 0
    return check(sc, a.verbose)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # a broken harness is not a money difference (exit 1)
        import traceback
        traceback.print_exc()
        sys.exit(2)

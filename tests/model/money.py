"""tests/model/money.py: the reference model of prepaidd's money.

Written from prepaidd-sql(7), section MONEY, and nothing else: it never calls
the SQL. Given what a deployment was told (sites, holidays, tariffs and their
versions, assignments, the readings in the order they arrived, anomaly
decisions and credits) it computes the ledger the contract says the daemon
must hold, net of corrections: every charge entry (interval, part, tier,
band, energy, exact amount), every standing day, and each balance in fen.

Everything is exact: integers (Wh, fen, microseconds) and decimal.Decimal
for prices and exact amounts. Local times come from zoneinfo.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from decimal import Decimal
from zoneinfo import ZoneInfo

SEQ_BOUND = 1_000_000  # prepaidd-sql(7): a seq further away is held
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def us_of(t: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime, exactly."""
    d = t - EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def dt_of(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


def parse_ts(s: str) -> int:
    """RFC 3339 with an offset (Z or +hh:mm) to epoch microseconds."""
    return us_of(dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00")))


def floor_div(a: int, b: int) -> int:
    return a // b  # Python's // floors, b > 0 here


def dec(v) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


# ------------------------------------------------------------------ tariffs


@dataclass
class Version:
    tariff_id: str
    effective_from: int  # us
    definition: dict
    ranges: list = field(default_factory=list)  # (lo_wh, tier, free, price)
    bands: dict = field(default_factory=dict)  # day type -> [(minute, band, price)]
    period: str = "month"
    start_day: int = 1
    start_month: int = 1
    standing: Decimal = Decimal(0)
    service: Decimal = Decimal(0)

    @property
    def has_bands(self) -> bool:
        return bool(self.bands)


def kwh_to_wh(v) -> int:
    w = dec(v) * 1000
    assert w == w.to_integral_value()
    return int(w)


def make_version(tariff_id: str, effective_from: int, d: dict) -> Version:
    v = Version(tariff_id, effective_from, d)
    v.period = d.get("period", "month")
    v.start_day = int(d.get("period_start_day", 1))
    v.start_month = int(d.get("period_start_month", 1))
    v.standing = dec(d.get("standing_per_day", 0))
    v.service = dec(d.get("service_per_kwh", 0))
    free = kwh_to_wh(d["free_kwh"]) if "free_kwh" in d else 0
    tiers = d.get("tiers")
    if tiers is None:
        tiers = [{"from_kwh": 0, "price": d.get("price", 0)}]
    built = [(kwh_to_wh(t["from_kwh"]), i + 1, dec(t["price"])) for i, t in enumerate(tiers)]
    los = sorted({lo for lo, _, _ in built} | ({free} if free > 0 else set()))
    for lo in los:
        if lo < free:
            v.ranges.append((lo, 0, True, Decimal(0)))
        else:
            tier, price = max((t for t in built if t[0] <= lo), key=lambda t: t[0])[1:]
            v.ranges.append((lo, tier, False, price))
    if "bands" in d:
        for dtype in ("work", "rest"):
            lst = d["bands"].get(dtype, d["bands"]["work"])
            v.bands[dtype] = [
                (int(b["start"][:2]) * 60 + int(b["start"][3:5]), b["band"], dec(b["price"])) for b in lst
            ]
    return v


def period_start(v: Version, day: dt.date) -> dt.date:
    if v.period == "year":
        s = dt.date(day.year, v.start_month, v.start_day)
        return s if day >= s else dt.date(day.year - 1, v.start_month, v.start_day)
    s = dt.date(day.year, day.month, v.start_day)
    if day >= s:
        return s
    return dt.date(day.year - 1, 12, v.start_day) if day.month == 1 else dt.date(day.year, day.month - 1, v.start_day)


# ------------------------------------------------------------------ world


@dataclass
class Site:
    site_id: str
    tz: ZoneInfo
    calendar: str
    max_power_w: int
    default_tariff: str | None


@dataclass
class Meter:
    meter_id: str
    site: Site
    max_power_w: int | None = None
    readings: dict = field(default_factory=dict)  # seq -> (ts_us, wh)
    held: list = field(default_factory=list)  # seq_out_of_range readings
    duplicates: int = 0
    assignments: list = field(default_factory=list)  # (eff_us, tariff_id)
    decisions: dict = field(default_factory=dict)  # (from_seq, to_seq) -> 'accepted'/'rejected'
    credits_fen: int = 0
    credit_refs: dict = field(default_factory=dict)

    @property
    def limit_w(self) -> int:
        return self.max_power_w if self.max_power_w is not None else self.site.max_power_w


class World:
    def __init__(self):
        self.sites: dict[str, Site] = {}
        self.meters: dict[str, Meter] = {}
        self.versions: dict[str, list[Version]] = {}  # tariff -> versions by effective_from
        self.holidays: dict[tuple[str, dt.date], str] = {}

    # --- what the operator and the meters do, in order

    def site(self, site_id, time_zone="Asia/Shanghai", calendar="CN", max_power_w=60000, default_tariff=None):
        self.sites[site_id] = Site(site_id, ZoneInfo(time_zone), calendar, max_power_w, default_tariff)

    def holiday(self, calendar, day: dt.date, kind):
        self.holidays[(calendar, day)] = kind

    def tariff_version(self, tariff_id, effective_from_us, definition):
        lst = self.versions.setdefault(tariff_id, [])
        lst.append(make_version(tariff_id, effective_from_us, definition))
        lst.sort(key=lambda v: v.effective_from)

    def meter(self, meter_id, site_id="default", max_power_w=None):
        if meter_id not in self.meters:
            self.meters[meter_id] = Meter(meter_id, self.sites[site_id], max_power_w)
        return self.meters[meter_id]

    def assign(self, meter_id, tariff_id, eff_us):
        m = self.meter(meter_id)
        m.assignments.append((eff_us, tariff_id))
        m.assignments.sort()

    def reading(self, meter_id, seq, ts_us, wh):
        """A reading as it arrives: stored, a duplicate, or held (seq bound)."""
        m = self.meter(meter_id)
        if seq in m.readings:
            m.duplicates += 1
            return "duplicate"
        if m.readings:
            hi, lo = max(m.readings), min(m.readings)
            if seq > hi + SEQ_BOUND or seq < lo - SEQ_BOUND:
                if all(h[0] != seq for h in m.held):  # one anomaly per seq held
                    m.held.append((seq, ts_us, wh))
                return "held"
        m.readings[seq] = (ts_us, wh)
        return "stored"

    def decide(self, meter_id, from_seq, to_seq, verdict):
        self.meters[meter_id].decisions[(from_seq, to_seq)] = verdict

    def credit(self, meter_id, amount_yuan: str, reference: str):
        m = self.meters[meter_id]
        fen = dec(amount_yuan) * 100
        assert fen == fen.to_integral_value()
        fen = int(fen)
        if reference in m.credit_refs:
            return "repeat" if m.credit_refs[reference] == fen else "conflict"
        m.credit_refs[reference] = fen
        m.credits_fen += fen
        return "credited"

    # --- the rules

    def tariff_at(self, m: Meter, at_us: int):
        t = None
        for eff, tid in m.assignments:
            if eff <= at_us:
                t = tid
        return t if t is not None else m.site.default_tariff

    def version_at(self, m: Meter, at_us: int) -> Version | None:
        tid = self.tariff_at(m, at_us)
        if tid is None:
            return None
        best = None
        for v in self.versions.get(tid, []):
            if v.effective_from <= at_us:
                best = v
        return best

    def day_type(self, site: Site, day: dt.date) -> str:
        k = self.holidays.get((site.calendar, day))
        if k == "holiday":
            return "rest"
        if k == "workday":
            return "work"
        return "rest" if day.isoweekday() >= 6 else "work"

    def local(self, site: Site, us: int) -> dt.datetime:
        return dt_of(us).astimezone(site.tz)

    def local_midnight_us(self, site: Site, day: dt.date) -> int:
        return us_of(dt.datetime(day.year, day.month, day.day, tzinfo=site.tz))

    def band_at(self, site: Site, v: Version, us: int):
        if not v.has_bands:
            return None, Decimal(0)
        lt = self.local(site, us)
        lst = v.bands[self.day_type(site, lt.date())]
        minute = lt.hour * 60 + lt.minute
        # a band starts on a whole minute; a start not after the local time
        name, price = lst[0][1], lst[0][2]
        for st, b, p in lst:
            if st * 60_000_000 <= (minute * 60 + lt.second) * 1_000_000 + lt.microsecond:
                name, price = b, p
        return name, price

    def cuts(self, m: Meter, t0: int, t1: int) -> list[int]:
        """Every instant inside (t0, t1) where the day, version or band may change."""
        site = m.site
        pts = {t0, t1}
        d = self.local(site, t0).date()
        last = self.local(site, t1).date()
        tariffs = {self.tariff_at(m, t0)} | {tid for eff, tid in m.assignments if t0 < eff < t1}
        starts = {0}
        for tid in tariffs:
            for v in self.versions.get(tid, []):
                if t0 < v.effective_from < t1:
                    pts.add(v.effective_from)
                for lst in v.bands.values():
                    starts |= {st for st, _, _ in lst}
        for eff, _ in m.assignments:
            if t0 < eff < t1:
                pts.add(eff)
        while d <= last:
            for st in starts:
                local = dt.datetime(d.year, d.month, d.day, st // 60, st % 60, tzinfo=site.tz)
                p = us_of(local)
                if t0 < p < t1:
                    pts.add(p)
            d += dt.timedelta(days=1)
        return sorted(pts)

    def intervals(self, m: Meter):
        """(from_seq, to_seq, class, wh, t0, t1) of consecutive stored readings."""
        seqs = sorted(m.readings)
        out = []
        for a, b in zip(seqs, seqs[1:]):
            ta, ea = m.readings[a]
            tb, eb = m.readings[b]
            wh = eb - ea
            t0, t1 = (ta, tb) if tb > ta else (tb - 1_000_000, tb)
            elapsed = max(tb - ta, 60_000_000)
            if wh < 0:
                cls = "register_down"
            elif wh == 0:
                cls = "zero"
            elif wh * 3_600_000_000 > m.limit_w * elapsed:
                cls = "implausible_jump"
            else:
                cls = "chargeable"
            out.append((a, b, cls, wh, t0, t1))
        return out

    def parts(self, m: Meter, fs, ts, wh, t0, t1):
        """Maximal spans of one local day, version and band, with their Wh."""
        site = m.site
        cuts = self.cuts(m, t0, t1)
        segs = []
        for s0, s1 in zip(cuts, cuts[1:]):
            v = self.version_at(m, s0)
            day = self.local(site, s0).date()
            band = self.band_at(site, v, s0) if v else (None, Decimal(0))
            key = (day, id(v) if v else None, band[0], band[1])
            if segs and segs[-1]["key"] == key and segs[-1]["s1"] == s0:
                segs[-1]["s1"] = s1
            else:
                segs.append({"key": key, "s0": s0, "s1": s1, "v": v, "day": day, "band": band})
        out = []
        span = t1 - t0
        for g in segs:
            e = floor_div(wh * (g["s1"] - t0), span) - floor_div(wh * (g["s0"] - t0), span)
            if e <= 0 or g["v"] is None:
                continue
            out.append({"from_seq": fs, "to_seq": ts, "s0": g["s0"], "s1": g["s1"], "day": g["day"],
                        "v": g["v"], "band": g["band"][0], "band_price": g["band"][1], "energy": e,
                        "period": period_start(g["v"], g["day"])})
        return out

    def ledger(self, m: Meter):
        """The net entries the contract gives, the anomalies and the balance."""
        anomalies = []
        parts = []
        for fs, ts, cls, wh, t0, t1 in self.intervals(m):
            if cls == "register_down":
                anomalies.append((fs, ts, "register_down", "noted"))
                continue
            if cls == "implausible_jump":
                state = m.decisions.get((fs, ts), "open")
                anomalies.append((fs, ts, "implausible_jump", state))
                if state != "accepted":
                    continue
            if cls == "zero":
                continue
            parts.extend(self.parts(m, fs, ts, wh, t0, t1))
        for seq, _, _ in m.held:
            anomalies.append((seq, seq, "seq_out_of_range", "open"))

        entries = []
        periods = {}
        for p in parts:
            periods.setdefault(p["period"], []).append(p)
        for plist in periods.values():
            plist.sort(key=lambda p: (p["s0"], p["s1"], p["to_seq"]))
            pos = 0
            for p in plist:
                v = p["v"]
                lo_e, hi_e = pos, pos + p["energy"]
                for i, (lo, tier, free, price) in enumerate(v.ranges):
                    hi = v.ranges[i + 1][0] if i + 1 < len(v.ranges) else None
                    a = max(lo, lo_e)
                    b = hi_e if hi is None else min(hi, hi_e)
                    if b <= a:
                        continue
                    pr = Decimal(0) if free else p["band_price"] + price
                    sv = Decimal(0) if free else v.service
                    e = b - a
                    entries.append({
                        "kind": "charge", "from_seq": p["from_seq"], "to_seq": p["to_seq"],
                        "day": p["day"], "tariff": v.tariff_id, "eff": v.effective_from,
                        "band": p["band"], "tier": tier, "price": pr, "service": sv,
                        "energy": e, "exact": e * (pr + sv) / 10,
                    })
                pos = hi_e

        # standing days: earliest to latest stored reading, by ts
        if m.readings:
            tss = [t for t, _ in m.readings.values()]
            d = self.local(m.site, min(tss)).date()
            last = self.local(m.site, max(tss)).date()
            while d <= last:
                v = self.standing_version(m, d)
                if v is not None and v.standing > 0:
                    entries.append({"kind": "standing", "day": d, "tariff": v.tariff_id,
                                    "eff": v.effective_from, "exact": v.standing * 100})
                d += dt.timedelta(days=1)

        x = sum((e["exact"] for e in entries), Decimal(0))
        charged_fen = math.floor(x)
        return {"entries": entries, "anomalies": anomalies,
                "balance_fen": m.credits_fen - charged_fen, "exact_fen": x,
                "stored": sorted(m.readings), "held": sorted(s for s, _, _ in m.held)}

    def standing_version(self, m: Meter, day: dt.date):
        site = m.site
        start = self.local_midnight_us(site, day)
        nd = day + dt.timedelta(days=1)
        end = self.local_midnight_us(site, nd)
        cand = {start}
        cand |= {eff for eff, _ in m.assignments if start < eff < end}
        for lst in self.versions.values():
            cand |= {v.effective_from for v in lst if start < v.effective_from < end}
        for t in sorted(cand):
            v = self.version_at(m, t)
            if v is not None:
                return v
        return None


def carry_check(rows):
    """The carry rule over one meter's charge/standing entries in entry order.

    rows: (amount_fen, exact_fen) as stored (negative for charges). Returns the
    index of the first entry that breaks -amount = floor(X + x) - D, or None.
    """
    x_sum = Decimal(0)
    d_sum = 0
    for i, (amount, exact) in enumerate(rows):
        x = -dec(exact)
        want = math.floor(x_sum + x) - d_sum
        if -int(amount) != want:
            return i
        x_sum += x
        d_sum += want
    return None

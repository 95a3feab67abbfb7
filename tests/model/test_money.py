"""tests/model/test_money.py: the reference model against the worked cases
of issue 10, whose expected amounts were computed by hand from the rules.
Run by tests/it/money-diff.sh before the model is trusted with the daemon:
    python3 -m unittest tests/model/test_money.py
"""

import datetime as dt
import os
import sys
import unittest
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import money  # noqa: E402

TIERS = {"tiers": [{"from_kwh": 0, "price": 0.5}, {"from_kwh": 10, "price": 1.0}]}


def ts(s):
    return money.parse_ts(s)


def world(defn=TIERS):
    w = money.World()
    w.site("default", "Asia/Shanghai", default_tariff="t")
    w.tariff_version("t", ts("2026-01-01T00:00:00+08:00"), defn)
    w.meter("m")
    return w


def interval_fen(led, a, b):
    return sum((e["exact"] for e in led["entries"] if e["kind"] == "charge"
                and (e["from_seq"], e["to_seq"]) == (a, b)), Decimal(0))


def period_wh(led, day):
    return sum(e["energy"] for e in led["entries"] if e["kind"] == "charge" and e["day"] >= day)


class Issue10(unittest.TestCase):
    def test_1_tiers_across_periods(self):
        w = world()
        w.reading("m", 10, ts("2026-11-30T23:30:00+08:00"), 100000)
        w.reading("m", 11, ts("2026-12-01T10:30:00+08:00"), 112000)
        w.reading("m", 9, ts("2026-11-30T23:00:00+08:00"), 99000)
        w.reading("m", 12, ts("2026-12-01T12:30:00+08:00"), 114000)
        led = w.ledger(w.meters["m"])
        self.assertEqual(interval_fen(led, 11, 12), 200)
        self.assertEqual(period_wh(led, dt.date(2026, 12, 1)), 13455)
        self.assertEqual(interval_fen(led, 9, 10), 50)

    def test_2_accepted_jump_in_its_own_period(self):
        w = world()
        for seq, t, wh in [(1, "2026-11-29T00:00:00+08:00", 0), (2, "2026-11-29T20:00:00+08:00", 12000),
                           (3, "2026-11-29T20:01:00+08:00", 14000), (4, "2026-11-30T20:00:00+08:00", 15000),
                           (5, "2026-12-01T08:00:00+08:00", 27000)]:
            w.reading("m", seq, ts(t), wh)
        self.assertIn((2, 3, "implausible_jump", "open"), w.ledger(w.meters["m"])["anomalies"])
        w.decide("m", 2, 3, "accepted")
        w.reading("m", 6, ts("2026-12-01T09:00:00+08:00"), 28000)
        w.reading("m", 7, ts("2026-12-01T10:00:00+08:00"), 30000)
        led = w.ledger(w.meters["m"])
        self.assertEqual(interval_fen(led, 2, 3), 200)
        self.assertEqual(interval_fen(led, 6, 7), 150)

    def test_4_standing_first_day_and_midnight(self):
        w = world({"price": 0.5, "standing_per_day": 0.1234})
        w.site("s2", "Asia/Shanghai")  # no default tariff
        w.meter("n", "s2")
        w.assign("n", "t", ts("2026-12-01T00:10:00+08:00"))
        for seq, t in [(1, "2026-12-01T00:30:00+08:00"), (2, "2026-12-01T00:31:00+08:00"),
                       (3, "2026-12-02T00:30:00+08:00"), (4, "2026-12-04T00:00:00+08:00")]:
            w.reading("n", seq, ts(t), seq * 10)
        led = w.ledger(w.meters["n"])
        days = [e["day"] for e in led["entries"] if e["kind"] == "standing"]
        self.assertEqual(days, [dt.date(2026, 12, d) for d in (1, 2, 3, 4)])
        # 4 x 12.34 fen of standing plus 30 Wh at 0.5: 49.36 + 1.5 = 50.86 fen -> 50
        self.assertEqual(led["balance_fen"], -50)

    def test_5_exact_limit(self):
        w = world()
        w.reading("m", 1, ts("2026-12-01T00:00:00+08:00"), 0)
        w.reading("m", 2, ts("2026-12-01T00:01:01+08:00"), 1017)
        w.reading("m", 3, ts("2026-12-01T00:02:02+08:00"), 2033)
        led = w.ledger(w.meters["m"])
        self.assertIn((1, 2, "implausible_jump", "open"), led["anomalies"])
        self.assertEqual(interval_fen(led, 2, 3), Decimal("50.8"))

    def test_6_far_ahead_seq(self):
        for far in (1_000_000_000, 2**63 - 1):
            w = world()
            t = ts("2026-12-01T00:00:00+08:00")
            w.reading("m", 100, t, 0)
            w.reading("m", 101, t + 600_000_000, 100)
            self.assertEqual(w.reading("m", far, t + 1200_000_000, 200), "held")
            for k in range(102, 106):
                w.reading("m", k, t + (k - 100) * 600_000_000 + 1, (k - 100) * 100)
            led = w.ledger(w.meters["m"])
            self.assertEqual(led["held"], [far])
            self.assertEqual(interval_fen(led, 104, 105), 5)

    def test_7_carry(self):
        # 3 Wh at 0.5283: 0.15849 fen each; the carry charges 1 fen at the 7th
        w = world({"price": 0.5283})
        t = ts("2026-12-01T00:00:00+08:00")
        for k in range(8):
            w.reading("m", k, t + k * 600_000_000, 3 * k)
        led = w.ledger(w.meters["m"])
        self.assertEqual(led["exact_fen"], Decimal("1.10943"))
        self.assertEqual(led["balance_fen"], -1)
        rows = []
        x = Decimal(0)
        d = 0
        for e in led["entries"]:
            x += e["exact"]
            f = int(x // 1) - d
            d += f
            rows.append((-f, -e["exact"]))
        self.assertIsNone(money.carry_check(rows))
        self.assertEqual(money.carry_check([(0, Decimal("-0.6")), (0, Decimal("-0.6"))]), 1)

    def test_tou_and_tiers_together(self):
        w = world({"bands": {"work": [{"start": "00:00", "band": "valley", "price": 0.3},
                                      {"start": "08:00", "band": "peak", "price": 0.6}]},
                   "tiers": [{"from_kwh": 0, "price": 0}, {"from_kwh": 1, "price": 0.05}],
                   "service_per_kwh": 0.01})
        # Tuesday 07:00 -> 09:00, 2000 Wh: 1000 valley (tier 1), 1000 peak (tier 2)
        w.reading("m", 1, ts("2026-12-01T07:00:00+08:00"), 0)
        w.reading("m", 2, ts("2026-12-01T09:00:00+08:00"), 2000)
        led = w.ledger(w.meters["m"])
        got = sorted((e["band"], e["tier"], e["energy"], e["exact"]) for e in led["entries"])
        self.assertEqual(got, [("peak", 2, 1000, Decimal("66")), ("valley", 1, 1000, Decimal("31"))])


if __name__ == "__main__":
    unittest.main()

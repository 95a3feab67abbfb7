#!/usr/bin/env python3
"""tests/slowflood.py: abuse for the payment listener (tests/it/listener.sh).

Runs for --seconds, then prints its figures on one line and exits 0:

  slow    --slow N connections that send a request line, then one header
          line a second and never the end of the head (slowloris); each
          one the daemon closes comes back after 0.5-1.5 s. They are spread
          over the --slow-src addresses (127.0.0.0/8 is all loopback).
  forgers --forgers N clients that each post forged WeChat Pay callbacks
          (whole requests, wrong signature) one after another, from
          --forge-src, as fast as they are answered.

The valid callbacks are not sent from here: tests/paysign measures them in a
process of its own, so that this script's load does not skew their timing.
"""
import argparse
import asyncio
import random
import resource
import sys


class Stats:
    def __init__(self):
        self.slow_opened = 0
        self.slow_closed = 0
        self.slow_errors = 0
        self.forged = 0
        self.forged_status = {}
        self.forged_errors = 0


async def slow_client(a, st, src, stop):
    await asyncio.sleep(random.random())
    while not stop.is_set():
        w = None
        try:
            r, w = await asyncio.open_connection(a.host, a.port, local_addr=(src, 0))
            st.slow_opened += 1
            w.write(b"POST " + a.path.encode() + b" HTTP/1.1\r\nHost: pay\r\n")
            n = 0
            while not stop.is_set():
                try:
                    d = await asyncio.wait_for(r.read(4096), timeout=1.0)
                except asyncio.TimeoutError:
                    w.write(b"X-Slow-%d: %d\r\n" % (n, n))
                    n += 1
                    continue
                if not d:
                    break
            st.slow_closed += 1
        except (OSError, ConnectionError):
            st.slow_errors += 1
        finally:
            if w is not None:
                w.close()
        await asyncio.sleep(0.5 + random.random())


FORGED_BODY = (b'{"id":"EV-forged","create_time":"2026-12-01T10:00:00+08:00",'
               b'"resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS",'
               b'"resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"AAAA",'
               b'"nonce":"abcdefghijkl","associated_data":"transaction"}}')


async def forger(a, st, stop):
    while not stop.is_set():
        w = None
        try:
            r, w = await asyncio.open_connection(a.host, a.port,
                                                 local_addr=(a.forge_src, 0))
            w.write(b"POST " + a.path.encode() + b" HTTP/1.1\r\nHost: pay\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Wechatpay-Serial: 5157F09EFDC096DE15EBE81A47057A7232F1B8E1\r\n"
                    b"Wechatpay-Timestamp: 1700000000\r\n"
                    b"Wechatpay-Nonce: forgedforgedforged\r\n"
                    b"Wechatpay-Signature: Zm9yZ2Vk\r\n"
                    b"Connection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(FORGED_BODY) + FORGED_BODY)
            line = await asyncio.wait_for(r.readline(), timeout=5.0)
            parts = line.split()
            code = parts[1].decode() if len(parts) > 1 else "none"
            st.forged += 1
            st.forged_status[code] = st.forged_status.get(code, 0) + 1
        except (OSError, ConnectionError, asyncio.TimeoutError):
            st.forged_errors += 1
            await asyncio.sleep(0.05)
        finally:
            if w is not None:
                w.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/pay/wechat")
    p.add_argument("--slow", type=int, default=1000)
    p.add_argument("--slow-src", default="127.0.0.2")
    p.add_argument("--forgers", type=int, default=8)
    p.add_argument("--forge-src", default="127.0.0.3")
    p.add_argument("--seconds", type=float, default=20)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.slow + a.forgers + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    st = Stats()
    stop = asyncio.Event()
    srcs = a.slow_src.split(",")
    tasks = [asyncio.ensure_future(slow_client(a, st, srcs[i % len(srcs)], stop))
             for i in range(a.slow)]
    tasks += [asyncio.ensure_future(forger(a, st, stop)) for _ in range(a.forgers)]
    await asyncio.sleep(a.seconds)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print("slow_opened=%d slow_closed=%d slow_errors=%d forged=%d forged_errors=%d "
          "forged_status=%s" % (st.slow_opened, st.slow_closed, st.slow_errors, st.forged,
                                st.forged_errors,
                                ",".join("%s:%d" % kv for kv in sorted(st.forged_status.items()))))
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())

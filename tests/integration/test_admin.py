#!/usr/bin/env python3
"""cnerium-admin against the data dirs of real servers (tests/fixtures/contract_server.c):
stats, list (operation filter, --after, --limit), show (by operation and key, with a
principal, by store key) agreeing with what the server answered, delete (the key runs
again), exit codes and messages for bad usage and a missing store, verify; a hot backup
taken while the server commits under load, then the server SIGKILLed and a new one
started on the backup: every response acknowledged before the backup began replays
byte for byte, and the backup verifies clean.
"""
import json
import os
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import header, parse_json, wait_until  # noqa: E402


def admin_path():
    return h.binary("CNERIUM_ADMIN")


def admin(*args):
    r = subprocess.run([admin_path()] + list(args), capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def fresh(prefix="k"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


class AdminTest(h.ServerTestCase):
    def test_stats_list_show_delete(self):
        srv = self.start_server(h.contract_server(), "--workers", "2",
                                "--principal-header", "X-Tenant")
        keys = sorted(fresh("o") for _ in range(5))
        answers = {}
        for k in keys:
            r = srv.post("/orders", b'{"n":1}', key=k, headers={"X-Tenant": ""})
            self.assertEqual(r[0], 201, r[2])
            answers[k] = r
        tenant = srv.post("/payments", b'{"p":1}', key="pay-1", headers={"X-Tenant": "acme"})
        self.assertEqual(tenant[0], 201)
        d = srv.data_dir

        rc, out, err = admin("stats", "--data-dir", d)
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["responses"], 6)

        rc, out, err = admin("list", "--data-dir", d)
        self.assertEqual(rc, 0, err)
        rows = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(len(rows), 6)
        self.assertEqual([r["store_key"] for r in rows], sorted(r["store_key"] for r in rows))
        rc, out, err = admin("list", "--data-dir", d, "--operation", "payments.create")
        self.assertEqual([json.loads(line)["status"] for line in out.splitlines()], [201])
        rc, out, _ = admin("list", "--data-dir", d, "--operation", "orders.create",
                           "--limit", "2")
        first_two = [json.loads(line)["store_key"] for line in out.splitlines()]
        self.assertEqual(len(first_two), 2)
        rc, out, _ = admin("list", "--data-dir", d, "--operation", "orders.create",
                           "--after", first_two[-1])
        rest = [json.loads(line)["store_key"] for line in out.splitlines()]
        self.assertEqual(len(rest), 3)
        self.assertNotIn(first_two[-1], rest)

        # show: what the server answered, field for field.
        k = keys[2]
        rc, out, err = admin("show", "--data-dir", d, "orders.create", k, "--principal", "")
        self.assertEqual(rc, 0, err)
        doc = json.loads(out)
        self.assertEqual(doc["status"], 201)
        self.assertEqual(doc["body"].encode(), answers[k][2])
        self.assertEqual(doc["location"], header(answers[k][1], "Location"))
        self.assertEqual(doc["content_type"], header(answers[k][1], "Content-Type"))
        self.assertEqual(doc["fingerprint"], parse_json(answers[k][2])["fingerprint"])
        rc, out, _ = admin("show", "--data-dir", d, "payments.create", "pay-1",
                           "--principal", "acme")
        self.assertEqual(rc, 0)
        rc, _, err = admin("show", "--data-dir", d, "payments.create", "pay-1",
                           "--principal", "other")
        self.assertEqual(rc, 4)
        self.assertIn("no stored response", err)
        rc, out, _ = admin("show", "--data-dir", d, "--store-key", doc["store_key"])
        self.assertEqual(json.loads(out)["body"], doc["body"])

        # delete: the key is new again, on the live server.
        before = srv.count("orders.create")
        rc, out, err = admin("delete", "--data-dir", d, "--store-key", doc["store_key"])
        self.assertEqual(rc, 0, err)
        again = srv.post("/orders", b'{"n":1}', key=k, headers={"X-Tenant": ""})
        self.assertEqual(again[0], 201)
        self.assertIsNone(header(again[1], "Idempotent-Replayed"))
        self.assertEqual(srv.count("orders.create"), before + 1)
        rc, _, _ = admin("delete", "--data-dir", d, "orders.create", "never-stored")
        self.assertEqual(rc, 4)

        rc, out, err = admin("verify", "--data-dir", d)
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["problems"], 0)
        self.assertGreaterEqual(json.loads(out)["checked"], 6)

    def test_usage_errors(self):
        d = self.make_data_dir()
        for args, rc, text in ((["stats"], 2, "--data-dir is required"),
                               (["frob", "--data-dir", d], 2, "unknown command"),
                               (["show", "--data-dir", d, "op"], 2, "KEY"),
                               (["show", "--data-dir", d], 2, "OPERATION KEY"),
                               (["list", "--data-dir", d, "--limit", "0"], 2, "--limit"),
                               (["backup", "--data-dir", d], 1, "no store"),
                               (["stats", "--data-dir", os.path.join(d, "nope")], 1, "no store"),
                               (["stats", "--data-dir", d, "--bogus"], 2, "unknown option")):
            with self.subTest(args=args):
                code, out, err = admin(*args)
                self.assertEqual(code, rc, err)
                self.assertIn(text, err)
                self.assertEqual(out, "")
        self.assertFalse(os.path.exists(os.path.join(d, "nope")), "a typo must create nothing")
        code, out, _ = admin("--help")
        self.assertEqual(code, 0)
        self.assertIn("backup", out)

    def test_hot_backup_under_load_restores(self):
        srv = self.start_server(h.contract_server(), "--workers", "2")
        acked = []  # (time acknowledged, key, response)
        stop = threading.Event()
        lock = threading.Lock()

        def load(i):
            for n in range(3000):  # bounded in count and by the stop flag
                if stop.is_set():
                    return
                k = "load%d-%d-%s" % (i, n, uuid.uuid4().hex[:6])
                try:
                    r = srv.post("/orders", b'{"l":1}', key=k)
                except AssertionError:
                    return  # the server was killed
                if r[0] == 201:
                    with lock:
                        acked.append((time.monotonic(), k, r))

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(acked) >= 50, 30.0, what="50 acknowledged")
            dest = os.path.join(self.make_data_dir(), "backup")
            started = time.monotonic()
            rc, out, err = admin("backup", "--data-dir", srv.data_dir, "--to", dest)
            self.assertEqual(rc, 0, err)
            manifest = json.loads(out)
            self.assertGreater(manifest["applied_lsn"], 0)
            with open(os.path.join(dest, "BACKUP.json")) as f:
                self.assertEqual(json.load(f)["applied_lsn"], manifest["applied_lsn"])
            count = len(acked)
            wait_until(lambda: len(acked) > count + 20, 30.0, what="more commits after it")
        finally:
            stop.set()
            srv.kill()
            for t in threads:
                t.join(30)
        before = [(k, r) for at, k, r in acked if at < started]
        self.assertGreater(len(before), 0)
        rc, out, err = admin("verify", "--data-dir", dest)
        self.assertEqual(rc, 0, err)
        restored = self.start_server(h.contract_server(), "--workers", "1", data_dir=dest)
        for k, r in before:
            again = restored.post("/orders", b'{"l":1}', key=k)
            self.assertEqual(again[0], r[0])
            self.assertEqual(again[2], r[2])
            self.assertEqual(header(again[1], "Idempotent-Replayed"), "true")
        self.assertEqual(restored.count("orders.create"), 0)
        sys.stderr.write("\n  backup: %d acknowledged before it, all replayed from the copy\n"
                         % len(before))


if __name__ == "__main__":
    h.main()

"""The shop's tasks: an idempotent payment, a flaky mailer, a report that takes a while."""

from __future__ import annotations

import os
import time

from shop.app import app

# Payments are recorded by payment id, so running a payment twice charges once.
LEDGER: dict[str, int] = {}


@app.task
def charge(payment_id: str, cents: int) -> int:
    LEDGER.setdefault(payment_id, cents)
    return sum(LEDGER.values())


@app.task(bind=True, max_retries=3, default_retry_delay=0.1)
def send_receipt(self, email: str, fail_times: int = 0):  # type: ignore[no-untyped-def]
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError(f"mail server busy for {email}"))
    return f"sent to {email} after {self.request.retries} retries"


@app.task(acks_late=True, reject_on_worker_lost=True)
def build_report(seconds: float, marker: str = "") -> dict[str, object]:
    if marker and os.path.exists(marker):
        return {"pid": os.getpid(), "rerun": True}
    if marker:
        with open(marker, "w") as fh:  # first run: leave a trace, then work a while
            fh.write(str(os.getpid()))
    time.sleep(seconds)
    return {"pid": os.getpid(), "rerun": False}


@app.task
def add(a: int, b: int) -> int:
    return a + b

"""A tiny service for the agent tests: it runs LogLevelAgent (polling or following the event stream) and logs
a DEBUG and an INFO line every 50 ms."""

from __future__ import annotations

import logging
import sys
import time

from server.agent import LogLevelAgent

base_url, service, token, grace, mode = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
agent = LogLevelAgent(base_url, service, token, poll_interval=0.2, grace=grace, timeout=1.0,
                      stream=mode == "stream").start()
app_log = logging.getLogger("app.db")
tick = 0
while True:
    app_log.debug("tick %d", tick)
    app_log.info("tick %d", tick)
    sys.stdout.flush()
    tick += 1
    time.sleep(0.05)

"""SIGKILL under load: acknowledged means durable, durable means never again.

Client threads (one HOTP user each) validate successive codes without pause while the agent is
SIGKILLed at random moments and restarted.  ``hotp_lookahead = 0`` makes every answer checkable:
the agent accepts exactly the next counter, so for the code of counter ``n``

* ``accept``: acknowledged; the client goes on with ``n + 1``;
* ``replay``: only possible when the last submission of ``n`` got no answer (the agent died
  between its commit and its reply): durable but unacknowledged; the client goes on;
* ``bad_code``: the agent's counter is behind ``n``: an acknowledged acceptance was lost.

After every restart each client first resubmits its last durable code, which must be refused as
a replay; at the end (after one more kill) each client's newest 100 durable codes and a sample
of 400 older ones are submitted once more and none may be accepted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from otp_agent.errors import OtpAgentError
from otp_agent.testing import RunningAgent, running_agent, start_agent
from tests.faults.conftest import Figures
from tests.faults.support import count, hotp_code, open_directory, outcome, request, rng

USERS = 4
POLICY = {"hotp_lookahead": 0, "lock_threshold": 100}
RESUBMIT_NEWEST, RESUBMIT_OLDER = 100, 400
TRANSIENT = {"store", "store_unavailable", "unreachable"}


class Client(threading.Thread):
    """Validates user's successive HOTP codes for as long as the run lasts."""

    def __init__(self, user: str, uri: str, socket_path: Path, stop: threading.Event) -> None:
        super().__init__(name=f"client-{user}", daemon=True)
        self.user, self.uri, self.socket_path, self.stop = user, uri, socket_path, stop
        self.next = 0
        self.unsure = False  # the last submission of `next` got no answer
        self.verify = False  # a restart was seen: check the last durable code first
        self.last_durable: int | None = None
        self.acknowledged: list[int] = []
        self.unacknowledged: list[int] = []
        self.verified = 0
        self.connection_errors = 0
        self.violations: list[str] = []

    def _submit(self, counter: int) -> tuple[str, str] | None:
        try:
            return outcome(
                request(
                    self.socket_path,
                    "validate",
                    timeout=10,
                    user=self.user,
                    code=hotp_code(self.uri, counter),
                )
            )
        except (OSError, OtpAgentError):  # refused, reset, timed out, or cut inside a frame
            self.connection_errors += 1
            return None

    def run(self) -> None:
        while not self.stop.is_set() and len(self.violations) < 5:
            if self.verify and not self.unsure and self.last_durable is not None:
                answer = self._submit(self.last_durable)
                if answer is None:
                    time.sleep(0.005)
                elif answer == ("reject", "replay"):
                    self.verified += 1
                    self.verify = False
                elif answer[0] == "accept":
                    self.violations.append(
                        f"{self.user}: counter {self.last_durable} accepted again after a restart"
                    )
                elif answer[1] not in TRANSIENT:
                    self.violations.append(
                        f"{self.user}: durable counter {self.last_durable} is {answer} after a restart"
                    )
                    self.verify = False
                continue
            answer = self._submit(self.next)
            if answer is None:
                self.unsure = self.verify = True
                time.sleep(0.005)
            elif answer[0] == "accept":
                self.acknowledged.append(self.next)
                self._advance()
            elif answer == ("reject", "replay") and self.unsure:
                self.unacknowledged.append(self.next)
                self._advance()
            elif answer[1] in TRANSIENT:
                time.sleep(0.005)
            else:
                self.violations.append(
                    f"{self.user}: counter {self.next} (last durable {self.last_durable}, "
                    f"unsure {self.unsure}) answered {answer}: an acknowledged acceptance was lost"
                )

    def _advance(self) -> None:
        self.last_durable = self.next
        self.next += 1
        self.unsure = False


def _kill(agent: RunningAgent) -> None:
    os.kill(agent.process.pid, signal.SIGKILL)
    agent.process.wait(timeout=30)


def test_sigkill_loop_under_load(figures: Figures) -> None:
    kills = count(12, 400)
    random = rng("sigkill")
    with open_directory() as directory, running_agent(directory / "agent", policy=POLICY) as first:
        uris = {f"user{i}": first.enroll(f"user{i}", "--type", "hotp")[1] for i in range(USERS)}
        agent = first
        stop = threading.Event()
        threads = [Client(user, uri, first.socket_path, stop) for user, uri in uris.items()]
        started = time.monotonic()
        try:
            for thread in threads:
                thread.start()
            for _ in range(kills):
                time.sleep(random.uniform(0.02, 0.35))
                _kill(agent)
                time.sleep(random.choice((0.0, 0.0, 0.05)))
                agent = start_agent(first.directory, first.config_path, first.socket_path)
                if any(t.violations for t in threads):
                    break
            time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join(30)
            # One more kill, then durable codes once more: none may be accepted.
            _kill(agent)
            agent = start_agent(first.directory, first.config_path, first.socket_path)
            resubmitted: Counter[str] = Counter()
            for thread in threads:
                durable = sorted(thread.acknowledged + thread.unacknowledged)
                # Bounded: the newest codes (nearest the counter) and a sample of the older ones.
                older = durable[:-RESUBMIT_NEWEST]
                sample = durable[-RESUBMIT_NEWEST:] + random.sample(older, min(len(older), RESUBMIT_OLDER))
                for counter in sample:
                    result, reason = outcome(
                        request(
                            agent.socket_path,
                            "validate",
                            user=thread.user,
                            code=hotp_code(thread.uri, counter),
                        )
                    )
                    resubmitted[f"{result}:{reason}"] += 1
        finally:
            stop.set()
            if agent.process.poll() is None:
                agent.stop()
        elapsed = time.monotonic() - started
        acknowledged = sum(len(t.acknowledged) for t in threads)
        unacknowledged = sum(len(t.unacknowledged) for t in threads)
        violations = [v for t in threads for v in t.violations]
        figures.report(
            f"sigkill {kills} SIGKILLs under load ({USERS} clients, {elapsed:.0f} s): {acknowledged} acknowledged "
            f"acceptances, {unacknowledged} durable but unacknowledged (killed between commit and reply), "
            f"{sum(t.verified for t in threads)} replays verified after restarts, "
            f"{sum(t.connection_errors for t in threads)} connections refused or cut by kills; final resubmission of "
            f"{sum(resubmitted.values())} durable codes (newest and a sample): {dict(sorted(resubmitted.items()))}; "
            f"{len(violations)} lost or re-accepted"
        )
        assert not violations, violations
        assert not any(key.startswith("accept") for key in resubmitted), resubmitted
        assert acknowledged >= kills  # the clients did work between the kills
        # Each durable code counted once: no counter twice in one client's history.
        for thread in threads:
            history = thread.acknowledged + thread.unacknowledged
            assert len(history) == len(set(history)) == thread.next

"""Kill points for the crash tests of multi-step changes (key rotation).

``crashpoint(name)`` does nothing unless the environment variable ``SSHTUN_TEST_CRASH``
names that very point: then the process kills itself with SIGKILL, as a power cut or an
OOM kill would, so tests can prove that every moment of a rotation leaves a working
login. Only tests set the variable.
"""

from __future__ import annotations

import os
import signal

ENV = "SSHTUN_TEST_CRASH"


def crashpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)

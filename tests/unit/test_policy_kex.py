"""The key exchanges the bastion offers: cheap ones only (no finite-field DH, whose cost a
client doing no work can force on the bastion's one thread), curve25519 first for
Dropbear's guessed first packet, the same set the agent asks for, all known to the
installed asyncssh and rated OK by doctor."""

from __future__ import annotations

import asyncssh.kex

from sshtunnel_mgr.core import policy
from sshtunnel_mgr.doctor.algorithms import check_algorithms
from sshtunnel_mgr.doctor.findings import Level


def test_no_finite_field_diffie_hellman_is_offered() -> None:
    for algs in (policy.SERVER_KEX_ALGS, policy.KEX_ALGS):
        assert not [a for a in algs if a.startswith(("diffie-hellman", "gss-"))]
    assert policy.server_options()["kex_algs"] == list(policy.SERVER_KEX_ALGS)


def test_server_and_agent_lists_hold_the_same_algorithms_in_their_own_order() -> None:
    assert set(policy.SERVER_KEX_ALGS) == set(policy.KEX_ALGS)
    assert policy.SERVER_KEX_ALGS[0] == "curve25519-sha256"  # Dropbear guesses it
    assert policy.KEX_ALGS[0] == "mlkem768x25519-sha256"  # the agent prefers post-quantum
    assert policy.client_options()["kex_algs"] == list(policy.KEX_ALGS)


def test_installed_asyncssh_knows_every_offered_key_exchange() -> None:
    known = {a.decode() for a in asyncssh.kex.get_kex_algs()}
    assert set(policy.SERVER_KEX_ALGS) <= known


def test_doctor_rates_the_offer_ok() -> None:
    finding = check_algorithms("policy.kex", "kex", policy.SERVER_KEX_ALGS, "kex", "Kex")
    assert finding.level is Level.OK, finding


def test_every_client_login_is_key_only_with_the_policy() -> None:
    options = policy.key_only_login()
    assert options["password"] is None
    assert options["preferred_auth"] == "publickey"
    assert options["config"] is None  # never ~/.ssh/config
    assert not any(options[k] for k in ("kbdint_auth", "gss_auth", "host_based_auth"))
    assert options["kex_algs"] == list(policy.KEX_ALGS)
    assert options["server_host_key_algs"] == list(policy.HOST_KEY_ALGS)

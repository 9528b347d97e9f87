"""Setting things up: ``init`` (``sshtun init``: configs, keys, the service layout),
``unitlayout`` (what a systemd unit can read), ``sshconfig`` + ``pinhops`` (``sshtun
ssh-config``: the laptop's ssh config with every hop's host key pinned) and ``demo``
(``sshtun demo``: a bastion, an agent and a home service on loopback)."""

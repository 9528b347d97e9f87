"""What a long-running sshtun process is made of, apart from its role: the one service
lifecycle (``service``) that ``sshtun bastion`` and ``sshtun up`` both run under."""

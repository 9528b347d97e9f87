"""What a long-running sshtun process is made of, apart from its role: the one service
lifecycle (``service``) that ``sshtun bastion`` and ``sshtun up`` both run under, the
admin socket (``admin``), metrics, systemd notify (``systemd``), logging (``logsetup``:
structured events), atomic and locked file writes (``fsutil``), file trust like sshd's
StrictModes (``strictmodes``) and the access file read under it (``accessfile``), task
bookkeeping (``asyncutil``) and test crash points (``crashpoints``)."""
